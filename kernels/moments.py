"""Streaming moments of row blocks: count, mean, M2 (and optionally the co-moment), merged with Chan.

Every pass over a store hands each chunk's `Moments` to `merge_moments`; the merge is exact
algebra (Chan, Golub & LeVeque's pairwise update) in float64, so statistics over any chunking
agree to rounding. The merge is associative up to rounding; merge partials in a fixed order
when bitwise reproducibility matters.

Producers that keep the column sums (`total`) make merged means a single rounding of a float64 sum,
which is exact for rows of like magnitude until ~2^25 rows: the mean then does not depend on the
chunking at all, and neither does its float32 rounding (which the reference applies, and which
turns a 1e-16 difference into a float32 ulp when the exact mean lies on a float32 tie).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, kw_only=False)
class Moments:
    """Moments of `n` rows of width D.

    n: number of rows; mean: f64 (D,); m2: f64 (D,) = Σ (x − mean)² per column;
    comoment: f64 (D, D) = Σ (x − mean)ᵀ(x − mean), or None when not accumulated;
    total: f64 (D,) = Σ x per column when the producer kept it, else None (merges then take the
    mean from the totals; see the module docstring).
    """

    n: int
    mean: torch.Tensor
    m2: torch.Tensor
    comoment: torch.Tensor | None = None
    total: torch.Tensor | None = None

    @staticmethod
    def empty(dim: int, *, second_moment: bool = False, device: torch.device | str = "cpu") -> Moments:
        """The neutral element of `merge_moments` (zero rows)."""
        zeros = torch.zeros(dim, dtype=torch.float64, device=device)
        como = torch.zeros(dim, dim, dtype=torch.float64, device=device) if second_moment else None
        return Moments(0, zeros, zeros.clone(), como, zeros.clone())

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def trace(self) -> float:
        """Total variance (population form): mean over rows of ||x − mean||²."""
        if self.n == 0:
            raise ValueError("Moments.trace: no rows")
        return float(self.m2.sum().item()) / self.n

    @property
    def var(self) -> torch.Tensor:
        """Per-column population variance, f64 (D,)."""
        if self.n == 0:
            raise ValueError("Moments.var: no rows")
        return self.m2 / self.n

    @property
    def covariance(self) -> torch.Tensor:
        """Population covariance f64 (D, D); needs the co-moment."""
        if self.comoment is None:
            raise ValueError("Moments.covariance: co-moment was not accumulated (second_moment=False)")
        if self.n == 0:
            raise ValueError("Moments.covariance: no rows")
        return self.comoment / self.n

    def to(self, device: torch.device | str) -> Moments:
        como = None if self.comoment is None else self.comoment.to(device)
        total = None if self.total is None else self.total.to(device)
        return Moments(self.n, self.mean.to(device), self.m2.to(device), como, total)


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Chan's pairwise merge of two disjoint row sets' moments, in float64.

    The co-moment is merged only when both sides carry one (else the result has none); likewise the
    column totals, and with them the mean is the merged total over the count.
    """
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"merge_moments: dims differ ({tuple(a.mean.shape)} vs {tuple(b.mean.shape)})")
    # Zero rows add nothing: the other side stands as it is.
    if b.n == 0:
        return a
    if a.n == 0:
        return b
    n = a.n + b.n
    mean_a = a.mean.to(torch.float64)
    delta = b.mean.to(device=mean_a.device, dtype=torch.float64) - mean_a
    frac_b = b.n / n
    # n_a n_b / n computed as n_a * (n_b / n) keeps it in range for 10^10-row counts.
    weight = a.n * frac_b
    total = None
    if a.total is not None and b.total is not None:
        total = a.total.to(torch.float64) + b.total.to(mean_a.device, torch.float64)
        mean = total / n
    else:
        mean = mean_a + delta * frac_b
    m2 = a.m2.to(torch.float64) + b.m2.to(mean_a.device, torch.float64) + delta * delta * weight
    como = None
    if a.comoment is not None and b.comoment is not None:
        como = a.comoment + b.comoment.to(mean_a.device) + torch.outer(delta, delta) * weight
    return Moments(n, mean, m2, como, total)
