"""The diagnose report's pictures, drawn with matplotlib (Agg) and returned as PNG bytes.

Each function takes the metrics (as in metrics.json) and figure data keyed by entry ("raw",
"realign", ...) and states its sample size in the title or legend. Entries are small multiples
in `revision.palette`'s grid (at most three panels to a row), and each entry's text is drawn in
its method's colour in every figure; images are always `IMAGE_COLOUR`. The `draw_*` functions
return the matplotlib Figure (the tests inspect it); the plain-named ones return the PNG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from revision.diagnose.pipeline import EntryFigures
from revision.palette import IMAGE_COLOUR, MAX_COLS, grid, method_colour, png_bytes, style

# Cross-modal cosines are drawn as outlines in these neutral tones so the fills stay the modalities'.
_CROSS, _MATCHED = "#333333", "#000000"


def _label(metrics: Mapping[str, Any], key: str) -> str:
    return str(metrics.get(key, {}).get("label", key))


def _title(ax: Any, text: str, key: str) -> None:
    # The title carries the method's colour: the key to every panel without a legend per panel.
    ax.set_title(text, color=method_colour(key), fontweight="bold")


def _cosine_range(figs: Mapping[str, EntryFigures]) -> tuple[float, float]:
    """A shared x range that holds every series (with a margin), so the histograms are not squeezed into
    the corner of [-1, 1] where the cosines of real embeddings live."""
    values = [np.asarray(v, dtype=float) for f in figs.values() for v in f.draws.values() if len(v)]
    values += [np.asarray(f.pair_cosines, dtype=float) for f in figs.values() if f.pair_cosines is not None]
    pooled = np.concatenate(values) if values else np.array([-1.0, 1.0])
    lo, hi = float(pooled.min()), float(pooled.max())
    pad = 0.05 * max(hi - lo, 0.1)
    return max(-1.0, float(lo) - pad), min(1.0, float(hi) + pad)


def draw_cosine_histograms(metrics: Mapping[str, Any], figs: Mapping[str, EntryFigures]) -> Any:
    """Cross- vs intra-modal cosine histograms, one panel per entry, on one x range."""
    keys = list(figs)
    with style():
        fig, axes = grid(len(keys))
        lo, hi = _cosine_range(figs)
        bins = np.linspace(lo, hi, 81)
        for j, (ax, key) in enumerate(zip(axes, keys, strict=True)):
            f = figs[key]
            colour = method_colour(key)
            fills = [
                (f.draws["intra_image"], "image–image", IMAGE_COLOUR),
                (f.draws["intra_text"], "text–text", colour),
            ]
            for values, label, c in fills:
                ax.hist(values, bins=bins, density=True, histtype="stepfilled", alpha=0.35, color=c, label=label)
                ax.hist(values, bins=bins, density=True, histtype="step", color=c, linewidth=1.2)
            ax.hist(f.draws["cross"], bins=bins, density=True, histtype="step", color=_CROSS, linewidth=1.4,
                    label="text–image, random")  # fmt: skip
            if f.pair_cosines is not None:
                ax.hist(f.pair_cosines, bins=bins, density=True, histtype="step", color=_MATCHED, linewidth=1.4,
                        linestyle="--", label="text–image, matched")  # fmt: skip
            ax.set_xlim(lo, hi)
            _title(ax, _label(metrics, key), key)
            ax.set_xlabel("cosine similarity")
            if j % MAX_COLS == 0:
                ax.set_ylabel("density")
            # One legend: the series are the same in every panel, only the text colour changes.
            if j == 0:
                ax.legend(loc="upper left", frameon=False)
        first = figs[keys[0]]
        sizes = ", ".join(f"{name.replace('_', ' ')} {len(v):,}" for name, v in first.draws.items())
        fig.suptitle(f"Cosines of random pairs ({sizes} per panel)")
    return fig


def draw_pca_scatter(metrics: Mapping[str, Any], figs: Mapping[str, EntryFigures]) -> Any:
    """Both modalities on the top two principal axes of each entry's pooled sample."""
    keys = list(figs)
    with style():
        fig, axes = grid(len(keys), panel=(4.0, 3.6))
        for ax, key in zip(axes, keys, strict=True):
            f = figs[key]
            ax.scatter(f.pca_image[:, 0], f.pca_image[:, 1], s=3, alpha=0.35, color=IMAGE_COLOUR,
                       label=f"image ({len(f.pca_image):,})", rasterized=True)  # fmt: skip
            ax.scatter(f.pca_text[:, 0], f.pca_text[:, 1], s=3, alpha=0.35, color=method_colour(key),
                       label=f"text ({len(f.pca_text):,})", rasterized=True)  # fmt: skip
            ex = f.pca_explained
            ax.set_xlabel(f"PC1 ({ex[0]:.0%} of variance)")
            ax.set_ylabel(f"PC2 ({ex[1]:.0%} of variance)")
            _title(ax, _label(metrics, key), key)
            ax.set_aspect("equal", adjustable="datalim")
            ax.legend(markerscale=4, loc="best", frameon=True, framealpha=0.8)
        fig.suptitle("2-D PCA of each entry's pooled sample (text in the method's colour, images in cyan)")
    return fig


