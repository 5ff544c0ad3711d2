"""Closeness checks with a useful failure message: max and mean difference and where the worst one is.

Used by the kernel tests and benchmarks to hold a fast path to its reference.
"""

from __future__ import annotations

import torch

# (atol, rtol) for unit-row outputs stored in each dtype: one rounding of the output dominates.
OUTPUT_TOLERANCE: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (2e-6, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
    torch.float64: (1e-6, 1e-6),
}


def diff_report(actual: torch.Tensor, expected: torch.Tensor) -> str:
    """ "max |Δ| … at index …, mean |Δ| …" for two tensors of one shape (compared in float64)."""
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if a.shape != e.shape:
        return f"shapes differ: {tuple(a.shape)} vs {tuple(e.shape)}"
    if a.numel() == 0:
        return "empty"
    diff = (a - e).abs()
    diff = torch.where(torch.isnan(a) & torch.isnan(e), torch.zeros_like(diff), diff)
    diff = torch.nan_to_num(diff, nan=float("inf"))
    flat = int(torch.argmax(diff).item())
    where = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape))
    return (
        f"max |Δ| {diff.max().item():.3e} at {where} (actual {a.flatten()[flat].item():.8g}, "
        f"expected {e.flatten()[flat].item():.8g}), mean |Δ| {diff.mean().item():.3e}"
    )


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float, what: str = "") -> None:
    """Raise AssertionError (with `diff_report`) unless |actual − expected| ≤ atol + rtol·|expected|."""
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    ok = a.shape == e.shape and bool(
        torch.all(((a - e).abs() <= atol + rtol * e.abs()) | (torch.isnan(a) & torch.isnan(e)))
    )
    if not ok:
        raise AssertionError(f"{what or 'tensors'} differ (atol {atol:g}, rtol {rtol:g}): {diff_report(a, e)}")
