"""realign_centroid (ReAlign pass 2): column sums of the projected rows h = u(mu_i + s · (u(y) − mu_t)).

y: (n, D) fp16/bf16/fp32 → (n, sum_h f64 (D,)); the caller divides the merged sums by the
merged count to get mu_hat. Each program of the kernel sums its rows into float64 partials
that the launcher adds in a fixed order: deterministic, no atomics.
"""

from __future__ import annotations

import torch

from revision.kernels import native
from revision.kernels.backend import select_backend, triton_available
from revision.kernels.launch import check_rows, interpreter_or_cuda, kernel_rows
from revision.kernels.realign_project import (
    ProjectionTorch,
    Scale,
    bounded,
    check_means,
    check_scale,
    projection_offset,
    realign_project_ref,
)
from revision.kernels.rows_cpu import map_row_parts, tiles
from revision.kernels.unit_rule import unit_rows_ref

if triton_available():
    import triton
    import triton.language as tl

    from revision.kernels.realign_project import project_rows
    from revision.kernels.triton_rows import (
        load_rows,
        load_vector,
        needs_scaling,
        reduction_grid,
        row_blocks,
        store_vector,
    )


def realign_centroid_ref(
    y: torch.Tensor, mu_t: torch.Tensor, mu_i: torch.Tensor, scale: Scale
) -> tuple[int, torch.Tensor]:
    """The specification: (n, Σ_rows h) with h computed in float64."""
    h = realign_project_ref(y, mu_t, mu_i, scale)
    return int(y.shape[0]), h.sum(dim=0)


if triton_available():

    @triton.jit
    def _realign_centroid_kernel(
        Y_ptr,  # (n_rows, dim) fp16/bf16/fp32, row stride stride_y
        MU_T_ptr,  # (dim,) fp32
        MU_I_ptr,  # (dim,) fp32
        SUM_ptr,  # (n_programs, dim) f64: each program's column sums of h
        n_rows,
        dim,
        stride_y,
        rows_per_program,
        scale,
        SCALED_IN: tl.constexpr,
        SCALED_MID: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_A: tl.constexpr,
        BLOCK_B: tl.constexpr,
    ):
        pid = tl.program_id(0)
        mu_ta, mu_tb = load_vector(MU_T_ptr, dim, BLOCK_A, BLOCK_B)
        mu_ia, mu_ib = load_vector(MU_I_ptr, dim, BLOCK_A, BLOCK_B)
        first = pid.to(tl.int64) * rows_per_program
        last = tl.minimum(first + rows_per_program, n_rows)
        acc_a = tl.zeros((BLOCK_A,), dtype=tl.float64)
        acc_b = tl.zeros((BLOCK_B,), dtype=tl.float64)
        for start in range(first, last, BLOCK_M):
            rows = start + tl.arange(0, BLOCK_M).to(tl.int64)
            row_ok = rows < last
            xa, xb = load_rows(Y_ptr, rows, row_ok, stride_y, dim, BLOCK_A, BLOCK_B)
            ha, hb = project_rows(xa, xb, mu_ta, mu_tb, mu_ia, mu_ib, scale, SCALED_IN, SCALED_MID)
            # Rows past the end project to u(mu_i − s·mu_t), not 0: mask them. Lanes past D are 0.
            # fp32 within a block of BLOCK_M rows, float64 across blocks.
            acc_a += tl.sum(tl.where(row_ok[:, None], ha, 0.0), axis=0).to(tl.float64)
            acc_b += tl.sum(tl.where(row_ok[:, None], hb, 0.0), axis=0).to(tl.float64)
        store_vector(SUM_ptr + pid.to(tl.int64) * dim, dim, acc_a, acc_b, BLOCK_A, BLOCK_B)


def realign_centroid_triton(
    y: torch.Tensor, mu_t: torch.Tensor, mu_i: torch.Tensor, scale: Scale
) -> tuple[int, torch.Tensor]:
    """The Triton kernel (float scale); a matrix scale runs the projection through cuBLAS instead."""
    check_rows("realign_centroid_triton", y=y)
    interpreter_or_cuda("realign_centroid_triton", y)
    n, d = y.shape
    check_means("realign_centroid_triton", d, mu_t=mu_t, mu_i=mu_i)
    s = check_scale("realign_centroid_triton", scale, d)
    if n == 0:
        return 0, torch.zeros(d, dtype=torch.float64, device=y.device)
    if isinstance(s, torch.Tensor):
        return n, _project_matrix_device(y, mu_t, mu_i, s).sum(dim=0, dtype=torch.float64)
    block_m, block_a, block_b, warps = row_blocks(d, elems=4096)
    programs, per_program = reduction_grid(n, block_m, y.device)
    sums = torch.empty(programs, d, dtype=torch.float64, device=y.device)
    mu_t32 = mu_t.to(y.device, torch.float32).contiguous()
    mu_i32 = mu_i.to(y.device, torch.float32).contiguous()
    _realign_centroid_kernel[(programs,)](
        y, mu_t32, mu_i32, sums, n, d, y.stride(0), per_program, s,
        SCALED_IN=needs_scaling(y.dtype), SCALED_MID=not bounded(s, mu_t, mu_i),
        BLOCK_M=block_m, BLOCK_A=block_a, BLOCK_B=block_b, num_warps=warps,
    )  # fmt: skip
    return n, sums.sum(dim=0)


