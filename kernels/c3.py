"""c3 (C3 "collapse + corrupt" baseline, Zhang et al. 2024): out = u(u(y) − mu + σ·ε).

y: (n, D) fp16/bf16/fp32, mu: f64 (D,) the modality's mean → (n, D) out_dtype, unit rows.
ε ~ N(0, I) comes from the counter-based generator keyed by (seed, row_offset + i, column), so
a chunk gives the same rows whatever the chunking. sigma=0 gives the inference-time image
transform u(u(v) − mu_v).
"""

from __future__ import annotations

import math

import torch

from revision.kernels.noise import gaussian_noise_ref
from revision.kernels.shift_rows import shift_rows
from revision.kernels.unit_rule import unit_rows_ref

DEFAULT_SIGMA = math.sqrt(0.016)


def c3_ref(
    y: torch.Tensor,
    mu: torch.Tensor,
    *,
    seed: int,
    row_offset: int = 0,
    sigma: float = DEFAULT_SIGMA,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The specification, in float64 (noise drawn in float32)."""
    n, d = y.shape
    v = unit_rows_ref(y) - mu.to(y.device, torch.float64)
    if sigma != 0.0:
        v = v + sigma * gaussian_noise_ref(seed, row_offset, n, d, y.device).to(torch.float64)
    return unit_rows_ref(v).to(out_dtype)


def c3(
    y: torch.Tensor,
    mu: torch.Tensor,
    *,
    seed: int,
    row_offset: int = 0,
    sigma: float = DEFAULT_SIGMA,
    out_dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """u(u(y) − mu + σ·ε) for global rows row_offset … row_offset + n − 1."""
    return shift_rows(
        y, -mu.to(torch.float64), normalize_in=True, normalize_out=True, sigma=sigma, seed=seed,
        row_offset=row_offset, out_dtype=out_dtype, out=out,
    )  # fmt: skip
