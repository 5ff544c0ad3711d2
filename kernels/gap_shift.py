"""gap_shift ("Mind the Gap" baseline, Liang et al. 2022): out = u(u(t) + λ · Δ/||Δ||), Δ = mu_i − mu_t.

t: (n, D) fp16/bf16/fp32, delta: f64 (D,) the gap vector (mu_i − mu_t), lam: the step λ →
(n, D) out_dtype, unit rows. With `normalize=False` the input rows are used as they are
(u(t + λΔ̂), the paper's form for already-unit embeddings).
"""

from __future__ import annotations

import torch

from revision.kernels.shift_rows import shift_rows
from revision.kernels.unit_rule import unit_rows_ref


def _direction(delta: torch.Tensor) -> torch.Tensor:
    d64 = delta.to(torch.float64)
    norm = float(torch.linalg.vector_norm(d64))
    if not norm > 0.0 or norm == float("inf"):
        raise ValueError(f"gap_shift: the gap vector delta has norm {norm}; expected a finite non-zero vector")
    return d64 / norm


def gap_shift_ref(
    t: torch.Tensor, delta: torch.Tensor, lam: float, *, normalize: bool = True, out_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The specification, in float64."""
    v = unit_rows_ref(t) if normalize else t.to(torch.float64)
    return unit_rows_ref(v + float(lam) * _direction(delta).to(t.device)).to(out_dtype)


def gap_shift(
    t: torch.Tensor,
    delta: torch.Tensor,
    lam: float,
    *,
    normalize: bool = True,
    out_dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """u(u(t) + λ Δ/||Δ||) (or u(t + λ Δ/||Δ||) without `normalize`), one read and one write per row."""
    return shift_rows(
        t, float(lam) * _direction(delta), normalize_in=normalize, normalize_out=True, out_dtype=out_dtype, out=out
    )
