"""The ReAlign projection h = u(mu_i + s · (u(y) − mu_t)), shared by realign_centroid and realign_apply.

`scale` is a float s (ReAlign) or a (D, D) float64 matrix A (realign-ot, h = u(mu_i + (u(y) − mu_t) @ A)).
Holds the float64 reference, the tile step of the fast torch path and the Triton device function.
"""

from __future__ import annotations

import torch

from revision.kernels.backend import triton_available
from revision.kernels.launch import check_vector
from revision.kernels.rows_cpu import TileBuffers, inverse_norms_
from revision.kernels.unit_rule import unit_rows_ref

if triton_available():
    import triton.language as tl

    from revision.kernels.triton_rows import unit_rows

Scale = float | torch.Tensor

# Unit rows moved by parameters up to this size stay far below fp32 overflow in the kernels.
_BOUNDED = 1e6


def check_scale(op: str, scale: Scale, dim: int) -> float | torch.Tensor:
    """A python float, a 0-d tensor (→ float) or a (D, D) matrix; anything else is a ValueError."""
    if isinstance(scale, torch.Tensor):
        if scale.dim() == 0:
            return float(scale.item())
        if tuple(scale.shape) != (dim, dim):
            raise ValueError(f"{op}: scale matrix must be ({dim}, {dim}), got {tuple(scale.shape)}")
        if not scale.is_floating_point():
            raise ValueError(f"{op}: scale matrix must be floating point, got {scale.dtype}")
        return scale
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ValueError(f"{op}: scale must be a float or a (D, D) tensor, got {type(scale).__name__}")
    return float(scale)


def check_means(op: str, dim: int, **vectors: torch.Tensor) -> None:
    for name, v in vectors.items():
        check_vector(op, name, v, dim)


def bounded(scale: float, *vectors: torch.Tensor) -> bool:
    """True when the projection's intermediate rows cannot approach fp32 overflow."""
    return abs(scale) <= _BOUNDED and all(float(v.abs().max()) <= _BOUNDED for v in vectors if v.numel())


def realign_project_ref(y: torch.Tensor, mu_t: torch.Tensor, mu_i: torch.Tensor, scale: Scale) -> torch.Tensor:
    """y: (n, D) → h: (n, D) float64 unit rows, all arithmetic in float64."""
    centred = unit_rows_ref(y) - mu_t.to(y.device, torch.float64)
    if isinstance(scale, torch.Tensor) and scale.dim() == 2:
        moved = centred @ scale.to(y.device, torch.float64)
    else:
        moved = centred * float(scale)
    return unit_rows_ref(mu_i.to(y.device, torch.float64) + moved)


def projection_offset(mu_t: torch.Tensor, mu_i: torch.Tensor, scale: float) -> torch.Tensor:
    """mu_i − scale · mu_t in float64, rounded to fp32 once: the constant of the CPU paths' per-row
    h = offset + (scale / ||y||) · y (the torch path and the C kernels share it)."""
    return (mu_i.to("cpu", torch.float64) - scale * mu_t.to("cpu", torch.float64)).float()


class ProjectionTorch:
    """The fast torch step for one (mu_t, mu_i, scale): fp32 tile in → h (unscaled) and its row factors."""

    def __init__(self, mu_t: torch.Tensor, mu_i: torch.Tensor, scale: float | torch.Tensor) -> None:
        self.matrix: torch.Tensor | None = None
        if isinstance(scale, torch.Tensor):
            # realign-ot: h = (mu_i − mu_t @ A) + u(y) @ A in float64 (see __call__).
            self.matrix = scale.to("cpu", torch.float64).contiguous()
            self.offset = mu_i.to("cpu", torch.float64) - mu_t.to("cpu", torch.float64) @ self.matrix
            self.scale = 1.0
        else:
            self.scale = float(scale)
            self.offset = projection_offset(mu_t, mu_i, self.scale)

    def buffers(self, dim: int, *, f64: bool = False) -> TileBuffers:
        """Scratch tiles for one thread's share of the rows (the matrix product needs float64 tiles)."""
        matrix = self.matrix is not None
        return TileBuffers(dim, f64=f64 or matrix, second=matrix)

    def __call__(self, buffers: TileBuffers, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src: (t, D) raw input rows → (h, r2): unit projected rows are h * r2[:, None].

        `h` is a view of the scratch tiles: fp32 for a scalar scale, float64 for a matrix. A BLAS
        product's rounding depends on where a row sits in the matrix (blocking, vector lanes),
        so an fp32 product would make rows depend on the chunking; in float64 the differences
        stay ~1e-16, far below the float64 sums' tolerance and the fp32 output's resolution.
        """
        tile = buffers.load(src)
        r = inverse_norms_(tile)
        if self.matrix is None:
            coef = (r * self.scale)[:, None]
            return (h := torch.addcmul(self.offset, tile, coef, out=tile)), inverse_norms_(h)
        assert buffers.f64 is not None and buffers.second is not None
        t = src.shape[0]
        u64 = buffers.f64[:t]
        u64.copy_(tile)
        u64.mul_(r[:, None])
        h = torch.addmm(self.offset, u64, self.matrix, out=buffers.second[:t])
        return h, inverse_norms_(h)


if triton_available():
    import triton

    @triton.jit
    def project_rows(xa, xb, mu_ta, mu_tb, mu_ia, mu_ib, s, SCALED_IN: tl.constexpr, SCALED_MID: tl.constexpr):
        """Raw rows as (xa, xb) fp32 column tiles; means likewise, 0 past D → unit h rows (ha, hb)."""
        ya, yb = unit_rows(xa, xb, True, SCALED_IN)
        ha = mu_ia[None, :] + s * (ya - mu_ta[None, :])
        hb = mu_ib[None, :] + s * (yb - mu_tb[None, :])
        return unit_rows(ha, hb, False, SCALED_MID)
