"""A seeded, resumable sampler that shuffles by blocks of rows, so random batches stay page-friendly.

A full random permutation of N rows touches a new page of the feature matrix for every sample and
costs 8 bytes per row to hold. This sampler cuts the order (by default 0..N-1; the dataset's
`row_order()` gives file order of the feature rows) into blocks of `block_size` consecutive
positions, shuffles the blocks, and shuffles the samples inside windows of `window_blocks` blocks.
Each window reads `window_blocks` contiguous runs of the file, and batches still mix several regions.

Everything is derived from (seed, epoch, window number), so memory is O(N / block_size) and the
sampler can start at any position: `start = step * batch_size * world_size` resumes exactly where a
run stopped. Data-parallel ranks share one global order and take interleaved positions of it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class BlockShuffleSampler(Sampler[int]):
    """Yields sample positions: blocks shuffled, samples shuffled within windows of blocks.

    With `world_size` > 1 (data-parallel training), every rank builds the same global order and
    takes every world_size-th position of it, starting at its rank; the order is padded with its own
    first positions (cyclically) to a multiple of world_size, so all ranks yield the same number of samples.
    Positions (`start`, `set_start`) count the global order, i.e. samples consumed by all ranks.
    """

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
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_samples < 0 or block_size < 1 or window_blocks < 1:
            raise ValueError(
                f"need num_samples >= 0, block_size >= 1, window_blocks >= 1 "
                f"(got {num_samples}, {block_size}, {window_blocks})"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, world_size={world_size})")
        if order is not None and len(order) != num_samples:
            raise ValueError(f"order has {len(order)} entries for {num_samples} samples")
        self.num_samples = num_samples
        self.block_size = block_size
        self.window_blocks = window_blocks
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.world_size = world_size
        self.start = 0
        self.order = order
        self.set_start(start)

    @property
    def total(self) -> int:
        """Length of the global order, padded to a multiple of world_size."""
        return self.num_samples + (-self.num_samples) % self.world_size if self.num_samples else 0

    def set_epoch(self, epoch: int) -> None:
        """Start a new epoch (a different shuffle), from its beginning."""
        self.epoch = epoch
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first `start` positions of this epoch's global order (resume at
        step * batch_size * world_size)."""
        if not 0 <= start <= self.total:
            raise ValueError(f"start {start} outside [0, {self.total}]")
        self.start = start

    def resume(self, step: int, batch_size: int, *, drop_last: bool = False) -> None:
        """Position the sampler after `step` batches of `batch_size` per rank (epochs wrap around)."""
        per_rank = self.total // self.world_size
        per_epoch = per_rank // batch_size if drop_last else -(-per_rank // batch_size)
        if per_epoch == 0:
            raise ValueError(f"no full batch of {batch_size} in {per_rank} samples per rank")
        epoch, within = divmod(step, per_epoch)
        self.epoch = epoch
        self.set_start(min(self.total, within * batch_size * self.world_size))

    def state_dict(self, step: int, batch_size: int) -> dict[str, int]:
        """What to save beside a checkpoint; `load_state_dict` restores the position."""
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "step": step,
            "batch_size": batch_size,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"checkpoint sampler seed {state['seed']} differs from this sampler's {self.seed}")
        if int(state.get("world_size", 1)) != self.world_size:
            raise ValueError(
                f"checkpoint was taken with world_size {state.get('world_size', 1)}, this run has {self.world_size}"
            )
        self.resume(int(state["step"]), int(state["batch_size"]))

    def __len__(self) -> int:
        first = self.start + (self.rank - self.start) % self.world_size
        return len(range(first, self.total, self.world_size))

    def _window(self, rng_key: tuple[int, ...], blocks: np.ndarray) -> np.ndarray:
        """The positions of one window: its blocks' positions, shuffled."""
        starts = blocks * self.block_size
        lens = np.minimum(starts + self.block_size, self.num_samples) - starts
        pos = np.repeat(starts - np.r_[0, np.cumsum(lens)[:-1]], lens) + np.arange(int(lens.sum()))
        np.random.default_rng(list(rng_key)).shuffle(pos)
        return pos

    def _global(self) -> Iterator[tuple[int, np.ndarray]]:
        """(global position of the first entry, positions) for each window of the epoch's order."""
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
            yield done, self._window((self.seed, self.epoch, w), blocks)
            done += size

    def _mine(self, first: int, pos: np.ndarray) -> list[int]:
        """This rank's share of `pos` (global positions first, first + 1, ...) at or after start."""
        lo = max(0, self.start - first)
        lo += (self.rank - (first + lo)) % self.world_size
        chosen = pos[lo :: self.world_size]
        if self.order is not None:
            chosen = self.order[chosen]
        return chosen.tolist()

    def __iter__(self) -> Iterator[int]:
        head: np.ndarray | None = None
        pad = self.total - self.num_samples
        for first, pos in self._global():
            if head is None:
                head = pos[:pad] if first == 0 else None
            yield from self._mine(first, pos)
        if pad:
            if head is None or head.size < pad:  # resumed past the first window, or a tiny first window
                head = self._head(pad)
            yield from self._mine(self.num_samples, head)

    def _head(self, count: int) -> np.ndarray:
        """The first `count` positions of the epoch's order (the padding repeats them)."""
        fresh = BlockShuffleSampler(
            self.num_samples,
            block_size=self.block_size,
            window_blocks=self.window_blocks,
            seed=self.seed,
            epoch=self.epoch,
        )
        parts, have = [], 0
        for _, pos in fresh._global():
            parts.append(pos[: count - have])
            have += parts[-1].size
            if have == count:
                break
        # Fewer samples than ranks: the order repeats as often as needed.
        return np.resize(np.concatenate(parts), count)
