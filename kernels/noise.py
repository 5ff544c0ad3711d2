"""Counter-based Gaussian noise for the C3 and CapDec baselines, reproducible whatever the chunking.

Each element's draw is a pure function of (seed, global row index, column): a hashed row key
and two hashed column keys, xor-ed and hashed once more with a 32-bit xor-shift-multiply
finaliser, give two 24-bit uniforms; Box-Muller turns them into one N(0, 1) value. The torch
code here and `triton_rows.gaussian_noise` compute the same hash bits; the floats agree to
float32 rounding of log/cos/sqrt.

Multipliers are below 2**31 so that products of 32-bit values fit in int64 without overflow
(torch has no unsigned 32-bit shifts on CPU).
"""

from __future__ import annotations

import torch

_MASK = 0xFFFFFFFF
_M1 = 0x7FEB352D
_M2 = 0x5BD1E995
_SEED_SALT = 0x9E3779B9
_COL_SALT = 0x2545F491


def _mix32_int(x: int) -> int:
    x &= _MASK
    x ^= x >> 16
    x = (x * _M1) & _MASK
    x ^= x >> 15
    x = (x * _M2) & _MASK
    x ^= x >> 16
    return x


def mix32(x: torch.Tensor) -> torch.Tensor:
    """The 32-bit hash on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * _M1) & _MASK
    x = x ^ (x >> 15)
    x = (x * _M2) & _MASK
    return x ^ (x >> 16)


def seed_key(seed: int) -> int:
    """The 32-bit key of a seed (any Python int; reduced mod 2**64 first)."""
    seed &= (1 << 64) - 1
    return _mix32_int(_mix32_int((seed & _MASK) ^ _SEED_SALT) ^ (seed >> 32))


def row_keys(seed: int, row_offset: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """int64 (n,) keys of global rows row_offset … row_offset + n − 1."""
    if row_offset < 0:
        raise ValueError(f"row_offset={row_offset} must be ≥ 0")
    rows = torch.arange(row_offset, row_offset + n, dtype=torch.int64, device=device)
    k = torch.full_like(rows, seed_key(seed))
    return mix32(mix32(k ^ (rows & _MASK)) ^ (rows >> 32))


def gaussian_noise_ref(
    seed: int, row_offset: int, n: int, dim: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """float32 (n, dim) standard normal noise for global rows row_offset … row_offset + n − 1."""
    keys = row_keys(seed, row_offset, n, device)[:, None]
    c = torch.arange(dim, dtype=torch.int64, device=device) * 2
    cm1 = mix32(c ^ _COL_SALT)[None, :]
    cm2 = mix32((c + 1) ^ _COL_SALT)[None, :]
    v1 = mix32(keys ^ cm1)
    v2 = mix32(keys ^ cm2)
    scale = 1.0 / 16777216.0
    u1 = ((v1 >> 8).to(torch.float32) + 0.5) * scale
    u2 = ((v2 >> 8).to(torch.float32) + 0.5) * scale
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(6.283185307179586 * u2)


class NoiseScratch:
    """Reused int64/fp32 scratch tiles for `gaussian_noise_into` (large temporaries page-fault on
    every allocation, which costs more than the hashing itself)."""

    def __init__(self, rows: int, dim: int) -> None:
        self.a = torch.empty(rows, dim, dtype=torch.int64)
        self.b = torch.empty(rows, dim, dtype=torch.int64)
        self.f = torch.empty(rows, dim, dtype=torch.float32)
        c = torch.arange(dim, dtype=torch.int64) * 2
        self.cm1 = mix32(c ^ _COL_SALT)[None, :]
        self.cm2 = mix32((c + 1) ^ _COL_SALT)[None, :]


def _mix32_(x: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """`mix32` in place on x, with tmp as scratch of the same shape."""
    for shift, mult in ((16, _M1), (15, _M2), (16, 0)):
        torch.bitwise_right_shift(x, shift, out=tmp)
        x.bitwise_xor_(tmp)
        if mult:
            x.mul_(mult).bitwise_and_(_MASK)
    return x


def gaussian_noise_into(out: torch.Tensor, seed: int, row_offset: int, scratch: NoiseScratch) -> torch.Tensor:
    """The values of `gaussian_noise_ref(seed, row_offset, t, D)` written into out: fp32 (t, D), CPU.

    Bitwise the same as the reference (same integer ops and the same float ops in the same order).
    """
    t, d = out.shape
    keys = row_keys(seed, row_offset, t)[:, None]
    a, b, f = scratch.a[:t], scratch.b[:t], scratch.f[:t]
    scale = 1.0 / 16777216.0
    torch.bitwise_xor(keys, scratch.cm1, out=a)
    _mix32_(a, b).bitwise_right_shift_(8)
    out.copy_(a)
    out.add_(0.5).mul_(scale).log_().mul_(-2.0).sqrt_()
    torch.bitwise_xor(keys, scratch.cm2, out=a)
    _mix32_(a, b).bitwise_right_shift_(8)
    f.copy_(a)
    f.add_(0.5).mul_(scale).mul_(6.283185307179586).cos_()
    return out.mul_(f)
