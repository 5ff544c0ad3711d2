"""The streaming passes over feature stores: moments (pass 1), centroid (pass 2), aligned rows (pass 3).

Each pass walks a store in chunk-aligned blocks that the store reads and decodes ahead on threads
while the current block is computed. Partial results are merged in block order, so the result does
not depend on thread scheduling. Memory is bounded by a few blocks, never by the row count.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from revision import dist
from revision.errors import UserError
from revision.kernels import Moments, merge_moments, row_stats
from revision.kernels.nonfinite import BadRowError, first_bad_row
from revision.store import Readable, to_torch


@dataclass
class PassTiming:
    """Wall time and volume of one pass over one store."""

    name: str
    rows: int
    bytes: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")

    @property
    def gb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else float("inf")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "rows": self.rows, "bytes": self.bytes, "seconds": self.seconds}


def progress_enabled(wanted: bool) -> bool:
    return wanted and os.environ.get("REVISION_NO_PROGRESS", "0") != "1"


def iter_blocks(
    store: Readable,
    *,
    start: int = 0,
    stop: int | None = None,
    block_rows: int | None,
    desc: str,
    progress: bool,
    device: torch.device | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first_row, block) over rows [start, stop or rows) as torch views of the decoded blocks, with a progress bar.

    With a CUDA `device` each block is copied there (the read-ahead keeps decoding the next ones).
    """
    cpu = device is None or device.type == "cpu"
    bar = tqdm(
        total=store.rows if stop is None else stop,
        initial=start,
        desc=desc,
        unit="rows",
        unit_scale=True,
        disable=not progress_enabled(progress),
        leave=False,
    )
    try:
        # On the CPU the kernels read the page cache in place (zero-copy views; they never write
        # into their input); a copy to a GPU reads the mapping just the same.
        for lo, block in store.iter_chunks(start, stop, block_rows=block_rows, zero_copy=True):
            t = to_torch(block, store.dtype)
            yield lo, (t if cpu else t.to(device, non_blocking=False))
            bar.update(block.shape[0])
    finally:
        bar.close()


def screen_block(block: torch.Tensor, row0: int, store: Readable) -> None:
    """Strict mode: a NaN/±Inf value or an all-zero row is an error naming the store, row and id."""
    bad = first_bad_row(block)
    if bad is not None:
        raise bad_row_error(bad, row0, store)


def bad_row_error(bad: BadRowError, row0: int, store: Readable) -> UserError:
    row = row0 + bad.row
    ident = store.read_ids(row, row + 1)[0]
    what = "a NaN or infinite value" if bad.nonfinite else "an all-zero row"
    return UserError(
        f"{store.path}: row {row} (id {ident!r}) holds {what}; fix the input or pass --no-strict "
        "(non-finite values then count as 0 and zero rows stay zero, as in the reference)"
    )


def pass_segments(store: Readable, block_rows: int | None, partial_bytes: int) -> list[tuple[int, int]]:
    """This rank's segments of a pass over `store` (all of them in a one-process run); see dist.py."""
    blocks = store.block_ranges(0, None, block_rows)
    return dist.share(dist.segments(blocks, dist.max_segments(partial_bytes)))


def moments_pass(
    store: Readable,
    *,
    second_moment: bool,
    strict: bool,
    block_rows: int | None,
    progress: bool,
    desc: str,
    device: torch.device | None = None,
) -> tuple[Moments, PassTiming]:
    """Pass 1 over one store: Chan-merged moments of its L2-normalised rows.

    Blocks are merged in order within each segment, segments in order after (dist.py), so every
    number of processes gets the same bits; this process reads only its own segments.
    """
    t0 = time.perf_counter()
    d = store.dim
    segs = pass_segments(store, block_rows, 8 * (3 * d + (d * d if second_moment else 0)))
    lo, hi = dist.span(segs)

    def partials() -> Iterator[Moments]:
        ends = iter([b for _, b in segs])
        end = next(ends, hi)
        seg = Moments.empty(d, second_moment=second_moment)
        for row0, block in iter_blocks(
            store, start=lo, stop=hi, block_rows=block_rows, desc=desc, progress=progress, device=device
        ):
            # Strict screening rides along in the statistics sweep (the native kernel checks each row
            # it normalises; other paths run a screening sweep first).
            try:
                part = row_stats(block, normalize=True, second_moment=second_moment, screen=strict)
            except BadRowError as bad:
                raise bad_row_error(bad, row0, store) from None
            # Partial moments come back to the CPU: the float64 merges run there, in block order.
            seg = merge_moments(seg, part.to("cpu"))
            if row0 + block.shape[0] >= end:
                yield seg
                seg = Moments.empty(d, second_moment=second_moment)
                end = next(ends, hi)

    total = dist.fold_in_order(partials(), Moments.empty(d, second_moment=second_moment), merge_moments)
    nbytes = (hi - lo) * d * store.np_dtype.itemsize
    return total, PassTiming(desc, hi - lo, nbytes, time.perf_counter() - t0)