def _project_matrix_device(y: torch.Tensor, mu_t: torch.Tensor, mu_i: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """realign-ot on the tensor's device → h float64 (n, D): the kernel's unit rows, then a float64
    GEMM (BLAS rounding depends on a row's place in the product; float64 keeps that ~1e-16) and
    the float64 unit rule. Compute-bound (D² per row) rather than memory-bound."""
    from revision.kernels.normalize import normalize_rows

    u = normalize_rows(y).to(torch.float64)
    u -= mu_t.to(u.device, torch.float64)
    h = torch.addmm(mu_i.to(u.device, torch.float64), u, a.to(u.device, torch.float64))
    return unit_rows_ref(h)


def realign_centroid_torch(
    y: torch.Tensor, mu_t: torch.Tensor, mu_i: torch.Tensor, scale: Scale
) -> tuple[int, torch.Tensor]:
    """The fast torch path: per cached tile, fp32 projection, then Σ r2 · h as a float64 GEMV."""
    check_rows("realign_centroid", y=y, require_contiguous=False)
    n, d = y.shape
    check_means("realign_centroid", d, mu_t=mu_t, mu_i=mu_i)
    s = check_scale("realign_centroid", scale, d)
    total = torch.zeros(d, dtype=torch.float64)
    if n == 0:
        return 0, total.to(y.device)
    if y.device.type != "cpu":
        h = realign_project_ref(y, mu_t, mu_i, s)
        return n, h.sum(dim=0)
    project = ProjectionTorch(mu_t, mu_i, s)

    def work(first: int, last: int) -> torch.Tensor:
        part = torch.zeros(d, dtype=torch.float64)
        buffers = project.buffers(d, f64=True)
        assert buffers.f64 is not None
        for start, stop in tiles(last, d, first=first):
            h, r2 = project(buffers, y[start:stop])
            h64 = h if h.dtype == torch.float64 else buffers.f64[: stop - start].copy_(h)
            # Σ_rows r2 · h in float64: the row scaling rides along in the matrix-vector product.
            part.addmv_(h64.T, r2.to(torch.float64))
        return part

    for part in map_row_parts(n, d, work):
        total += part
    return n, total


def realign_centroid_native(
    y: torch.Tensor, mu_t: torch.Tensor, mu_i: torch.Tensor, scale: Scale
) -> tuple[int, torch.Tensor]:
    """The C kernel (a float scale): the torch path's per-row arithmetic fused into one sweep."""
    check_rows("realign_centroid_native", y=y, require_contiguous=False)
    n, d = y.shape
    check_means("realign_centroid_native", d, mu_t=mu_t, mu_i=mu_i)
    s = check_scale("realign_centroid_native", scale, d)
    if isinstance(s, torch.Tensor):
        raise ValueError("realign_centroid_native: a matrix scale takes the torch path")
    if n == 0:
        return 0, torch.zeros(d, dtype=torch.float64)
    return n, native.centroid_native(y, projection_offset(mu_t, mu_i, s), s)


def realign_centroid(y: torch.Tensor, mu_t: torch.Tensor, mu_i: torch.Tensor, scale: Scale) -> tuple[int, torch.Tensor]:
    """y: (n, D) fp16/bf16/fp32; mu_t, mu_i: f64 (D,); scale: float or f64 (D, D) → (n, Σ h f64 (D,)).

    h = u(mu_i + scale · (u(y) − mu_t)) (or `(u(y) − mu_t) @ scale` for a matrix).
    """
    backend = select_backend(y)
    if backend == "triton":
        return realign_centroid_triton(kernel_rows(y), mu_t, mu_i, scale)
    if backend == "ref":
        n, d = y.shape
        check_means("realign_centroid_ref", d, mu_t=mu_t, mu_i=mu_i)
        return realign_centroid_ref(y, mu_t, mu_i, check_scale("realign_centroid_ref", scale, d))
    if backend == "native" and not isinstance(scale, torch.Tensor) and native.supports(y):
        return realign_centroid_native(y, mu_t, mu_i, scale)
    return realign_centroid_torch(y, mu_t, mu_i, scale)


__all__ = [
    "realign_centroid",
    "realign_centroid_native",
    "realign_centroid_ref",
    "realign_centroid_torch",
    "realign_centroid_triton",
]
