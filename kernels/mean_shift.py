"""mean_shift (Unicorn baseline): out = x − mean, optionally of the unit rows u(x) − mean.

x: (n, D) fp16/bf16/fp32, mean: f64 (D,) (the modality's mean, from row_stats) → (n, D) out_dtype.
Runs through the fused `shift_rows` path; the output is not renormalised.
"""

from __future__ import annotations

import torch

from revision.kernels.shift_rows import shift_rows
from revision.kernels.unit_rule import unit_rows_ref


def mean_shift_ref(
    x: torch.Tensor, mean: torch.Tensor, *, normalize: bool = False, out_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The specification, in float64."""
    v = unit_rows_ref(x) if normalize else x.to(torch.float64)
    return (v - mean.to(x.device, torch.float64)).to(out_dtype)


def mean_shift(
    x: torch.Tensor,
    mean: torch.Tensor,
    *,
    normalize: bool = False,
    out_dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x − mean (or u(x) − mean when `normalize`), one read and one write per row."""
    return shift_rows(
        x, -mean.to(torch.float64), normalize_in=normalize, normalize_out=False, out_dtype=out_dtype, out=out
    )
