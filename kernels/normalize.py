"""normalize_rows: the reference's L2 row normalisation, x: (n, D) fp16/bf16/fp32 → (n, D) float32."""

from __future__ import annotations

import torch

from revision.kernels.backend import select_backend, triton_available
from revision.kernels.launch import check_rows, interpreter_or_cuda, kernel_rows, prepare_out
from revision.kernels.rows_cpu import map_row_parts, tiles, unit_rows_
from revision.kernels.unit_rule import unit_rows_ref

if triton_available():
    import triton
    import triton.language as tl

    from revision.kernels.triton_rows import load_rows, needs_scaling, row_blocks, store_rows, unit_rows


def normalize_rows_ref(x: torch.Tensor) -> torch.Tensor:
    """x: (n, D) any float dtype → (n, D) float32 unit rows (computed in float64)."""
    return unit_rows_ref(x).to(torch.float32)


if triton_available():

    @triton.jit
    def _normalize_rows_kernel(
        X_ptr,  # (n_rows, dim) fp16/bf16/fp32, row stride stride_x
        Y_ptr,  # (n_rows, dim) fp32, contiguous
        n_rows,
        dim,
        stride_x,
        SCALED: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_A: tl.constexpr,
        BLOCK_B: tl.constexpr,
    ):
        pid = tl.program_id(0)
        rows = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
        row_ok = rows < n_rows
        xa, xb = load_rows(X_ptr, rows, row_ok, stride_x, dim, BLOCK_A, BLOCK_B)
        ya, yb = unit_rows(xa, xb, True, SCALED)
        store_rows(Y_ptr, rows, row_ok, dim, dim, ya, yb, BLOCK_A, BLOCK_B)


def normalize_rows_triton(x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """The Triton kernel; x on CUDA (or CPU under TRITON_INTERPRET=1), row-contiguous."""
    check_rows("normalize_rows_triton", x=x)
    interpreter_or_cuda("normalize_rows_triton", x)
    n, d = x.shape
    y = prepare_out("normalize_rows_triton", out, n, d, torch.float32, x.device)
    if n == 0:
        return y
    block_m, block_a, block_b, warps = row_blocks(d)
    grid = (triton.cdiv(n, block_m),)
    _normalize_rows_kernel[grid](
        x, y, n, d, x.stride(0), SCALED=needs_scaling(x.dtype),
        BLOCK_M=block_m, BLOCK_A=block_a, BLOCK_B=block_b, num_warps=warps,
    )  # fmt: skip
    return y


def normalize_rows_torch(x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """The fast torch path: one fp32 conversion per tile, in-place scaling while the tile is cached."""
    check_rows("normalize_rows", x=x, require_contiguous=False)
    n, d = x.shape
    y = prepare_out("normalize_rows", out, n, d, torch.float32, x.device)

    def work(first: int, last: int) -> None:
        for s, e in tiles(last, d, first=first):
            tile = y[s:e]
            tile.copy_(x[s:e])
            unit_rows_(tile)

    map_row_parts(n, d, work)
    return y


def normalize_rows(x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """x: (n, D) fp16/bf16/fp32 → (n, D) float32 unit rows (NaN/±Inf → 0; norm < 1e-10 left as is).

    out: optional preallocated (n, D) float32 buffer, reused across chunks.
    """
    backend = select_backend(x)
    if backend == "triton":
        return normalize_rows_triton(kernel_rows(x), out=out)
    if backend == "ref":
        result = normalize_rows_ref(x)
        return (
            result
            if out is None
            else prepare_out("normalize_rows", out, *x.shape, torch.float32, x.device).copy_(result)
        )
    return normalize_rows_torch(x, out=out)


__all__ = ["normalize_rows", "normalize_rows_ref", "normalize_rows_torch", "normalize_rows_triton"]
