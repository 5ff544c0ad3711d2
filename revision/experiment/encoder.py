"""The world's dual encoder: a small CLIP trained from scratch on the CPU, saved like a downloaded one.

`train_encoder` builds a `transformers` CLIPModel from a small CLIPConfig, a word-level tokenizer over
the world's vocabulary and a CLIPImageProcessor, trains it contrastively (`contrastive.train_loop`)
at a fixed temperature, checks it on held-out pairs, and writes the folder atomically with
`encoder.json` beside the weights. `revision embed --model DIR` then loads it offline through
AutoModel / AutoTokenizer / AutoImageProcessor like any other dual encoder.

Why a fixed low temperature and partial captions: a learned temperature tends to pull the two
modalities together, while a fixed one (and captions that under-describe their image) keeps the
modality gap that ReVision-style alignment is meant to close.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from revision.errors import UserError
from revision.experiment.world import sample_scenes, vocabulary

__all__ = ["EncoderConfig", "build_tokenizer", "full_encoder_config", "quick_encoder_config", "train_encoder"]

# <s> and </s> are ids 2 and 3: CLIP's text tower treats eos_token_id == 2 as a legacy checkpoint and
# pools at the largest token id instead of at </s>, so </s> must not be 2.
SPECIAL = ("<pad>", "<unk>", "<s>", "</s>")
MAX_TEXT_LEN = 32
RECORD = "encoder.json"


@dataclass(frozen=True, kw_only=True)
class EncoderConfig:
    """Settings of one encoder training run (saved in encoder.json; a rerun with equal settings is a no-op)."""

    seed: int = 0
    """Seeds the training scenes, their renders, the caption draws, the init and the batch order."""
    px: int = 32
    """Image side in pixels (renders, the vision tower's image_size and the processor's size)."""
    pairs: int = 20_000
    """Training images (scenes drawn from `seed`); captions are drawn afresh for them every step."""
    steps: int = 5_000
    """Optimiser steps. Shape is the attribute learnt last: on held-out images its linear probe
    reached 0.818 after 1,500 steps, 0.957 after 3,000 and 0.986 after 5,000, when every other
    attribute's was 0.99+ already at 1,500 (and batches built of minimal pairs, scenes one
    attribute apart, did not learn it any faster: 0.793 at 1,500, 0.957 at 3,000)."""
    batch_size: int = 128
    """Pairs per step: the InfoNCE negatives of each pair are the other batch_size − 1."""
    dim: int = 64
    """Embedding (projection) dimension: the width of the vectors `revision embed` writes."""
    hidden: int = 64
    """Width of both transformer towers."""
    layers: int = 2
    """Transformer layers of the vision tower (the text tower has 2: captions are short)."""
    heads: int = 4
    """Attention heads per layer (must divide `hidden`)."""
    patch: int = 8
    """Vision patch side in pixels (must divide `px`)."""
    temperature: float = 0.07
    """Fixed softmax temperature of the InfoNCE logits (not learned: a learned one closes the gap)."""
    partial_rate: float = 0.2
    """Share of training captions that are partial alt-text instead of a full phrasing."""
    positives: str = "consistent"
    """InfoNCE positives: "consistent" (every image in the batch the caption is true of) or "pair"
    (CLIP's: only the caption's own image). Measured on this world (600 steps, 500 held-out pairs):
    "pair" reached text→image top-1 0.37 and a position probe of 0.41; "consistent" 0.76 and 0.99,
    because with ~450 scenes and partial captions "pair" spends its signal pushing apart images the
    caption describes equally well."""
    lr: float = 1e-3
    """Peak AdamW learning rate (linear warm-up over 5% of the steps, then cosine decay)."""
    weight_decay: float = 0.05
    """AdamW weight decay of the matrices (none on norms and biases)."""
    eval_pairs: int = 1_000
    """Held-out pairs (new scenes and renders, full captions) for the checks in encoder.json."""

    def __post_init__(self) -> None:
        positive = ("px", "pairs", "steps", "batch_size", "dim", "hidden", "layers", "heads", "patch", "eval_pairs")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"EncoderConfig.{name} must be a positive integer, got {value!r}")
        if self.px < 16:
            raise UserError(f"EncoderConfig.px must be at least 16, got {self.px}")
        if self.px % self.patch:
            raise UserError(f"EncoderConfig.patch ({self.patch}) must divide px ({self.px})")
        if self.hidden % self.heads:
            raise UserError(f"EncoderConfig.heads ({self.heads}) must divide hidden ({self.hidden})")
        if self.batch_size < 2 or self.batch_size > self.pairs:
            raise UserError(f"EncoderConfig.batch_size must be in [2, pairs={self.pairs}], got {self.batch_size}")
        if not 0.0 < self.temperature <= 1.0:
            raise UserError(f"EncoderConfig.temperature must be in (0, 1], got {self.temperature}")
        if not 0.0 <= self.partial_rate <= 1.0:
            raise UserError(f"EncoderConfig.partial_rate must be in [0, 1], got {self.partial_rate}")
        if self.positives not in ("pair", "consistent"):
            raise UserError(f"EncoderConfig.positives must be 'pair' or 'consistent', got {self.positives!r}")
        if not 0.0 < self.lr < 1.0:
            raise UserError(f"EncoderConfig.lr must be in (0, 1), got {self.lr}")
        if not 0.0 <= self.weight_decay < 1.0:
            raise UserError(f"EncoderConfig.weight_decay must be in [0, 1), got {self.weight_decay}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EncoderConfig:
        """The config saved in encoder.json; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        extra = sorted(set(raw) - known)
        if extra:
            raise UserError(f"encoder config: unknown field(s) {', '.join(extra)}")
        return cls(**raw)