def draw_spectra(metrics: Mapping[str, Any]) -> Any:
    """Top covariance eigenvalues of the image rows and of each entry's text rows (log scale)."""
    with style():
        fig, (ax,) = grid(1, panel=(9.0, 4.2))
        first = next(iter(metrics.values()))
        img = first.get("spectrum_image") or []
        ax.semilogy(np.arange(1, len(img) + 1), img, color=IMAGE_COLOUR, linewidth=3, label="image")
        for key, m in metrics.items():
            spec = m.get("spectrum_text") or []
            # Raw text dashed: the curve the aligned ones start from.
            ax.semilogy(np.arange(1, len(spec) + 1), spec, color=method_colour(key), linewidth=1.6,
                        linestyle="--" if key == "raw" else "-", label=f"text, {m.get('label', key)}")  # fmt: skip
        source = first.get("spectrum_source", "all rows")
        ax.set_title(f"Covariance spectrum of the unit rows, top {len(img)} (from {source})")
        ax.set_xlabel("eigenvalue rank")
        ax.set_ylabel("eigenvalue")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return fig


def draw_knn_bars(metrics: Mapping[str, Any]) -> Any:
    """k-NN mixing per entry against the ideal, and how many of the k neighbours are images."""
    keys = list(metrics)
    with style():
        fig, (left, right) = grid(2, panel=(6.0, max(4.0, 0.3 * len(keys) + 1.6)))
        labels = [_label(metrics, k_) for k_ in keys]
        colours = [method_colour(k_) for k_ in keys]
        mixing = [metrics[k_]["knn_mixing"] for k_ in keys]
        ideal = metrics[keys[0]]["knn_mixing_ideal"]
        # Horizontal bars: method names read level, however many entries there are.
        ypos = np.arange(len(keys))[::-1]
        bars = left.barh(ypos, mixing, color=colours)
        left.bar_label(bars, fmt="%.2f", fontsize=8.5, padding=2)
        left.axvline(ideal, color="black", linestyle="--", linewidth=1)
        left.annotate(f"no gap: {ideal:.2f}", (ideal, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -3),
                      textcoords="offset points", ha="left", va="top", fontsize=8.5)  # fmt: skip
        left.set_xlim(0, max(1.0, max(mixing) * 1.15))
        left.set_yticks(ypos, labels)
        left.set_xlabel("fraction of neighbours that are images")
        left.grid(axis="y", visible=False)
        k = metrics[keys[0]]["knn_k"]
        n = metrics[keys[0]]["sample"]["text_rows"]
        left.set_title(f"k-NN mixing (k = {k}, {n:,} text queries)")
        # Lines rather than grouped bars: seven entries × k + 1 counts as bars are slivers.
        for key, label, colour in zip(keys, labels, colours, strict=True):
            counts = np.asarray(metrics[key]["neighbour_image_counts"], dtype=float)
            frac = counts / max(counts.sum(), 1)
            right.plot(np.arange(len(frac)), frac, color=colour, marker="o", markersize=3.5, linewidth=1.6,
                       linestyle="--" if key == "raw" else "-", label=label)  # fmt: skip
        # Without a gap each neighbour is an image with probability `ideal`, independently enough
        # that the count is close to binomial: the shape a well-mixed neighbourhood should have.
        no_gap = [math.comb(k, j) * ideal**j * (1 - ideal) ** (k - j) for j in range(k + 1)]
        right.plot(np.arange(k + 1), no_gap, color="black", linestyle=":", linewidth=2, label="no gap (binomial)")
        right.set_xticks(np.arange(k + 1))
        right.set_xlabel(f"image neighbours among a text row's {k} nearest")
        right.set_ylabel("fraction of text queries")
        right.set_title("How mixed each text row's neighbourhood is")
        right.legend(frameon=False, ncols=2 if len(keys) > 4 else 1)
    return fig


