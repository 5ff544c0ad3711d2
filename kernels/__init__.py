"""Per-chunk arithmetic (statistics, ReAlign transform, baselines): Triton kernels with torch references.

Each op has a float64 torch reference (`<op>_ref`, the specification), a fast torch path for
CPUs (`<op>_torch`), a Triton kernel (`<op>_triton`) and a dispatch (`<op>`) that picks the
kernel for CUDA tensors when Triton is installed. The three ReAlign pass ops (row_stats,
realign_centroid, realign_apply) also have a fused C kernel for the CPU (`<op>_native`, see
native.py), used when the extension is built. `REVISION_KERNELS=triton|native|torch|ref` forces one.
"""

from __future__ import annotations

from revision.kernels.backend import select_backend, triton_available
from revision.kernels.c3 import c3, c3_ref
from revision.kernels.capdec import capdec, capdec_ref
from revision.kernels.gap_shift import gap_shift, gap_shift_ref
from revision.kernels.mean_shift import mean_shift, mean_shift_ref
from revision.kernels.moments import Moments, merge_moments
from revision.kernels.noise import gaussian_noise_ref
from revision.kernels.nonfinite import BadRowError, first_bad_row, first_nonfinite_row, first_nonfinite_row_ref
from revision.kernels.normalize import normalize_rows, normalize_rows_ref, normalize_rows_torch, normalize_rows_triton
from revision.kernels.realign_apply import (
    realign_apply,
    realign_apply_native,
    realign_apply_ref,
    realign_apply_torch,
    realign_apply_triton,
)
from revision.kernels.realign_centroid import (
    realign_centroid,
    realign_centroid_native,
    realign_centroid_ref,
    realign_centroid_torch,
    realign_centroid_triton,
)
from revision.kernels.row_stats import row_stats, row_stats_ref, row_stats_torch, row_stats_triton
from revision.kernels.shift_rows import shift_rows, shift_rows_ref, shift_rows_torch, shift_rows_triton

__all__ = [
    "BadRowError",
    "Moments",
    "c3",
    "c3_ref",
    "capdec",
    "capdec_ref",
    "gap_shift",
    "gap_shift_ref",
    "gaussian_noise_ref",
    "mean_shift",
    "mean_shift_ref",
    "first_bad_row",
    "first_nonfinite_row",
    "first_nonfinite_row_ref",
    "merge_moments",
    "normalize_rows",
    "normalize_rows_ref",
    "normalize_rows_torch",
    "normalize_rows_triton",
    "realign_apply",
    "realign_apply_native",
    "realign_apply_ref",
    "realign_apply_torch",
    "realign_apply_triton",
    "realign_centroid",
    "realign_centroid_native",
    "realign_centroid_ref",
    "realign_centroid_torch",
    "realign_centroid_triton",
    "row_stats",
    "row_stats_ref",
    "row_stats_torch",
    "row_stats_triton",
    "select_backend",
    "shift_rows",
    "shift_rows_ref",
    "shift_rows_torch",
    "shift_rows_triton",
    "triton_available",
]
