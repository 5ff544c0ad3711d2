"""realign_apply (ReAlign pass 3): out = u(h − mu_hat + mu_i), h = u(mu_i + s · (u(y) − mu_t)).

y: (n, D) fp16/bf16/fp32 → (n, D) in `out_dtype` (float32 by default), unit rows. The kernel
reads each row once and writes it once; nothing else touches memory.
"""

from __future__ import annotations

import torch

from revision.kernels import native
from revision.kernels.backend import select_backend, triton_available
from revision.kernels.launch import check_out_dtype, check_rows, interpreter_or_cuda, kernel_rows, prepare_out
from revision.kernels.realign_project import (
    ProjectionTorch,
    Scale,
    bounded,
    check_means,
    check_scale,
    projection_offset,
    realign_project_ref,
)
from revision.kernels.rows_cpu import inverse_norms_, map_row_parts, tiles
from revision.kernels.unit_rule import unit_rows_ref

if triton_available():
    import triton
    import triton.language as tl

    from revision.kernels.realign_project import project_rows
    from revision.kernels.triton_rows import (
        load_rows,
        load_vector,
        needs_scaling,
        row_blocks,
        store_rows,
        unit_rows,
    )


def realign_apply_ref(
    y: torch.Tensor,
    mu_t: torch.Tensor,
    mu_i: torch.Tensor,
    scale: Scale,
    mu_hat: torch.Tensor,
    *,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The specification, in float64, cast once to `out_dtype`."""
    h = realign_project_ref(y, mu_t, mu_i, scale)
    shift = mu_i.to(y.device, torch.float64) - mu_hat.to(y.device, torch.float64)
    return unit_rows_ref(h + shift).to(out_dtype)


if triton_available():

    @triton.jit
    def _realign_apply_kernel(
        Y_ptr,  # (n_rows, dim) fp16/bf16/fp32, row stride stride_y
        MU_T_ptr,  # (dim,) fp32
        MU_I_ptr,  # (dim,) fp32
        SHIFT_ptr,  # (dim,) fp32: mu_i − mu_hat
        OUT_ptr,  # (n_rows, dim) out dtype, contiguous
        n_rows,
        dim,
        stride_y,
        scale,
        SCALED_IN: tl.constexpr,
        SCALED_MID: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_A: tl.constexpr,
        BLOCK_B: tl.constexpr,
    ):
        pid = tl.program_id(0)
        rows = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
        row_ok = rows < n_rows
        mu_ta, mu_tb = load_vector(MU_T_ptr, dim, BLOCK_A, BLOCK_B)
        mu_ia, mu_ib = load_vector(MU_I_ptr, dim, BLOCK_A, BLOCK_B)
        shift_a, shift_b = load_vector(SHIFT_ptr, dim, BLOCK_A, BLOCK_B)
        xa, xb = load_rows(Y_ptr, rows, row_ok, stride_y, dim, BLOCK_A, BLOCK_B)
        ha, hb = project_rows(xa, xb, mu_ta, mu_tb, mu_ia, mu_ib, scale, SCALED_IN, SCALED_MID)
        oa, ob = unit_rows(ha + shift_a[None, :], hb + shift_b[None, :], False, SCALED_MID)
        store_rows(OUT_ptr, rows, row_ok, dim, dim, oa, ob, BLOCK_A, BLOCK_B)


def realign_apply_triton(
    y: torch.Tensor,
    mu_t: torch.Tensor,
    mu_i: torch.Tensor,
    scale: Scale,
    mu_hat: torch.Tensor,
    *,
    out_dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The Triton kernel (float scale); a matrix scale runs the projection through cuBLAS instead."""
    check_rows("realign_apply_triton", y=y)
    interpreter_or_cuda("realign_apply_triton", y)
    check_out_dtype("realign_apply_triton", out_dtype)
    n, d = y.shape
    check_means("realign_apply_triton", d, mu_t=mu_t, mu_i=mu_i, mu_hat=mu_hat)
    s = check_scale("realign_apply_triton", scale, d)
    shift = mu_i.to(y.device, torch.float64) - mu_hat.to(y.device, torch.float64)
    if isinstance(s, torch.Tensor):
        from revision.kernels.realign_centroid import _project_matrix_device

        result = unit_rows_ref(_project_matrix_device(y, mu_t, mu_i, s) + shift).to(out_dtype)
        return (
            result if out is None else prepare_out("realign_apply_triton", out, n, d, out_dtype, y.device).copy_(result)
        )
    out = prepare_out("realign_apply_triton", out, n, d, out_dtype, y.device)
    if n == 0:
        return out
    block_m, block_a, block_b, warps = row_blocks(d)
    _realign_apply_kernel[(triton.cdiv(n, block_m),)](
        y,
        mu_t.to(y.device, torch.float32).contiguous(),
        mu_i.to(y.device, torch.float32).contiguous(),
        shift.to(torch.float32).contiguous(),
        out, n, d, y.stride(0), s,
        SCALED_IN=needs_scaling(y.dtype), SCALED_MID=not bounded(s, mu_t, mu_i, mu_hat),
        BLOCK_M=block_m, BLOCK_A=block_a, BLOCK_B=block_b, num_warps=warps,
    )  # fmt: skip
    return out


def realign_apply_torch(
    y: torch.Tensor,
    mu_t: torch.Tensor,
    mu_i: torch.Tensor,
    scale: Scale,
    mu_hat: torch.Tensor,
    *,
    out_dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The fast torch path: per cached tile, projection, shift and final scaling written to `out`."""
    check_rows("realign_apply", y=y, require_contiguous=False)
    check_out_dtype("realign_apply", out_dtype)
    n, d = y.shape
    check_means("realign_apply", d, mu_t=mu_t, mu_i=mu_i, mu_hat=mu_hat)
    s = check_scale("realign_apply", scale, d)
    out = prepare_out("realign_apply", out, n, d, out_dtype, y.device)
    if y.device.type != "cpu":
        return out.copy_(realign_apply_ref(y, mu_t, mu_i, s, mu_hat, out_dtype=out_dtype))
    project = ProjectionTorch(mu_t, mu_i, s)
    shift64 = mu_i.to("cpu", torch.float64) - mu_hat.to("cpu", torch.float64)
    shift32 = shift64.float()

    def work(first: int, last: int) -> None:
        buffers = project.buffers(d)
        for start, stop in tiles(last, d, first=first):
            h, r2 = project(buffers, y[start:stop])
            g = torch.addcmul(shift64 if h.dtype == torch.float64 else shift32, h, r2[:, None], out=h)
            r3 = inverse_norms_(g)
            torch.mul(g, r3[:, None], out=out[start:stop])

    map_row_parts(n, d, work)
    return out


def realign_apply_native(
    y: torch.Tensor,
    mu_t: torch.Tensor,
    mu_i: torch.Tensor,
    scale: Scale,
    mu_hat: torch.Tensor,
    *,
    out_dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The C kernel (a float scale): the torch path's per-row arithmetic, one read and one write per row."""
    check_rows("realign_apply_native", y=y, require_contiguous=False)
    check_out_dtype("realign_apply_native", out_dtype)
    n, d = y.shape
    check_means("realign_apply_native", d, mu_t=mu_t, mu_i=mu_i, mu_hat=mu_hat)
    s = check_scale("realign_apply_native", scale, d)
    if isinstance(s, torch.Tensor):
        raise ValueError("realign_apply_native: a matrix scale takes the torch path")
    out = prepare_out("realign_apply_native", out, n, d, out_dtype, y.device)
    if n == 0:
        return out
    shift = mu_i.to("cpu", torch.float64) - mu_hat.to("cpu", torch.float64)
    native.apply_native(y, projection_offset(mu_t, mu_i, s), s, shift.float(), out)
    return out


def realign_apply(
    y: torch.Tensor,
    mu_t: torch.Tensor,
    mu_i: torch.Tensor,
    scale: Scale,
    mu_hat: torch.Tensor,
    *,
    out_dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """y: (n, D) fp16/bf16/fp32; mu_t, mu_i, mu_hat: f64 (D,); scale: float or f64 (D, D).

    → (n, D) `out_dtype`, unit rows: u(h − mu_hat + mu_i) with h = u(mu_i + scale · (u(y) − mu_t)).
    out: optional preallocated contiguous (n, D) buffer of `out_dtype`, reused across chunks.
    """
    backend = select_backend(y)
    if backend == "triton":
        return realign_apply_triton(kernel_rows(y), mu_t, mu_i, scale, mu_hat, out_dtype=out_dtype, out=out)
    if backend == "ref":
        n, d = y.shape
        check_means("realign_apply_ref", d, mu_t=mu_t, mu_i=mu_i, mu_hat=mu_hat)
        s = check_scale("realign_apply_ref", scale, d)
        result = realign_apply_ref(y, mu_t, mu_i, s, mu_hat, out_dtype=out_dtype)
        return result if out is None else prepare_out("realign_apply", out, n, d, out_dtype, y.device).copy_(result)
    if backend == "native" and not isinstance(scale, torch.Tensor) and native.supports(y):
        return realign_apply_native(y, mu_t, mu_i, scale, mu_hat, out_dtype=out_dtype, out=out)
    return realign_apply_torch(y, mu_t, mu_i, scale, mu_hat, out_dtype=out_dtype, out=out)


__all__ = ["realign_apply", "realign_apply_native", "realign_apply_ref", "realign_apply_torch", "realign_apply_triton"]
