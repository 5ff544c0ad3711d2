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

from revision.errors import UserError
from revision.kernels import Moments, merge_moments, row_stats
from revision.kernels.rows_cpu import tiles
from revision.store import FeatureStore, to_torch


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
    store: FeatureStore,
    *,
    start: int = 0,
    block_rows: int | None,
    desc: str,
    progress: bool,
    device: torch.device | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first_row, block) over rows [start, rows) as torch views of the decoded blocks, with a progress bar.

    With a CUDA `device` each block is copied there (the read-ahead keeps decoding the next ones).
    """
    cpu = device is None or device.type == "cpu"
    bar = tqdm(
        total=store.rows,
        initial=start,
        desc=desc,
        unit="rows",
        unit_scale=True,
        disable=not progress_enabled(progress),
        leave=False,
    )
    try:
        for lo, block in store.iter_chunks(start, block_rows=block_rows):
            t = to_torch(block, store.dtype)
            yield lo, (t if cpu else t.to(device, non_blocking=False))
            bar.update(block.shape[0])
    finally:
        bar.close()


#: dtype → (same-width integer dtype, mask dropping the sign, bit pattern of +Inf).
_MAGNITUDE_BITS: dict[torch.dtype, tuple[torch.dtype, int, int]] = {
    torch.float16: (torch.int16, 0x7FFF, 0x7C00),
    torch.bfloat16: (torch.int16, 0x7FFF, 0x7F80),
    torch.float32: (torch.int32, 0x7FFFFFFF, 0x7F800000),
}


def screen_block(block: torch.Tensor, row0: int, store: FeatureStore) -> None:
    """Strict mode: a NaN/±Inf value or an all-zero row is an error naming the store, row and id.

    One max-abs per row per cached tile finds both (NaN propagates through the max, ±Inf shows as an
    infinite max, a zero row has max 0); the row search runs only when a tile fails.
    """
    n, d = block.shape
    # On a GPU one reduction over the whole block (each tile would cost a host sync).
    tile_bytes = 1 << 20 if block.device.type == "cpu" else 1 << 62
    bits = _MAGNITUDE_BITS.get(block.dtype) if block.is_contiguous() else None
    for s, e in tiles(n, d, tile_bytes=tile_bytes):
        if bits is not None:
            # The largest magnitude's bit pattern per row, in integer arithmetic (2-3x the speed of a
            # floating abs + max on fp16 here): at or above the exponent-all-ones pattern means
            # NaN or ±Inf, zero means every value is ±0.
            int_dtype, mask, nonfinite = bits
            peak_bits = (block[s:e].view(int_dtype) & mask).amax(dim=1)
            finite = peak_bits < nonfinite
            nonzero = peak_bits > 0
        else:
            peak = block[s:e].abs().amax(dim=1)
            finite = torch.isfinite(peak)
            nonzero = peak > 0
        if bool(finite.all()) and bool(nonzero.all()):
            continue
        bad = torch.nonzero(~finite | ~nonzero).flatten()
        r = s + int(bad[0])
        row = row0 + r
        ident = store.read_ids(row, row + 1)[0]
        what = "an all-zero row" if bool(finite[r - s]) else "a NaN or infinite value"
        raise UserError(
            f"{store.path}: row {row} (id {ident!r}) holds {what}; fix the input or pass --no-strict "
            "(non-finite values then count as 0 and zero rows stay zero, as in the reference)"
        )


def moments_pass(
    store: FeatureStore,
    *,
    second_moment: bool,
    strict: bool,
    block_rows: int | None,
    progress: bool,
    desc: str,
    device: torch.device | None = None,
) -> tuple[Moments, PassTiming]:
    """Pass 1 over one store: Chan-merged moments of its L2-normalised rows, merged in block order."""
    t0 = time.perf_counter()
    total = Moments.empty(store.dim, second_moment=second_moment)
    for row0, block in iter_blocks(store, block_rows=block_rows, desc=desc, progress=progress, device=device):
        if strict:
            screen_block(block, row0, store)
        # Partial moments come back to the CPU: the float64 merge runs there, in block order.
        part = row_stats(block, normalize=True, second_moment=second_moment).to("cpu")
        total = merge_moments(total, part)
    nbytes = store.rows * store.dim * store.np_dtype.itemsize
    return total, PassTiming(desc, store.rows, nbytes, time.perf_counter() - t0)
