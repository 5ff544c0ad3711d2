"""ExperimentConfig: every setting of `revision experiment`, validated once, with quick and full presets.

The world sizes, the captioner and the schedule live here; the encoder's own settings are H1's
`EncoderConfig` (quick or full preset, chosen by `encoder`). The resolved config is written into
results.json, so a result names exactly what produced it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from revision.errors import UserError

#: Noise levels a run may use: no noise, or the calibrated sigma (resolved at run time).
FEATURE_NOISE_AUTO = "auto"


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """One experiment. Errors name the `revision experiment` flag."""

    seeds: tuple[int, ...] = (0, 1, 2)
    """Captioner seeds (--seeds N → 0..N-1); each method × noise is trained once per seed."""
    quick: bool = False
    """The --quick preset: one seed, smaller splits and shorter training."""
    methods: tuple[str, ...] = ("realign", "realign-ot", "mean-shift", "c3", "capdec", "gap-shift")
    """Alignment methods (--methods); "raw" and "paired" are always run as reference rows."""
    feature_noise: float | str | None = FEATURE_NOISE_AUTO
    """Train-time Gaussian noise on the features (--feature-noise): "auto" (calibrated on the held-out
    split), a sigma ≥ 0, or None/0 for no noise rows at all."""
    world_seed: int = 0
    """Seed of every split of the world (scenes, jitter, phrasings); the splits draw disjoint streams."""
    n_text: int = 6000
    """Unpaired captions (draws disjoint from every image): the text that is aligned and trained on."""
    n_train: int = 6000
    """Paired-train images: the image side of the alignment fit and the "paired" reference's inputs."""
    n_calib: int = 1000
    """Held-out pairs: the encoder's gap on held-out pairs and the noise calibration."""
    n_test: int = 600
    """Held-out test images that every captioner describes and the scores are computed on."""
    px: int = 32
    """Image side in pixels."""
    text_partial_rate: float = 0.0
    """Share of the unpaired captions written as partial alt-text (they then omit attributes)."""
    encoder: str = "full"
    """Encoder preset: quick or full (H1's quick_encoder_config / full_encoder_config)."""
    encoder_overrides: tuple[tuple[str, Any], ...] = ()
    """(field, value) pairs replacing fields of the encoder preset (tests make it tiny)."""
    llm_hidden: int = 64
    """Hidden size of the word-level Llama captioner trained from scratch."""
    llm_layers: int = 2
    """Its layers."""
    llm_heads: int = 4
    """Its attention heads."""
    steps: int = 600
    """Optimizer steps per captioner run."""
    batch_size: int = 64
    """Samples per step."""
    lr: float = 3e-3
    """Peak learning rate (cosine schedule)."""
    projector: str = "mlp2x_gelu"
    """The projector from features to the LLM's visual tokens."""
    visual_tokens: int = 1
    """Positions the projected feature fills in the main grid."""
    ablation_tokens: tuple[int, ...] = (1, 576)
    """Visual-token counts of the ablation (576 = the reference's LLaVA input), seed 0 only; () skips it."""
    ablation_method: str = "realign"
    """The method the visual-token ablation uses."""
    ablation_steps: int | None = 100
    """Steps of both ablation runs (1 and 576 tokens alike, so the comparison is fair); None → `steps`.
    Fewer than the grid's: with 576 visual tokens a sample's sequence is ~40x longer than with one."""
    samples: int = 8
    """Test images shown with every method's caption in results.json and the report."""
    diagnose_sample: int = 2000
    """Rows per modality for the sampled gap metrics (separability, k-NN, recall)."""
    max_new_tokens: int = 24
    """Tokens a caption may run to."""

    def __post_init__(self) -> None:
        from revision.align import METHOD_NAMES

        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise UserError(f"--seeds: need one or more distinct seeds >= 0, got {list(self.seeds)}")
        unknown = [m for m in self.methods if m not in METHOD_NAMES]
        if unknown or len(set(self.methods)) != len(self.methods):
            raise UserError(
                f"--methods: unknown or repeated {unknown or list(self.methods)}; choose from {', '.join(METHOD_NAMES)}"
            )
        fn = self.feature_noise
        if isinstance(fn, str):
            if fn != FEATURE_NOISE_AUTO:
                raise UserError(f"--feature-noise: {fn!r} is neither 'auto' nor a number")
        elif fn is not None and not (math.isfinite(fn) and fn >= 0):
            raise UserError(f"--feature-noise must be 'auto' or a finite sigma >= 0, got {fn}")
        for flag, value, low in (
            ("n_text", self.n_text, 16),
            ("n_train", self.n_train, 16),
            ("n_calib", self.n_calib, 16),
            ("n_test", self.n_test, 1),
            ("steps", self.steps, 1),
            ("batch_size", self.batch_size, 1),
            ("visual_tokens", self.visual_tokens, 1),
            ("samples", self.samples, 0),
            ("diagnose_sample", self.diagnose_sample, 10),
            ("max_new_tokens", self.max_new_tokens, 1),
        ):
            if value < low:
                raise UserError(f"experiment config: {flag} must be >= {low}, got {value}")
        if self.encoder not in ("quick", "full"):
            raise UserError(f"experiment config: encoder preset must be quick or full, got {self.encoder!r}")
        if not 0.0 <= self.text_partial_rate <= 1.0:
            raise UserError(f"experiment config: text_partial_rate must lie in [0, 1], got {self.text_partial_rate}")
        if self.ablation_tokens and self.ablation_method not in METHOD_NAMES:
            raise UserError(f"experiment config: ablation method {self.ablation_method!r} is not a method")

    @property
    def noise_levels(self) -> bool:
        """Whether runs with feature noise are part of the grid."""
        return self.feature_noise is not None and self.feature_noise != 0

    def encoder_config(self) -> Any:
        """The EncoderConfig this experiment trains (the preset with the overrides applied)."""
        from revision.experiment.encoder import full_encoder_config, quick_encoder_config

        base = quick_encoder_config() if self.encoder == "quick" else full_encoder_config()
        return dataclasses.replace(base, **dict(self.encoder_overrides)) if self.encoder_overrides else base

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["seeds"] = list(self.seeds)
        doc["methods"] = list(self.methods)
        doc["ablation_tokens"] = list(self.ablation_tokens)
        doc["encoder_overrides"] = {k: v for k, v in self.encoder_overrides}
        return doc


def full_config(**overrides: Any) -> ExperimentConfig:
    """The full experiment: three seeds, the sizes above."""
    return ExperimentConfig(**overrides)


def quick_config(**overrides: Any) -> ExperimentConfig:
    """`--quick`: one seed, smaller splits, the quick encoder, shorter training, no visual-token ablation
    (≤ 10 min on 2 cores)."""
    base: dict[str, Any] = dict(
        seeds=(0,),
        quick=True,
        n_text=3000,
        n_train=3000,
        n_calib=500,
        n_test=300,
        encoder="quick",
        steps=400,
        # The 576-token ablation alone took 260 s for 60 steps on 2 cores: the full run has it.
        ablation_tokens=(),
        diagnose_sample=1000,
    )
    base.update(overrides)
    return ExperimentConfig(**base)
