"""capdec (CapDec noise-injection baseline, Nukrai et al. 2022): out = u(u(x) + σ·ε).

x: (n, D) fp16/bf16/fp32 → (n, D) out_dtype, unit rows. ε ~ N(0, I) from the counter-based
generator keyed by (seed, row_offset + i, column): chunking never changes the result.
"""

from __future__ import annotations

import torch

from revision.kernels.c3 import DEFAULT_SIGMA
from revision.kernels.noise import gaussian_noise_ref
from revision.kernels.shift_rows import shift_rows
from revision.kernels.unit_rule import unit_rows_ref


def capdec_ref(
    x: torch.Tensor,
    *,
    seed: int,
    row_offset: int = 0,
    sigma: float = DEFAULT_SIGMA,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The specification, in float64 (noise drawn in float32)."""
    n, d = x.shape
    v = unit_rows_ref(x) + sigma * gaussian_noise_ref(seed, row_offset, n, d, x.device).to(torch.float64)
    return unit_rows_ref(v).to(out_dtype)


def capdec(
    x: torch.Tensor,
    *,
    seed: int,
    row_offset: int = 0,
    sigma: float = DEFAULT_SIGMA,
    out_dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """u(u(x) + σ·ε) for global rows row_offset … row_offset + n − 1."""
    zero = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    return shift_rows(
        x, zero, normalize_in=True, normalize_out=True, sigma=sigma, seed=seed, row_offset=row_offset,
        out_dtype=out_dtype, out=out,
    )  # fmt: skip
