"""The method registry: each alignment method is a small transform over the same three passes.

Pass 1 gives every method the moments of the L2-normalised text (and image) rows; `derive` turns
them into the method's statistics; methods with a centroid correction sum their projected rows in
pass 2; `apply` maps one block of raw text rows to aligned rows in pass 3. Per-row results depend
only on the row and its global index, never on how the rows are blocked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from revision.align.config import AlignConfig
from revision.align.ot import gaussian_ot_matrix, shrink
from revision.align.stats import AlignStats
from revision.errors import UserError
from revision.kernels import (
    Moments,
    c3,
    capdec,
    gap_shift,
    mean_shift,
    normalize_rows,
    realign_apply,
    realign_centroid,
)

#: ReAlign's guard against a zero text trace: s = sqrt(T_i / (T_t + 1e-10)).
TRACE_EPS = 1e-10

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    return _TORCH_DTYPES[name]


def _as_used(mean: torch.Tensor, round_fp32: bool) -> torch.Tensor:
    """The centroid as the transform uses it: the reference rounds it to float32 once, then works in f64."""
    m = mean.to(torch.float64)
    return m.to(torch.float32).to(torch.float64) if round_fp32 else m.clone()


def _trace_about(m: Moments, centre: torch.Tensor) -> float:
    """mean ||x − centre||² from the moments, exactly: M2/n + ||mean − centre||²."""
    diff = m.mean.to(torch.float64) - centre
    return m.trace + float(diff @ diff)


@dataclass(frozen=True)
class Method:
    """One transform. Flags say which passes and statistics it needs."""

    name: str
    needs_image: bool
    covariance: bool
    centroid: bool
    unit_output: bool
    summary: str

    def derive(
        self, text: Moments, image: Moments | None, cfg: AlignConfig, *, where: str = "statistics"
    ) -> AlignStats:
        """Pass-1 moments → the method's statistics (without the pass-2 centroid)."""
        if self.needs_image and image is None:
            raise UserError(f"--method {self.name} needs the image store (--image)")
        if text.n == 0:
            raise UserError(f"{where}: no text rows")
        r32 = cfg.round_means_fp32
        mu_t = _as_used(text.mean, r32)
        trace_t = _trace_about(text, mu_t)
        mu_i = trace_i = scale = None
        matrix = None
        if image is not None and image.n > 0:
            mu_i = _as_used(image.mean, r32)
            trace_i = _trace_about(image, mu_i)
            scale = math.sqrt(trace_i / (trace_t + TRACE_EPS)) if trace_i >= 0 and trace_t >= 0 else math.nan
            if not math.isfinite(scale):
                raise UserError(f"{where}: scale s = sqrt(T_i / T_t) is not finite (T_t={trace_t}, T_i={trace_i})")
        if self.covariance:
            assert image is not None
            if text.comoment is None or image.comoment is None:
                raise UserError(f"{where}: --method realign-ot needs covariances; refit with --method realign-ot")
            matrix = gaussian_ot_matrix(shrink(text.covariance, cfg.shrinkage), shrink(image.covariance, cfg.shrinkage))
        return AlignStats(
            method=self.name,
            params=cfg.method_params(),
            dim=text.dim,
            text=text,
            image=image,
            mu_t=mu_t,
            mu_i=mu_i,
            trace_t=trace_t,
            trace_i=trace_i,
            scale=scale if self.name in ("realign", "realign-ot") else None,
            matrix=matrix,
        )

    def _projection(self, stats: AlignStats) -> tuple[torch.Tensor, torch.Tensor, float | torch.Tensor]:
        assert stats.mu_i is not None
        if self.covariance:
            assert stats.matrix is not None
            return stats.mu_t, stats.mu_i, stats.matrix
        assert stats.scale is not None
        return stats.mu_t, stats.mu_i, stats.scale

    def centroid_sums(self, block: torch.Tensor, stats: AlignStats) -> tuple[int, torch.Tensor]:
        """Pass 2 on one block: (rows, float64 column sums of the projected rows h)."""
        mu_t, mu_i, scale = self._projection(stats)
        return realign_centroid(block, mu_t, mu_i, scale)

    def apply(
        self,
        block: torch.Tensor,
        row0: int,
        stats: AlignStats,
        out_dtype: torch.dtype,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pass 3 on one block of raw text rows whose first row has global index `row0`.

        out: a contiguous (n, D) `out_dtype` buffer on the block's device to write into (reused
        across blocks, so a pass allocates no memory per block), or None for a new tensor.
        """
        if self.name in ("realign", "realign-ot"):
            mu_t, mu_i, scale = self._projection(stats)
            mu_hat = stats.mu_hat
            if mu_hat is None:
                raise UserError("these statistics have no centroid (pass 2 did not run); run `revision fit` again")
            return realign_apply(block, mu_t, mu_i, scale, mu_hat, out_dtype=out_dtype, out=out)
        # The baselines are the kernels' fused one-pass ops (same noise generator, keyed by global row).
        p = stats.params
        if self.name == "mean-shift":
            return mean_shift(block, stats.mu_t, normalize=True, out_dtype=out_dtype, out=out)
        if self.name == "gap-shift":
            assert stats.mu_i is not None
            delta = stats.mu_i - stats.mu_t
            norm = float(torch.linalg.vector_norm(delta))
            if norm == 0:  # no gap: nothing to move along
                return normalize_rows(block).to(out_dtype)
            lam = norm if p.get("gap_lambda") is None else float(p["gap_lambda"])
            return gap_shift(block, delta, lam, out_dtype=out_dtype, out=out)
        seed, sigma = int(p["seed"]), float(p["noise_std"])
        if self.name == "c3":
            return c3(block, stats.mu_t, seed=seed, row_offset=row0, sigma=sigma, out_dtype=out_dtype, out=out)
        return capdec(block, seed=seed, row_offset=row0, sigma=sigma, out_dtype=out_dtype, out=out)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("realign", True, False, True, True, "ReAlign: anchor + trace alignment, sphere, centroid fix"),
        Method("realign-ot", True, True, True, True, "full-covariance Gaussian OT map, sphere, centroid fix"),
        Method("mean-shift", False, False, False, False, "Unicorn: u(t) − μ_t (rows not renormalised)"),
        Method("c3", False, False, False, True, "C3: u(u(t) − μ_t + ε), ε ~ N(0, σ²I), seeded per row"),
        Method("capdec", False, False, False, True, "CapDec: u(u(t) + ε), ε ~ N(0, σ²I), seeded per row"),
        Method("gap-shift", True, False, False, True, "Mind the Gap: u(u(t) + λ·Δ/‖Δ‖), Δ = μ_i − μ_t"),
    )
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"--method: {name!r} is not one of {', '.join(METHODS)}") from None
