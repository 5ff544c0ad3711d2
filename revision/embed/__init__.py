"""Embedding images and texts with a dual encoder into feature stores (`revision embed`).

See README.md in this folder for inputs, encoders (CLIP, SigLIP, LLM2CLIP), torchrun and resuming.
"""

from __future__ import annotations

from revision.embed.config import EmbedConfig
from revision.embed.runner import EmbedSummary, ModalityResult, run_embed
from revision.embed.tiny import build_tiny_clip, build_tiny_siglip, write_tiny_dataset

__all__ = [
    "EmbedConfig",
    "EmbedSummary",
    "ModalityResult",
    "build_tiny_clip",
    "build_tiny_siglip",
    "run_embed",
    "write_tiny_dataset",
]
