"""The closed-form Gaussian optimal-transport map between two covariances (for realign-ot).

Between N(μ_t, Σ_t) and N(μ_i, Σ_i) the W2-optimal map is x ↦ μ_i + A(x − μ_t) with
A = Σ_t^{-1/2} (Σ_t^{1/2} Σ_i Σ_t^{1/2})^{1/2} Σ_t^{-1/2}, symmetric positive semi-definite, so
A Σ_t A = Σ_i exactly. Computed once per fit, in float64, from D×D matrices: never per row.
"""

from __future__ import annotations

import torch

from revision.errors import UserError


def shrink(cov: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 − α)Σ + α·(tr Σ / D)·I: pulls the spectrum toward its mean so square roots stay conditioned."""
    d = cov.shape[0]
    if alpha == 0.0:
        return cov.clone()
    out = cov * (1.0 - alpha)
    out.diagonal().add_(alpha * float(torch.trace(cov)) / d)
    return out


def _sym_power(cov: torch.Tensor, power: float, *, rcond: float = 1e-12) -> torch.Tensor:
    """Σ^power of a symmetric PSD matrix via eigh; eigenvalues below rcond·max are treated as zero."""
    sym = (cov + cov.T) * 0.5
    vals, vecs = torch.linalg.eigh(sym)
    floor = rcond * float(vals.max().clamp(min=0.0))
    keep = vals > floor
    powered = torch.where(keep, vals.clamp(min=floor).pow(power), torch.zeros_like(vals))
    return (vecs * powered) @ vecs.T


def gaussian_ot_matrix(cov_t: torch.Tensor, cov_i: torch.Tensor) -> torch.Tensor:
    """A (D, D) float64 with A Σ_t A = Σ_i (on the support of Σ_t); inputs are (D, D) covariances."""
    if cov_t.shape != cov_i.shape or cov_t.dim() != 2 or cov_t.shape[0] != cov_t.shape[1]:
        raise ValueError(f"gaussian_ot_matrix: covariances must be matching (D, D), got {cov_t.shape}, {cov_i.shape}")
    ct = cov_t.to(torch.float64)
    ci = cov_i.to(torch.float64)
    if not (torch.isfinite(ct).all() and torch.isfinite(ci).all()):
        raise UserError("realign-ot: a covariance matrix is not finite (non-finite input rows?)")
    root = _sym_power(ct, 0.5)
    inv_root = _sym_power(ct, -0.5)
    middle = _sym_power(root @ ci @ root, 0.5)
    a = inv_root @ middle @ inv_root
    return (a + a.T) * 0.5
