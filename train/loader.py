"""Build the training DataLoader: block-shuffled sampler, batched fetch, collate, workers, pinning.

Workers receive the dataset and collate by pickling; the FeatureView and the annotation index
pickle as paths (plus the small per-record offset arrays) and map the files again in each worker,
so the feature matrix is shared through the page cache, never copied into each process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from revision.train.dataset import FeatureCollate, FeatureDataset, Transform
from revision.train.sampler import BlockShuffleSampler


@dataclass(frozen=True, kw_only=True)
class LoaderConfig:
    """How batches are drawn and delivered."""

    batch_size: int = 256
    """Samples per batch (--batch-size)."""
    seed: int = 0
    """Shuffle seed (--seed)."""
    block_size: int = 1024
    """Consecutive feature rows shuffled as one block (--shuffle-block)."""
    window_blocks: int = 8
    """Blocks whose samples are mixed together (--shuffle-window)."""
    num_workers: int = 0
    """DataLoader worker processes (--workers); 0 loads in the main process."""
    pin_memory: bool | None = None
    """Page-locked batches for fast host→GPU copies (--pin-memory); None: when CUDA is available."""
    drop_last: bool = False
    """Drop the last partial batch of an epoch (--drop-last)."""
    prefetch_factor: int = 4
    """Batches each worker prepares ahead (--prefetch)."""
    embed_dtype: str = "float32"
    """dtype of the collated embeddings: float32 | bfloat16 | float16 (--embed-dtype)."""
    persistent_workers: bool = False
    """Keep worker processes alive between epochs (--persistent-workers)."""

    def __post_init__(self) -> None:
        for flag, value, low in (
            ("--batch-size", self.batch_size, 1),
            ("--shuffle-block", self.block_size, 1),
            ("--shuffle-window", self.window_blocks, 1),
            ("--workers", self.num_workers, 0),
            ("--prefetch", self.prefetch_factor, 1),
        ):
            if value < low:
                raise ValueError(f"{flag} must be >= {low}, got {value}")
        if self.embed_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"--embed-dtype must be float32, bfloat16 or float16, got {self.embed_dtype!r}")


def make_loader(
    dataset: FeatureDataset,
    config: LoaderConfig | None = None,
    *,
    transform: Transform | None = None,
    epoch: int = 0,
    start_step: int = 0,
    rank: int = 0,
    world_size: int = 1,
    multiprocessing_context: str | None = None,
    post: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> DataLoader:
    """A DataLoader over `dataset` yielding FeatureCollate batches, positioned at `start_step` of `epoch`.

    The sampler reads feature rows in block-shuffled file order (`dataset.row_order()`); resuming at
    `start_step` yields exactly the batches an uninterrupted run would have yielded from there on.
    rank / world_size: this process's share in data-parallel training (e.g. torch.distributed's rank
    and world size); every rank gets the same number of batches. post: maps each collated batch.
    """
    cfg = config or LoaderConfig()
    sampler = BlockShuffleSampler(
        len(dataset),
        block_size=cfg.block_size,
        window_blocks=cfg.window_blocks,
        seed=cfg.seed,
        epoch=epoch,
        order=dataset.row_order(),
        rank=rank,
        world_size=world_size,
    )
    sampler.set_start(min(sampler.total, start_step * cfg.batch_size * world_size))
    collate = FeatureCollate(dataset.view, dtype=getattr(torch, cfg.embed_dtype), transform=transform, post=post)
    pin = torch.cuda.is_available() if cfg.pin_memory is None else cfg.pin_memory
    workers = cfg.num_workers
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=pin,
        drop_last=cfg.drop_last,
        prefetch_factor=cfg.prefetch_factor if workers else None,
        persistent_workers=cfg.persistent_workers and workers > 0,
        multiprocessing_context=multiprocessing_context if workers else None,
    )