# (metric key, panel title, the value with no gap or None): the gap at a glance, one panel each.
GLANCE: list[tuple[str, str, float | None]] = [
    ("centroid_gap", "centroid gap (0 = none)", 0.0),
    ("linear_separability", "linear separability (0.5 = none)", 0.5),
    ("rmg", "relative modality gap (0.5 = none)", 0.5),
    ("knn_mixing", "k-NN mixing", None),
    ("trace_ratio", "trace ratio text / image (1 = equal)", 1.0),
    ("recall_at_1_t2i", "recall@1 text→image", None),
]


def draw_glance(metrics: Mapping[str, Any]) -> Any:
    """One bar chart per headline gap metric, a bar per entry in its method's colour."""
    keys = list(metrics)
    present = [row for row in GLANCE if any(metrics[k_].get(row[0]) is not None for k_ in keys)]
    with style():
        fig, axes = grid(len(present), panel=(4.0, max(2.6, 0.25 * len(keys) + 1.0)))
        ypos = np.arange(len(keys))[::-1]
        for j, (ax, (metric, title, reference)) in enumerate(zip(axes, present, strict=True)):
            values = [metrics[k_].get(metric) for k_ in keys]
            widths = [float(v) if v is not None else 0.0 for v in values]
            # Horizontal bars: method names read level; only the first column names them.
            bars = ax.barh(ypos, widths, color=[method_colour(k_) for k_ in keys])
            ax.bar_label(bars, labels=["—" if v is None else f"{v:.2f}" for v in values], fontsize=8, padding=2)
            if metric == "knn_mixing":
                reference = metrics[keys[0]].get("knn_mixing_ideal")
            if reference is not None:
                ax.axvline(reference, color="black", linestyle="--", linewidth=1)
            ax.set_yticks(ypos, [_label(metrics, k_) for k_ in keys] if j % MAX_COLS == 0 else [])
            ax.set_xlim(0, max(max(widths, default=0.0), reference or 0.0, 1e-9) * 1.25)
            ax.grid(axis="y", visible=False)
            ax.set_title(title)
    return fig


def cosine_histograms(metrics: Mapping[str, Any], figs: Mapping[str, EntryFigures]) -> bytes:
    """`draw_cosine_histograms` as PNG bytes."""
    return png_bytes(draw_cosine_histograms(metrics, figs))


def pca_scatter(metrics: Mapping[str, Any], figs: Mapping[str, EntryFigures]) -> bytes:
    """`draw_pca_scatter` as PNG bytes."""
    return png_bytes(draw_pca_scatter(metrics, figs))


def spectra(metrics: Mapping[str, Any]) -> bytes:
    """`draw_spectra` as PNG bytes."""
    return png_bytes(draw_spectra(metrics))


def knn_bars(metrics: Mapping[str, Any]) -> bytes:
    """`draw_knn_bars` as PNG bytes."""
    return png_bytes(draw_knn_bars(metrics))


def glance(metrics: Mapping[str, Any]) -> bytes:
    """`draw_glance` as PNG bytes."""
    return png_bytes(draw_glance(metrics))