def quick_encoder_config(seed: int = 0) -> EncoderConfig:
    """The preset `revision experiment --quick` trains: ~60 s on two idle cores (0.1-0.15 s a step);
    measured 630 s with the two cores shared by other jobs (load average 5-8)."""
    return EncoderConfig(seed=seed, pairs=8_000, steps=600)


def full_encoder_config(seed: int = 0) -> EncoderConfig:
    """The preset of the full experiment: 5,000 steps, ~8-11 min on two cores (0.1-0.13 s a step)."""
    return EncoderConfig(seed=seed)


def build_tokenizer() -> Any:
    """A word-level tokenizer over the world's vocabulary that wraps every text in <s> … </s>."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIAL, *vocabulary()])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=MAX_TEXT_LEN,
    )


def _build_model(cfg: EncoderConfig, tokenizer: Any) -> Any:
    import torch
    from transformers import CLIPConfig, CLIPModel

    text_cfg = {
        "vocab_size": len(tokenizer),
        "hidden_size": cfg.hidden,
        "intermediate_size": cfg.hidden * 4,
        "num_hidden_layers": 2,
        "num_attention_heads": cfg.heads,
        "max_position_embeddings": MAX_TEXT_LEN,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_cfg = {
        "hidden_size": cfg.hidden,
        "intermediate_size": cfg.hidden * 4,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "image_size": cfg.px,
        "patch_size": cfg.patch,
    }
    config = CLIPConfig(
        text_config=text_cfg,
        vision_config=vision_cfg,
        projection_dim=cfg.dim,
        logit_scale_init_value=math.log(1.0 / cfg.temperature),
    )
    torch.manual_seed(cfg.seed)
    model = CLIPModel(config)
    model.logit_scale.requires_grad_(False)  # the temperature stays fixed (see the module docstring)
    return model


def _image_processor(px: int) -> Any:
    from transformers import CLIPImageProcessor

    from revision.experiment.contrastive import CLIP_MEAN, CLIP_STD

    return CLIPImageProcessor(
        size={"shortest_edge": px},
        crop_size={"height": px, "width": px},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )


def _finished_record(out: Path, cfg: EncoderConfig) -> dict[str, Any] | None:
    record_path = out / RECORD
    if not (record_path.is_file() and (out / "config.json").is_file()):
        return None
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or record.get("config") != asdict(cfg):
        return None
    return record


def train_encoder(cfg: EncoderConfig, out: Path, *, progress: bool = False) -> dict[str, Any]:
    """Train the encoder `cfg` describes and save it at `out`; returns the encoder.json record.

    If `out` already holds a finished encoder of the same config, its record is returned untouched.
    The folder is written in a temporary sibling and renamed into place, so a killed run leaves the
    old folder (or none) and is redone. Same config → same weights, byte for byte, on one machine.
    """
    import torch

    from revision.embed.encoders import quiet_transformers
    from revision.experiment import contrastive
    from revision.store.atomic import replace_dir

    out = Path(out)
    done = _finished_record(out, cfg)
    if done is not None:
        return done
    out.parent.mkdir(parents=True, exist_ok=True)
    log = print if progress else None
    started = time.perf_counter()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        tokenizer = build_tokenizer()
        model = _build_model(cfg, tokenizer)
        scenes = sample_scenes(cfg.pairs, cfg.seed)
        pixels = contrastive.render_pixels(scenes, cfg.seed, cfg.px)
        losses = contrastive.train_loop(
            model,
            tokenizer,
            pixels,
            scenes,
            seed=cfg.seed,
            steps=cfg.steps,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            temperature=cfg.temperature,
            partial_rate=cfg.partial_rate,
            positives=cfg.positives,
            log=log,
        )
        train_seconds = time.perf_counter() - started
        # Held-out scenes come from a seed no training run uses; their renders are new draws.
        test_seed = cfg.seed + 1_000_003
        test_scenes = sample_scenes(cfg.eval_pairs, test_seed)
        probe_n = min(cfg.pairs, 4 * cfg.eval_pairs)
        checks = contrastive.evaluate(
            model,
            tokenizer,
            probe_pixels=pixels[:probe_n],
            probe_scenes=scenes[:probe_n],
            test_pixels=contrastive.render_pixels(test_scenes, test_seed, cfg.px),
            test_scenes=test_scenes,
            seed=cfg.seed,
        )
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    tail = losses[-max(1, len(losses) // 20) :]
    record: dict[str, Any] = {
        "config": asdict(cfg),
        "final_loss": sum(tail) / len(tail),
        "first_loss": losses[0],
        "train_seconds": round(train_seconds, 2),
        "seconds": round(time.perf_counter() - started, 2),
        "threads": torch.get_num_threads(),
        "held_out": checks,
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with quiet_transformers():
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _image_processor(cfg.px).save_pretrained(tmp)
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        tmp.chmod(0o755)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if log is not None:
        log(f"encoder saved to {out} ({record['seconds']:.0f} s)")
    return record
