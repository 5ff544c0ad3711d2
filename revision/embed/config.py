"""EmbedConfig: every setting of `revision embed`, validated once; errors name the CLI flag."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from revision.errors import UserError
from revision.store import CODECS, DTYPES

ENCODERS = ("auto", "hf", "llm2clip")
MODALITY_CHOICES = ("both", "text", "image")
DEVICES = ("auto", "cpu", "cuda")
COMPUTE_DTYPES = ("auto", "bf16", "fp16", "fp32")
FORMATS = ("auto", "seed", "llava", "jsonl")


@dataclass(frozen=True, kw_only=True)
class EmbedConfig:
    """Settings of one embedding run (saved, in part, in each store's `embed` attribute)."""

    data: Path
    """Input dataset: seed dataset.json, LLaVA JSON or JSON Lines (--data)."""
    out: Path
    """Output folder for image.zarr, text.zarr and failures.jsonl (--out)."""
    image_root: Path | None = None
    """Folder that image paths are relative to; None → the folder of --data (--image-root)."""
    model: str | None = None
    """One dual-encoder checkpoint for both towers (--model)."""
    image_model: str | None = None
    """Checkpoint for images (--image-model); overrides --model for images."""
    text_model: str | None = None
    """Checkpoint for texts (--text-model); overrides --model for texts."""
    image_processor: str | None = None
    """Where to load the image processor from when the image checkpoint has none (--image-processor)."""
    encoder: str = "auto"
    """hf (Auto classes), llm2clip, or auto: llm2clip when the image checkpoint is LLM2CLIP (--encoder)."""
    modality: str = "both"
    """Which stores to write: both, text or image (--modality)."""
    data_format: str = "auto"
    """Layout of --data: seed, llava, jsonl or auto (--format)."""
    batch_size: int = 256
    """Items per forward pass (--batch-size)."""
    group_batches: int = 16
    """Batches per group: the unit a run commits and resumes by, and the window inside which texts are
    sorted by length (--group-batches)."""
    commit_seconds: float = 30.0
    """Commit at the first group boundary this long after the last commit; 0 → after every group.
    Commits rewrite the store's open shard, so committing every small group would multiply the bytes
    written (--commit-seconds)."""
    workers: int | None = None
    """DataLoader worker processes for decoding and tokenising; None → from the CPU count (--workers)."""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda (--device)."""
    dtype: str = "auto"
    """Compute precision: auto (bf16 autocast on CUDA, fp32 on CPU), bf16, fp16 or fp32 (--dtype)."""
    store_dtype: str = "float16"
    """Storage dtype of the vectors: float16, bfloat16 or float32 (--store-dtype)."""
    codec: str = "none"
    """Chunk compressor of the stores (--codec)."""
    online: bool = False
    """Allow Hugging Face Hub access; off → local files only (--online)."""
    trust_remote_code: bool = False
    """Run model code shipped with a checkpoint (--trust-remote-code; implied by --encoder llm2clip)."""
    progress: bool = True
    """Show a progress bar with items/s (--no-progress turns it off)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        if self.image_root is not None:
            object.__setattr__(self, "image_root", Path(self.image_root))
        choices = {
            "--encoder": (self.encoder, ENCODERS),
            "--modality": (self.modality, MODALITY_CHOICES),
            "--device": (self.device, DEVICES),
            "--dtype": (self.dtype, COMPUTE_DTYPES),
            "--format": (self.data_format, FORMATS),
            "--store-dtype": (self.store_dtype, tuple(DTYPES)),
            "--codec": (self.codec, tuple(CODECS)),
        }
        for flag, (value, allowed) in choices.items():
            if value not in allowed:
                raise UserError(f"{flag}: {value!r} is not one of {', '.join(allowed)}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.group_batches < 1:
            raise UserError(f"--group-batches must be at least 1, got {self.group_batches}")
        if not self.commit_seconds >= 0:
            raise UserError(f"--commit-seconds must be 0 or more, got {self.commit_seconds}")
        if self.workers is not None and self.workers < 0:
            raise UserError(f"--workers must be 0 or more, got {self.workers}")
        needs_image = self.modality in ("both", "image")
        needs_text = self.modality in ("both", "text")
        if needs_image and not (self.image_model or self.model):
            raise UserError("--model or --image-model is required to embed images")
        if needs_text and not (self.text_model or self.model):
            raise UserError("--model or --text-model is required to embed texts")

    @property
    def group_items(self) -> int:
        """Items per commit group."""
        return self.batch_size * self.group_batches

    def resolved_workers(self) -> int:
        if self.workers is not None:
            return self.workers
        # Leave a core for the main process (model, store writes); local ranks share the machine.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        return max(0, min(8, (os.cpu_count() or 1) // local_world - 1))
