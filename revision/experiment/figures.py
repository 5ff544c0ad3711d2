"""The experiment report's pictures, drawn with matplotlib (Agg) through `revision.palette`.

Each `draw_*` returns a matplotlib Figure (the tests inspect it); the report turns it into PNG
bytes with `revision.palette.png_bytes`. Inputs are the report's prepared rows: summary records
(one per method × noise, as in results.json's "summary") and the gap metrics chosen to plot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from revision.palette import grid, method_colour, style

_ATTRIBUTE_ORDER = ("count", "size", "colour", "shape", "position")


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties get their average rank); None with fewer than three
    points or when either side is constant, where it is undefined."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} x values but {len(y)} y values")
    if len(x) < 3:
        return None

    def ranks(v: Sequence[float]) -> np.ndarray:
        a = np.asarray(v, dtype=float)
        order = np.argsort(a, kind="mergesort")
        r = np.empty(len(a))
        r[order] = np.arange(1, len(a) + 1)
        for value in np.unique(a):  # ties: the mean of the ranks they span
            tied = a == value
            r[tied] = r[tied].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _noise_label(noise: float) -> str:
    return "no noise" if noise == 0 else f"noise σ = {noise:g}"


def draw_accuracy_vs_gap(
    summary: Sequence[Mapping[str, Any]], gap: Mapping[str, Mapping[str, Any]], metrics: Sequence[tuple[str, str]]
) -> Any:
    """One panel per gap metric: x = the metric of each method's aligned text, y = exact match
    (mean ± std over seeds), a point per method × noise in the method's colour (filled: no noise,
    hollow: with noise), Spearman's ρ per noise level in the title; a row with no gap metrics (the
    paired upper bound) is a dashed line at its exact match."""
    noises = sorted({float(r["noise"]) for r in summary})
    markers = ["o", "s", "D", "^"]
    with style():
        fig, axes = grid(len(metrics), panel=(4.0, 3.4))
        for ax, (key, label) in zip(axes, metrics, strict=True):
            rhos = []
            for j, noise in enumerate(noises):
                pts = [(gap[r["method"]][key], r) for r in summary
                       if float(r["noise"]) == noise and _scalar(gap.get(r["method"], {}).get(key))]  # fmt: skip
                for x, r in pts:
                    colour = method_colour(r["method"])
                    ax.errorbar(x, r["exact_match_mean"], yerr=r.get("exact_match_std") or 0.0, fmt=markers[j % 4],
                                color=colour, markerfacecolor=colour if noise == 0 else "white",
                                markersize=7, capsize=3, linewidth=1.2)  # fmt: skip
                rho = spearman([p[0] for p in pts], [p[1]["exact_match_mean"] for p in pts])
                rhos.append(("—" if rho is None else f"{rho:+.2f}") + ("" if len(noises) == 1 else f" ({noise:g})"))
            # Rows without a gap entry (paired image embeddings: no text to align) as reference lines.
            for r in summary:
                if float(r["noise"]) == noises[0] and not _scalar(gap.get(r["method"], {}).get(key)):
                    ax.axhline(r["exact_match_mean"], color=method_colour(r["method"]), linestyle="--", linewidth=1)
            ax.set_title(f"{label}\nSpearman ρ = {', '.join(rhos)}")
            ax.set_xlabel("value for the method's aligned text")
            ax.set_ylabel("exact match")
            ax.margins(x=0.12, y=0.1)
        legend = [(m, method_colour(m)) for m in dict.fromkeys(r["method"] for r in summary)]
        handles = [_marker_handle(colour, "o", True, name) for name, colour in legend] + [
            _marker_handle("#555555", markers[j % 4], n == 0, _noise_label(n)) for j, n in enumerate(noises)
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), frameon=False)
    return fig


def _scalar(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value))


def _marker_handle(colour: str, marker: str, filled: bool, label: str) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], color=colour, marker=marker, linestyle="none", markersize=7,
                  markerfacecolor=colour if filled else "white", label=label)  # fmt: skip


def draw_per_attribute(runs: Sequence[Mapping[str, Any]]) -> Any:
    """Per-attribute accuracy, grouped bars (an attribute per group, a bar per method in its colour,
    mean ± std over seeds), one panel per noise level."""
    with_attr = [r for r in runs if isinstance(r.get("per_attribute"), Mapping)]
    noises = sorted({float(r.get("noise", 0.0)) for r in with_attr})
    methods = list(dict.fromkeys(r["method"] for r in with_attr))
    seen = {a for r in with_attr for a in r["per_attribute"]}
    attributes = [a for a in _ATTRIBUTE_ORDER if a in seen] + sorted(seen - set(_ATTRIBUTE_ORDER))
    with style():
        fig, axes = grid(len(noises), panel=(12.0, 3.8), cols=1)
        width = 0.8 / max(len(methods), 1)
        for ax, noise in zip(axes, noises, strict=True):
            for j, method in enumerate(methods):
                mine = [r for r in with_attr if r["method"] == method and float(r.get("noise", 0.0)) == noise]
                if not mine:
                    continue
                values = [[float(r["per_attribute"][a]) for r in mine if a in r["per_attribute"]] for a in attributes]
                means = [float(np.mean(v)) if v else 0.0 for v in values]
                stds = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in values]
                x = np.arange(len(attributes)) + (j - (len(methods) - 1) / 2) * width
                ax.bar(x, means, width=width, yerr=stds, capsize=2, color=method_colour(method), label=method,
                       error_kw={"linewidth": 0.8})  # fmt: skip
            ax.set_xticks(np.arange(len(attributes)), attributes)
            ax.set_ylim(0, 1.05)
            ax.set_ylabel("accuracy")
            ax.set_title(f"Per-attribute accuracy, {_noise_label(noise)}")
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return fig
