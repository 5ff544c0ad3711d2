"""Collate-time ReAlign: apply frozen alignment stats to each batch of embeddings on the fly.

With this, an un-aligned text store feeds training directly, without writing an aligned copy: the
DataLoader worker gathers raw rows and maps them with `revision.kernels.realign_apply` (pass 3 of
ReAlign, `out = u(u(mu_i + s (u(y) - mu_t)) - mu_hat + mu_i)`), using stats fitted beforehand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# Accepted spellings of each statistic: ours, then the reference's `trace_stats.pkl` names.
_KEYS = {
    "mu_t": ("mu_t", "mu_txt", "mu_text"),
    "mu_i": ("mu_i", "mu_img", "mu_image"),
    "scale": ("scale", "s"),
    "mu_hat": ("mu_hat",),
}


def _get(stats: Any, names: tuple[str, ...]) -> Any:
    for name in names:
        if isinstance(stats, Mapping) and name in stats:
            return stats[name]
        if not isinstance(stats, Mapping) and hasattr(stats, name):
            return getattr(stats, name)
    raise KeyError(f"alignment stats lack {names[0]!r} (also looked for {', '.join(names[1:]) or 'nothing else'})")


@dataclass(frozen=True, eq=False)
class RealignTransform:
    """Callable (B, D) tensor → (B, D) aligned tensor of `out_dtype` (unit rows)."""

    mu_t: torch.Tensor
    """(D,) float64: mean of the normalised text rows."""
    mu_i: torch.Tensor
    """(D,) float64: mean of the normalised image rows."""
    scale: float | torch.Tensor
    """sqrt(T_i / T_t); or realign-ot's (D, D) transport matrix A."""
    mu_hat: torch.Tensor
    """(D,) float64: centroid of the projected text rows."""
    out_dtype: torch.dtype = torch.float32
    """dtype of the aligned rows."""

    def __post_init__(self) -> None:
        dims = {t.shape for t in (self.mu_t, self.mu_i, self.mu_hat)}
        if len(dims) != 1 or len(next(iter(dims))) != 1:
            raise ValueError(f"alignment stats: mu_t, mu_i, mu_hat must be (D,) vectors of one D, got {sorted(dims)}")
        if isinstance(self.scale, torch.Tensor):
            if self.scale.shape != (self.dim, self.dim) or not bool(torch.isfinite(self.scale).all()):
                raise ValueError(f"alignment stats: matrix must be a finite ({self.dim}, {self.dim}) tensor")
        elif not np.isfinite(self.scale) or self.scale <= 0:
            raise ValueError(f"alignment stats: scale must be a positive finite number, got {self.scale}")

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any] | Any, *, out_dtype: torch.dtype = torch.float32) -> RealignTransform:
        """From a dict or object holding mu_t, mu_i, scale, mu_hat: `revision.align`'s AlignStats, the
        JSON document of its stats file (vectors under "vectors"), or the reference's trace_stats.pkl
        dict (mu_txt, mu_img). A realign-ot `matrix` (D, D) takes the place of the scale."""
        method = stats.get("method") if isinstance(stats, Mapping) else getattr(stats, "method", None)
        if method is not None and method not in ("realign", "realign-ot"):
            raise ValueError(f"alignment stats are for method {method!r}; the collate-time transform applies ReAlign")
        if isinstance(stats, Mapping) and isinstance(stats.get("vectors"), Mapping):
            stats = {**stats, **stats["vectors"]}

        def vec(name: str) -> torch.Tensor:
            value = _get(stats, _KEYS[name])
            if value is None:
                raise KeyError(f"alignment stats have no {name} (was the centroid pass run?)")
            return torch.as_tensor(np.asarray(value, dtype=np.float64).ravel())

        matrix = stats.get("matrix") if isinstance(stats, Mapping) else getattr(stats, "matrix", None)
        scale: float | torch.Tensor
        if matrix is not None:
            scale = torch.as_tensor(np.asarray(matrix, dtype=np.float64))
        else:
            scale = float(_get(stats, _KEYS["scale"]))
        return cls(vec("mu_t"), vec("mu_i"), scale, vec("mu_hat"), out_dtype)

    @property
    def dim(self) -> int:
        return int(self.mu_t.shape[0])

    def __call__(self, embeds: torch.Tensor) -> torch.Tensor:
        from revision.kernels import realign_apply  # the kernels package chooses Triton or torch

        if embeds.ndim != 2 or embeds.shape[1] != self.dim:
            raise ValueError(f"ReAlign transform: embeddings of shape {tuple(embeds.shape)}, stats of dim {self.dim}")
        dev = embeds.device
        scale = self.scale.to(dev) if isinstance(self.scale, torch.Tensor) else self.scale
        return realign_apply(
            embeds, self.mu_t.to(dev), self.mu_i.to(dev), scale, self.mu_hat.to(dev), out_dtype=self.out_dtype
        )


@dataclass(frozen=True)
class FeatureNoise:
    """Train-time Gaussian noise on the features, as C3 and CapDec train on text: x + N(0, sigma² I).

    No renormalisation (CapDec adds the noise to the unit text embedding and feeds the sum as is).
    A row's noise depends only on (seed, epoch, row): the same whatever the batching, the workers or
    a resume, and fresh each epoch, so the model never sees one fixed perturbation of a row twice.
    """

    sigma: float
    seed: int
    epoch: int

    def __call__(self, embeds: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.sigma == 0:
            return embeds
        noise = torch.empty(embeds.shape, dtype=torch.float32)
        gen = torch.Generator()
        for k, row in enumerate(rows.tolist()):
            # One stream per (seed, epoch, row); 0x4E015E keeps it apart from the other seeded draws.
            stream = np.random.SeedSequence([self.seed, self.epoch, int(row), 0x4E015E])
            gen.manual_seed(int(stream.generate_state(1)[0]))
            noise[k] = torch.randn(embeds.shape[1], generator=gen)
        return (embeds.float() + self.sigma * noise.to(embeds.device)).to(embeds.dtype)
