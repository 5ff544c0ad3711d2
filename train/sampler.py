"""A seeded, resumable sampler that shuffles by blocks of rows, so random batches stay page-friendly.

A full random permutation of N rows touches a new page of the feature matrix for every sample and
costs 8 bytes per row to hold. This sampler cuts the order (by default 0..N-1; the dataset's
`row_order()` gives file order of the feature rows) into blocks of `block_size` consecutive
positions, shuffles the blocks, and shuffles the samples inside windows of `window_blocks` blocks.
Each window reads `window_blocks` contiguous runs of the file, and batches still mix several regions.

Everything is derived from (seed, epoch, window number), so memory is O(N / block_size) and the
sampler can start at any position: `start = step * batch_size` resumes exactly where a run stopped.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class BlockShuffleSampler(Sampler[int]):
    """Yields sample positions: blocks shuffled, samples shuffled within windows of blocks."""

    def __init__(
        self,
        num_samples: int,
        *,
        block_size: int = 1024,
        window_blocks: int = 8,
        seed: int = 0,
        epoch: int = 0,
        start: int = 0,
        order: np.ndarray | None = None,
    ) -> None:
        if num_samples < 0 or block_size < 1 or window_blocks < 1:
            raise ValueError(
                f"need num_samples >= 0, block_size >= 1, window_blocks >= 1 "
                f"(got {num_samples}, {block_size}, {window_blocks})"
            )
        if order is not None and len(order) != num_samples:
            raise ValueError(f"order has {len(order)} entries for {num_samples} samples")
        self.num_samples = num_samples
        self.block_size = block_size
        self.window_blocks = window_blocks
        self.seed = seed
        self.epoch = epoch
        self.start = 0
        self.order = order
        self.set_start(start)

    def set_epoch(self, epoch: int) -> None:
        """Start a new epoch (a different shuffle), from its beginning."""
        self.epoch = epoch
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first `start` samples of this epoch (resume at step * batch_size)."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start {start} outside [0, {self.num_samples}]")
        self.start = start

    def resume(self, step: int, batch_size: int, *, drop_last: bool = False) -> None:
        """Position the sampler after `step` batches of `batch_size` (epochs wrap around)."""
        per_epoch = self.num_samples // batch_size if drop_last else -(-self.num_samples // batch_size)
        if per_epoch == 0:
            raise ValueError(f"no full batch of {batch_size} in {self.num_samples} samples")
        epoch, within = divmod(step, per_epoch)
        self.epoch = epoch
        self.set_start(min(self.num_samples, within * batch_size))

    def state_dict(self, step: int, batch_size: int) -> dict[str, int]:
        """What to save beside a checkpoint; `load_state_dict` restores the position."""
        return {"seed": self.seed, "epoch": self.epoch, "step": step, "batch_size": batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"checkpoint sampler seed {state['seed']} differs from this sampler's {self.seed}")
        self.resume(int(state["step"]), int(state["batch_size"]))

    def __len__(self) -> int:
        return self.num_samples - self.start

    def _window(self, rng_key: tuple[int, ...], blocks: np.ndarray) -> np.ndarray:
        """The positions of one window: its blocks' positions, shuffled."""
        starts = blocks * self.block_size
        lens = np.minimum(starts + self.block_size, self.num_samples) - starts
        pos = np.repeat(starts - np.r_[0, np.cumsum(lens)[:-1]], lens) + np.arange(int(lens.sum()))
        np.random.default_rng(list(rng_key)).shuffle(pos)
        return pos

    def __iter__(self) -> Iterator[int]:
        n_blocks = -(-self.num_samples // self.block_size)
        block_order = np.random.default_rng([self.seed, self.epoch]).permutation(n_blocks)
        done = 0
        for w, lo in enumerate(range(0, n_blocks, self.window_blocks)):
            blocks = block_order[lo : lo + self.window_blocks]
            size = int(
                np.minimum(blocks * self.block_size + self.block_size, self.num_samples).sum()
                - (blocks * self.block_size).sum()
            )
            if done + size <= self.start:  # whole window before the resume point: skip it unbuilt
                done += size
                continue
            pos = self._window((self.seed, self.epoch, w), blocks)
            skip = max(0, self.start - done)
            done += size
            chosen = pos[skip:]
            if self.order is not None:
                chosen = self.order[chosen]
            yield from chosen.tolist()
