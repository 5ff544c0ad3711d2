"""The fused C row kernels of ReAlign's three passes on the CPU (kernels/csrc/native.c).

The torch CPU path sweeps each cached tile once per elementary step; the C loops do every step of a
pass on one row while it sits in L1, so a pass costs about one read of its input. Per-row arithmetic
is the torch path's (fp32 rows and norms, the float64 reference rule outside the fast range) and sums
are float64, so results match the reference to the same tolerances; tests compare all three.

The extension is built at install when a C compiler is present (setup.py) and is optional: without it,
`available()` is False and the ops take their torch path. Each call splits rows into one contiguous
part per thread (rows_cpu.map_row_parts); the C code releases the GIL.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch

from revision.kernels.launch import rows_readable_in_place
from revision.kernels.moments import Moments, merge_moments
from revision.kernels.nonfinite import BadRowError
from revision.kernels.rows_cpu import map_row_parts

_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


@functools.cache
def _module() -> ModuleType | None:
    try:
        from revision.kernels import _native  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _native


def available() -> bool:
    """True when the C extension was built and imports."""
    return _module() is not None


def supports(x: torch.Tensor) -> bool:
    """Rows the C kernels read in place: a CPU (n, D ≥ 1) fp32/fp16/bf16 tensor whose columns are
    adjacent (unit column stride when D > 1) and whose rows do not overlap (launch.rows_readable_in_place).

    Any other layout (column steps, transposes, `expand`'s zero strides) takes the op's torch path,
    which copies each cache-sized tile to fp32 anyway and so reads any strides without copying the
    whole chunk. Any address is fine: the C code reads and writes through memcpy.
    """
    return (
        available()
        and x.device.type == "cpu"
        and x.dim() == 2
        and x.shape[1] > 0
        and x.dtype in _CODES
        and rows_readable_in_place(x)
    )


def _check(op: str, x: torch.Tensor) -> None:
    """The C launchers' own check, so a direct call never reads a layout the kernels would misread."""
    if not supports(x):
        raise ValueError(
            f"{op}: the C kernels read CPU fp32/fp16/bf16 (n, D ≥ 1) rows with unit column stride and rows "
            f"at least D apart; got {x.dtype} {tuple(x.shape)} stride {tuple(x.stride())} on {x.device}"
        )


def _lib() -> ModuleType:
    lib = _module()
    if lib is None:
        raise RuntimeError("the native kernels are not built (install with a C compiler present)")
    return lib


def _row_args(x: torch.Tensor, first: int, last: int) -> tuple[int, int, int, int, int]:
    """(address of row `first`, dtype code, rows, D, row stride in bytes) for the C entry points."""
    item = x.element_size()
    stride = x.stride(0) if x.shape[0] > 1 else x.shape[1]
    return x.data_ptr() + first * stride * item, _CODES[x.dtype], last - first, x.shape[1], stride * item


def row_stats_native(x: torch.Tensor, *, normalize: bool = True, screen: bool = False) -> Moments:
    """Moments (n, mean, M2 in float64) of x's rows, unit rows first when `normalize`.

    screen: raise BadRowError at the first row holding NaN/±Inf or only zeros.
    """
    lib = _lib()
    _check("row_stats_native", x)
    n, d = x.shape

    def work(first: int, last: int) -> Moments:
        mean = torch.zeros(d, dtype=torch.float64)
        m2 = torch.zeros(d, dtype=torch.float64)
        total = torch.zeros(d, dtype=torch.float64)
        count, bad = lib.moments(
            *_row_args(x, first, last), normalize, screen, 0, mean.data_ptr(), m2.data_ptr(), total.data_ptr()
        )
        if bad >= 0:
            row = first + bad
            raise BadRowError(row, not bool(torch.isfinite(x[row]).all()))
        return Moments(count, total / count, m2, None, total)

    total = Moments.empty(d)
    for part in map_row_parts(n, d, work):
        total = merge_moments(total, part)
    return total


def centroid_native(y: torch.Tensor, offset: torch.Tensor, scale: float) -> torch.Tensor:
    """Σ over rows of h = u(offset + scale · u(y)) in float64; offset is the fp32 mu_i − scale · mu_t."""
    lib = _lib()
    _check("centroid_native", y)
    n, d = y.shape
    off = offset.to(torch.float32).contiguous()

    def work(first: int, last: int) -> torch.Tensor:
        part = torch.zeros(d, dtype=torch.float64)
        lib.centroid(*_row_args(y, first, last), off.data_ptr(), scale, part.data_ptr())
        return part

    total = torch.zeros(d, dtype=torch.float64)
    for part in map_row_parts(n, d, work):
        total += part
    return total


def apply_native(y: torch.Tensor, offset: torch.Tensor, scale: float, shift: torch.Tensor, out: torch.Tensor) -> None:
    """out ← u(h − mu_hat + mu_i) for every row; `shift` is the fp32 mu_i − mu_hat, `out` contiguous."""
    lib = _lib()
    _check("apply_native", y)
    n, d = y.shape
    if out.dtype not in _CODES or not out.is_contiguous() or tuple(out.shape) != (n, d):
        raise ValueError(f"apply_native: out must be a contiguous ({n}, {d}) fp32/fp16/bf16 tensor")
    off = offset.to(torch.float32).contiguous()
    sh = shift.to(torch.float32).contiguous()
    row_bytes = d * out.element_size()

    def work(first: int, last: int) -> None:
        dst = out.data_ptr() + first * row_bytes
        lib.apply(*_row_args(y, first, last), off.data_ptr(), scale, sh.data_ptr(), dst, _CODES[out.dtype])

    map_row_parts(n, d, work)


__all__ = ["apply_native", "available", "centroid_native", "row_stats_native", "supports"]
