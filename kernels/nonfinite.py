"""first_nonfinite_row: where a chunk first holds NaN or ±Inf, for strict-mode error messages.

x: (n, D) any float dtype → the smallest row index holding a non-finite value, or None.
The common case (all finite) costs one reduction pass; the index search runs only on failure.
"""

from __future__ import annotations

import torch

from revision.kernels.rows_cpu import tiles


def first_nonfinite_row_ref(x: torch.Tensor) -> int | None:
    """The specification: scan every element."""
    bad = ~torch.isfinite(x).all(dim=1)
    idx = torch.nonzero(bad).flatten()
    return int(idx[0].item()) if idx.numel() else None


def first_nonfinite_row(x: torch.Tensor) -> int | None:
    """x: (n, D) → index of the first row with a NaN/±Inf element, or None when all are finite.

    One max-abs reduction per cached tile (NaN propagates through it, ±Inf shows as an
    infinite maximum) finds a bad tile without a boolean mask of the whole chunk.
    """
    if x.dim() != 2:
        raise ValueError(f"first_nonfinite_row: x must be 2-D (n, D), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        return None
    if x.device.type != "cpu":
        return first_nonfinite_row_ref(x)
    n, d = x.shape
    for start, stop in tiles(n, d, tile_bytes=1 << 20):
        tile = x[start:stop]
        if tile.numel() and not bool(torch.isfinite(tile.abs().amax())):
            row = first_nonfinite_row_ref(tile)
            if row is not None:
                return start + row
    return None
