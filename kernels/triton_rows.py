"""Triton device functions shared by the kernels: row normalisation, block sizes and counter noise.

Only imported when Triton is; each kernel file guards its own `import triton`. The arithmetic
here mirrors the torch paths in `rows_cpu.py` and `noise.py` (same rule, same hash), so kernel
and torch path agree to float32 rounding, and the noise bits are identical.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from revision.kernels.backend import MAX_TRITON_DIM

# Above this row width the whole row no longer fits one program's registers.
MAX_DIM = MAX_TRITON_DIM


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer")
    return int(value)


def row_blocks(dim: int, *, elems: int = 8192) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_A, BLOCK_B, num_warps) for kernels that hold BLOCK_M whole rows in registers.

    A row is held as two power-of-two column tiles, BLOCK_A (the largest power of two ≤ D)
    and BLOCK_B (the rest, rounded up): 1280 = 1024 + 256 wastes no lanes where one tile of
    2048 would waste 37%. `elems` is the default register tile (rows × lanes);
    REVISION_TRITON_ELEMS and REVISION_TRITON_WARPS override it for tuning on a new GPU
    (bench_kernels.py --sweep). The choice depends on D only, never on the row count, so
    per-row results do not depend on it.
    """
    if dim > MAX_DIM:
        raise ValueError(f"dim={dim} exceeds the kernels' maximum row width {MAX_DIM}")
    elems = _env_int("REVISION_TRITON_ELEMS") or elems
    block_a = max(16, 1 << (max(dim, 1).bit_length() - 1))
    block_b = triton.next_power_of_2(dim - block_a) if dim > block_a else 1
    lanes = block_a + block_b if dim > block_a else block_a
    block_m = max(1, min(128, triton.next_power_of_2(elems // lanes + 1) // 2))
    warps = 4 if block_m * lanes <= 4096 else 8
    if lanes >= 16384:
        warps = 16
    return block_m, block_a, block_b, _env_int("REVISION_TRITON_WARPS") or warps


def reduction_grid(n: int, block_m: int, device: torch.device) -> tuple[int, int]:
    """(programs, rows per program) for kernels that reduce rows into per-program partials.

    A few programs per SM keep HBM busy (REVISION_TRITON_PROGRAMS_PER_SM, default 4); each
    program's row range is a whole number of blocks. Under the interpreter every program
    instance costs about a millisecond, so use few.
    """
    if device.type == "cuda":
        per_sm = _env_int("REVISION_TRITON_PROGRAMS_PER_SM") or 4
        slots = per_sm * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        slots = 4
    programs = max(1, min(triton.cdiv(n, block_m), slots))
    per_program = triton.cdiv(triton.cdiv(n, programs), block_m) * block_m
    return triton.cdiv(n, per_program), per_program


@triton.jit
def load_rows(ptr, rows, row_ok, stride, dim, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """Rows `rows` (BLOCK_M,) int64 of a (n, dim) matrix → (xa, xb) fp32, masked lanes 0.

    Upcast right after the load: all arithmetic is fp32 (the interpreter mishandles bf16 math).
    """
    ca = tl.arange(0, BLOCK_A)
    cb = BLOCK_A + tl.arange(0, BLOCK_B)
    base = ptr + rows[:, None] * stride
    xa = tl.load(base + ca[None, :], mask=row_ok[:, None] & (ca < dim)[None, :], other=0.0).to(tl.float32)
    xb = tl.load(base + cb[None, :], mask=row_ok[:, None] & (cb < dim)[None, :], other=0.0).to(tl.float32)
    return xa, xb


@triton.jit
def store_rows(ptr, rows, row_ok, stride, dim, ya, yb, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """Store (ya, yb) into rows `rows` of a (n, dim) matrix, one cast to its dtype."""
    ca = tl.arange(0, BLOCK_A)
    cb = BLOCK_A + tl.arange(0, BLOCK_B)
    base = ptr + rows[:, None] * stride
    ty = ptr.dtype.element_ty
    tl.store(base + ca[None, :], ya.to(ty), mask=row_ok[:, None] & (ca < dim)[None, :])
    tl.store(base + cb[None, :], yb.to(ty), mask=row_ok[:, None] & (cb < dim)[None, :])


@triton.jit
def load_vector(ptr, dim, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """A (dim,) fp32 vector → (va, vb), 0 past dim."""
    ca = tl.arange(0, BLOCK_A)
    cb = BLOCK_A + tl.arange(0, BLOCK_B)
    return tl.load(ptr + ca, mask=ca < dim, other=0.0), tl.load(ptr + cb, mask=cb < dim, other=0.0)


@triton.jit
def store_vector(ptr, dim, va, vb, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    ca = tl.arange(0, BLOCK_A)
    cb = BLOCK_A + tl.arange(0, BLOCK_B)
    tl.store(ptr + ca, va, mask=ca < dim)
    tl.store(ptr + cb, vb, mask=cb < dim)


@triton.jit
def _clean(x):
    # NaN fails every comparison, so one test clears NaN and ±Inf.
    return tl.where(tl.abs(x) < float("inf"), x, 0.0)


@triton.jit
def unit_rows(xa, xb, CLEAN: tl.constexpr, SCALED: tl.constexpr):
    """Rows held as (xa, xb) fp32 tiles, masked lanes 0 → the same rows scaled to unit L2 norm.

    The reference's rule: NaN/±Inf → 0 (when CLEAN), divide by the row's max-abs before the
    norm so nothing overflows (when SCALED), rows whose norm is below 1e-10 are left as they
    are. SCALED may be off only where |x| < 1e18 is known (fp16 inputs, bounded projections):
    then the plain sum of squares neither overflows nor loses a row above the floor.
    """
    if CLEAN:
        xa = _clean(xa)
        xb = _clean(xb)
    if SCALED:
        m = tl.maximum(tl.max(tl.abs(xa), axis=1), tl.max(tl.abs(xb), axis=1))
        # Below 1e-30 the row's norm is under the 1e-10 floor for any width, so it is kept as
        # is; the cut also keeps 1/m finite (a subnormal max-abs would overflow it).
        safe = tl.where(m > 1e-30, m, 1.0)
        inv = 1.0 / safe
        za = xa * inv[:, None]
        zb = xb * inv[:, None]
        ss = tl.sum(za * za, axis=1) + tl.sum(zb * zb, axis=1)
        ss_safe = tl.where(ss > 0.0, ss, 1.0)
        keep = (tl.sqrt(ss_safe) * safe < 1e-10)[:, None]
        r = (1.0 / tl.sqrt(ss_safe))[:, None]
        ya = tl.where(keep, xa, za * r)
        yb = tl.where(keep, xb, zb * r)
    else:
        ss = tl.sum(xa * xa, axis=1) + tl.sum(xb * xb, axis=1)
        keep1 = ss < 1e-20
        keep = keep1[:, None]
        r = (1.0 / tl.sqrt(tl.where(keep1, 1.0, ss)))[:, None]
        ya = tl.where(keep, xa, xa * r)
        yb = tl.where(keep, xb, xb * r)
    return ya, yb


def needs_scaling(dtype: torch.dtype) -> bool:
    """Rows of fp16 are below 65504 per element: their fp32 sum of squares cannot overflow."""
    return dtype != torch.float16


# Projections of unit rows by parameters up to this size stay far below fp32 overflow.
BOUNDED_PARAMETER = 1e6


@triton.jit
def mix32(x):
    """A 32-bit integer finaliser (xor-shift-multiply); x: uint32 tensor → uint32."""
    x ^= x >> 16
    x *= 0x7FEB352D
    x ^= x >> 15
    x *= 0x5BD1E995
    x ^= x >> 16
    return x


@triton.jit
def row_keys(seed_key, rows):
    """Per-row hash keys: seed_key (scalar, from `noise.seed_key`), rows (BLOCK_M,) int64 global rows."""
    lo = (rows & 0xFFFFFFFF).to(tl.uint32)
    hi = (rows >> 32).to(tl.uint32)
    # Through a tensor op, so a seed key that Triton specialised to a constant converts too.
    k = (lo * 0 + seed_key).to(tl.uint32)
    return mix32(mix32(k ^ lo) ^ hi)


@triton.jit
def gaussian_noise(row_keys, cols):
    """Standard normal draws keyed by (row key, column): row_keys (BLOCK_M,) uint32, cols (BLOCK_D,) int32.

    Matches `noise.gaussian_noise_ref`: two 24-bit uniforms per element from the counter hash,
    then Box-Muller.
    """
    c = cols.to(tl.uint32) * 2
    cm1 = mix32(c ^ 0x2545F491)
    cm2 = mix32((c + 1) ^ 0x2545F491)
    v1 = mix32(row_keys[:, None] ^ cm1[None, :])
    v2 = mix32(row_keys[:, None] ^ cm2[None, :])
    u1 = ((v1 >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)
    u2 = ((v2 >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)
    radius = tl.sqrt(-2.0 * tl.log(u1))
    return radius * tl.cos(6.283185307179586 * u2)
