"""TrainConfig: every setting of a `revision train` run, validated, saved beside the run (run.json)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from revision.train.errors import DataError
from revision.train.model import build_projector

STAGES = ("pretrain", "finetune")
# Settings that may differ between a killed run and the re-run that resumes it.
RESUME_FREE = ("progress", "log_every", "num_workers")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run. Paths are resolved by the command; errors name the CLI flag."""

    stage: str
    """pretrain (plain template; projector, LLM frozen unless train_llm) | finetune (conversation)."""
    data: Path
    """LLaVA-style annotations, JSON or JSON Lines (--data)."""
    features: Path
    """Feature store or memmap view whose rows the annotation ids name (--features)."""
    llm: Path
    """Local Hugging Face causal LM directory (--llm)."""
    out: Path
    """Run directory: checkpoint, metrics, final weights (--out)."""
    epochs: int = 1
    """Passes over the data (--epochs)."""
    max_steps: int = 0
    """Stop after this many optimizer steps; 0: run all epochs (--max-steps)."""
    batch_size: int = 16
    """Samples per micro-batch (--batch-size)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (--grad-accum)."""
    lr: float = 1e-3
    """Peak learning rate (--lr)."""
    weight_decay: float = 0.0
    """AdamW weight decay (--weight-decay)."""
    warmup_ratio: float = 0.03
    """Share of the steps spent warming up linearly before the cosine decay (--warmup-ratio)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 disables (--max-grad-norm)."""
    visual_tokens: int = 1
    """Positions the projected vector fills (--visual-tokens; 576 = the reference's input)."""
    projector: str = "mlp2x_gelu"
    """linear | mlpNx_gelu (--projector)."""
    projector_from: Path | None = None
    """A pretrain run whose projector initialises this one (--projector-from)."""
    train_llm: bool = False
    """Train the LLM too (--train-llm; pretrain default off, finetune always on)."""
    lora_rank: int = 0
    """Fine-tune the LLM through LoRA adapters of this rank (--lora-rank; needs peft); 0: full weights."""
    seed: int = 0
    """Seed of the projector init, the shuffle and everything random (--seed)."""
    save_every: int = 100
    """Optimizer steps between checkpoints (--save-every)."""
    on_missing: str = "error"
    """What to do with annotation ids absent from the features: error | skip (--on-missing)."""
    max_length: int = 512
    """Tokens per sample before the visual tokens are spliced in (--max-length)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory (--gradient-checkpointing)."""
    deepspeed: Path | None = None
    """DeepSpeed JSON config (--deepspeed): ZeRO-2/3 engine instead of the plain loop."""
    align_stats: Path | None = None
    """Alignment stats applied to the rows at collate time (--align-stats)."""
    feature_noise: float = 0.0
    """Std of the Gaussian noise added to each feature coordinate at collate time, after --align-stats,
    without renormalising (--feature-noise; C3/CapDec-style); 0: none."""
    num_workers: int = 0
    """DataLoader worker processes (--workers)."""
    log_every: int = 1
    """Optimizer steps between metric lines (--log-every)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise DataError(f"stage must be one of {STAGES}, got {self.stage!r}")
        for flag, value, low in (
            ("--epochs", self.epochs, 1),
            ("--max-steps", self.max_steps, 0),
            ("--batch-size", self.batch_size, 1),
            ("--grad-accum", self.grad_accum, 1),
            ("--visual-tokens", self.visual_tokens, 1),
            ("--save-every", self.save_every, 1),
            ("--max-length", self.max_length, 2),
            ("--lora-rank", self.lora_rank, 0),
            ("--workers", self.num_workers, 0),
            ("--log-every", self.log_every, 1),
        ):
            if value < low:
                raise DataError(f"{flag} must be >= {low}, got {value}")
        if not (self.feature_noise >= 0 and self.feature_noise != float("inf")):
            raise DataError(f"--feature-noise must be a finite number >= 0, got {self.feature_noise}")
        if not self.lr > 0:
            raise DataError(f"--lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise DataError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.on_missing not in ("error", "skip"):
            raise DataError(f"--on-missing must be error or skip, got {self.on_missing!r}")
        build_projector(self.projector, 1, 1)  # validates the name
        if self.lora_rank and self.stage != "finetune":
            raise DataError("--lora-rank applies to finetune only")

    @property
    def trains_llm(self) -> bool:
        return self.stage == "finetune" or self.train_llm

    @property
    def template(self) -> str:
        return "plain" if self.stage == "pretrain" else "conversation"

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}

    def resume_key(self) -> dict[str, Any]:
        """The settings a resumed run must share with the one it continues."""
        key = {k: v for k, v in self.to_json().items() if k not in RESUME_FREE}
        if not key["feature_noise"]:
            # Runs written before --feature-noise existed have no such key: without noise they still resume.
            del key["feature_noise"]
        return key
