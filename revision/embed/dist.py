"""torchrun awareness for `revision embed`: rank, world size and a barrier, nothing more.

Ranks never exchange data: each encodes its own slice into its own store part. The process group
(gloo, which works beside CUDA too) exists only so rank 0 merges failures.jsonl after all are done.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as tdist

# Ranks can finish their slices hours apart; the default 30-minute collective timeout is too short.
_BARRIER_TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int

    @classmethod
    def from_env(cls) -> DistInfo:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
        return cls(rank=rank, world=world, local_rank=local)

    def pin_visible_gpu(self) -> None:
        """Show this rank only its own GPU (before CUDA starts): for libraries that otherwise spread
        work over every visible GPU themselves (llm2vec's encode does)."""
        if self.world == 1:
            return
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else None
        if devices is None:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(self.local_rank)
        elif len(devices) > 1:
            os.environ["CUDA_VISIBLE_DEVICES"] = devices[self.local_rank % len(devices)]

    def init(self) -> None:
        if self.world > 1 and not tdist.is_initialized():
            tdist.init_process_group("gloo", rank=self.rank, world_size=self.world, timeout=_BARRIER_TIMEOUT)

    def barrier(self) -> None:
        if self.world > 1 and tdist.is_initialized():
            tdist.barrier()

    def shutdown(self) -> None:
        if self.world > 1 and tdist.is_initialized():
            tdist.destroy_process_group()
