"""shift_rows: the fused path of the baselines, out = v(w(x) + b + σ·ε).

w is u (normalise) or the identity, v likewise, b a fixed (D,) shift and ε counter-based
N(0, 1) noise keyed by (seed, global row, column). mean_shift, c3, capdec and gap_shift are
thin wrappers that pick b, σ and the two switches. One read and one write per row.
"""

from __future__ import annotations

import torch

from revision.kernels.backend import select_backend, triton_available
from revision.kernels.launch import (
    check_out_dtype,
    check_rows,
    check_vector,
    interpreter_or_cuda,
    kernel_rows,
    prepare_out,
)
from revision.kernels.noise import NoiseScratch, gaussian_noise_into, gaussian_noise_ref, seed_key
from revision.kernels.rows_cpu import TileBuffers, map_row_parts, tiles, unit_rows_
from revision.kernels.unit_rule import unit_rows_ref

if triton_available():
    import triton
    import triton.language as tl

    from revision.kernels.triton_rows import (
        BOUNDED_PARAMETER,
        gaussian_noise,
        load_rows,
        load_vector,
        needs_scaling,
        row_blocks,
        row_keys,
        store_rows,
        unit_rows,
    )


def shift_rows_ref(
    x: torch.Tensor,
    shift: torch.Tensor,
    *,
    normalize_in: bool,
    normalize_out: bool,
    sigma: float = 0.0,
    seed: int = 0,
    row_offset: int = 0,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The specification in float64 (the noise itself is drawn in float32, as on every path)."""
    v = unit_rows_ref(x) if normalize_in else x.to(torch.float64)
    v = v + shift.to(x.device, torch.float64)
    if sigma != 0.0:
        n, d = x.shape
        v = v + sigma * gaussian_noise_ref(seed, row_offset, n, d, x.device).to(torch.float64)
    if normalize_out:
        v = unit_rows_ref(v)
    return v.to(out_dtype)


if triton_available():

    @triton.jit(do_not_specialize=["row_offset", "seed_key"])
    def _shift_rows_kernel(
        X_ptr,  # (n_rows, dim) fp16/bf16/fp32, row stride stride_x
        SHIFT_ptr,  # (dim,) fp32
        OUT_ptr,  # (n_rows, dim) out dtype, contiguous
        n_rows,
        dim,
        stride_x,
        row_offset,
        seed_key,
        sigma,
        NORMALIZE_IN: tl.constexpr,
        NORMALIZE_OUT: tl.constexpr,
        SCALED_IN: tl.constexpr,
        SCALED_OUT: tl.constexpr,
        NOISE: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_A: tl.constexpr,
        BLOCK_B: tl.constexpr,
    ):
        pid = tl.program_id(0)
        rows = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
        row_ok = rows < n_rows
        xa, xb = load_rows(X_ptr, rows, row_ok, stride_x, dim, BLOCK_A, BLOCK_B)
        if NORMALIZE_IN:
            xa, xb = unit_rows(xa, xb, True, SCALED_IN)
        shift_a, shift_b = load_vector(SHIFT_ptr, dim, BLOCK_A, BLOCK_B)
        va = xa + shift_a[None, :]
        vb = xb + shift_b[None, :]
        if NOISE:
            ca = tl.arange(0, BLOCK_A)
            cb = BLOCK_A + tl.arange(0, BLOCK_B)
            keys = row_keys(seed_key, row_offset + rows)
            # Lanes past D must stay 0 for the norm.
            va += tl.where((ca < dim)[None, :], sigma * gaussian_noise(keys, ca), 0.0)
            vb += tl.where((cb < dim)[None, :], sigma * gaussian_noise(keys, cb), 0.0)
        if NORMALIZE_OUT:
            va, vb = unit_rows(va, vb, True, SCALED_OUT)
        store_rows(OUT_ptr, rows, row_ok, dim, dim, va, vb, BLOCK_A, BLOCK_B)


def _check(op: str, x: torch.Tensor, shift: torch.Tensor, row_offset: int, out_dtype: torch.dtype) -> None:
    check_out_dtype(op, out_dtype)
    check_vector(op, "shift", shift, x.shape[1])
    if row_offset < 0:
        raise ValueError(f"{op}: row_offset={row_offset} must be ≥ 0")


def shift_rows_triton(
    x: torch.Tensor,
    shift: torch.Tensor,
    *,
    normalize_in: bool,
    normalize_out: bool,
    sigma: float = 0.0,
    seed: int = 0,
    row_offset: int = 0,
    out_dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The Triton kernel; x on CUDA (or CPU under TRITON_INTERPRET=1), row-contiguous."""
    check_rows("shift_rows_triton", x=x)
    interpreter_or_cuda("shift_rows_triton", x)
    _check("shift_rows_triton", x, shift, row_offset, out_dtype)
    n, d = x.shape
    out = prepare_out("shift_rows_triton", out, n, d, out_dtype, x.device)
    if n == 0:
        return out
    block_m, block_a, block_b, warps = row_blocks(d)
    # Unit input rows plus a modest shift and noise stay small; raw rows may be anything.
    small = normalize_in or not needs_scaling(x.dtype)
    scaled_out = not (small and float(shift.abs().max()) <= BOUNDED_PARAMETER and abs(sigma) <= BOUNDED_PARAMETER)
    _shift_rows_kernel[(triton.cdiv(n, block_m),)](
        x, shift.to(x.device, torch.float32).contiguous(), out, n, d, x.stride(0),
        row_offset, seed_key(seed), float(sigma),
        NORMALIZE_IN=normalize_in, NORMALIZE_OUT=normalize_out, NOISE=sigma != 0.0,
        SCALED_IN=needs_scaling(x.dtype), SCALED_OUT=scaled_out,
        BLOCK_M=block_m, BLOCK_A=block_a, BLOCK_B=block_b, num_warps=warps,
    )  # fmt: skip
    return out


def shift_rows_torch(
    x: torch.Tensor,
    shift: torch.Tensor,
    *,
    normalize_in: bool,
    normalize_out: bool,
    sigma: float = 0.0,
    seed: int = 0,
    row_offset: int = 0,
    out_dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The fast torch path: per cached tile, every step in place on one fp32 buffer."""
    check_rows("shift_rows", x=x, require_contiguous=False)
    _check("shift_rows", x, shift, row_offset, out_dtype)
    n, d = x.shape
    out = prepare_out("shift_rows", out, n, d, out_dtype, x.device)
    if x.device.type != "cpu":
        return out.copy_(shift_rows_ref(
            x, shift, normalize_in=normalize_in, normalize_out=normalize_out, sigma=sigma, seed=seed,
            row_offset=row_offset, out_dtype=out_dtype,
        ))  # fmt: skip
    b = shift.to("cpu", torch.float64).float()

    def work(first: int, last: int) -> None:
        buffers = TileBuffers(d)
        noise = NoiseScratch(buffers.rows, d) if sigma != 0.0 else None
        eps = torch.empty(buffers.rows, d) if sigma != 0.0 else None
        for start, stop in tiles(last, d, first=first):
            v = buffers.load(x[start:stop])
            if normalize_in:
                unit_rows_(v)
            v += b
            if noise is not None and eps is not None:
                v.add_(gaussian_noise_into(eps[: stop - start], seed, row_offset + start, noise), alpha=sigma)
            if normalize_out:
                unit_rows_(v)
            out[start:stop].copy_(v)

    map_row_parts(n, d, work)
    return out


def shift_rows(
    x: torch.Tensor,
    shift: torch.Tensor,
    *,
    normalize_in: bool,
    normalize_out: bool,
    sigma: float = 0.0,
    seed: int = 0,
    row_offset: int = 0,
    out_dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x: (n, D) fp16/bf16/fp32, shift: (D,) → (n, D) out_dtype: v(w(x) + shift + σ·ε).

    ε for global row `row_offset + i` is the same whatever the chunking and on every backend.
    out: optional preallocated contiguous (n, D) buffer of `out_dtype`, reused across chunks.
    """
    kwargs = dict(
        normalize_in=normalize_in, normalize_out=normalize_out, sigma=float(sigma), seed=int(seed),
        row_offset=int(row_offset), out_dtype=out_dtype,
    )  # fmt: skip
    backend = select_backend(x)
    if backend == "triton":
        return shift_rows_triton(kernel_rows(x), shift, out=out, **kwargs)  # type: ignore[arg-type]
    if backend == "ref":
        check_rows("shift_rows_ref", x=x, require_contiguous=False)
        _check("shift_rows_ref", x, shift, int(row_offset), out_dtype)
        result = shift_rows_ref(x, shift, **kwargs)  # type: ignore[arg-type]
        return result if out is None else prepare_out("shift_rows", out, *x.shape, out_dtype, x.device).copy_(result)
    return shift_rows_torch(x, shift, out=out, **kwargs)  # type: ignore[arg-type]


__all__ = ["shift_rows", "shift_rows_ref", "shift_rows_torch", "shift_rows_triton"]
