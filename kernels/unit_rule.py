"""The reference's row-normalisation rule, in float64: the specification every path must match.

u(v) = v / ||v|| with: NaN and ±Inf replaced by 0; the row divided by its max-abs before the
norm is taken (no overflow, no underflow); a row whose norm is below 1e-10 left unscaled (so
a zero row stays zero).
"""

from __future__ import annotations

import torch

NORM_FLOOR = 1e-10


def unit_rows_ref(x: torch.Tensor) -> torch.Tensor:
    """x: (n, D) any float dtype → (n, D) float64, the rule applied row by row."""
    v = torch.nan_to_num(x.to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0)
    m = v.abs().amax(dim=1, keepdim=True) if v.shape[1] else torch.zeros(v.shape[0], 1, dtype=v.dtype)
    safe = torch.where(m > 0, m, torch.ones_like(m))
    z = v / safe
    zn = torch.linalg.vector_norm(z, dim=1, keepdim=True)
    norm = zn * safe
    return torch.where(norm < NORM_FLOOR, v, z / torch.where(zn > 0, zn, torch.ones_like(zn)))
