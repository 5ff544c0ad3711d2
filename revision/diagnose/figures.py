"""The report's pictures, drawn with matplotlib (Agg) and returned as PNG bytes.

Each function takes the metrics (as in metrics.json) and figure data keyed by entry
("raw", "aligned", ...) and states its sample size in the title or legend.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)
import numpy as np  # noqa: E402

from revision.diagnose.pipeline import EntryFigures  # noqa: E402

_TEXT, _IMAGE, _PAIR = "#d95f02", "#1b9e77", "#7570b3"
# One colour per entry (raw first) wherever entries are compared side by side.
_ENTRY_COLOURS = ["#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d"]


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def cosine_histograms(metrics: Mapping[str, Any], figs: Mapping[str, EntryFigures]) -> bytes:
    """Cross- vs intra-modal cosine histograms, one panel per entry, on a shared x axis."""
    keys = list(figs)
    fig, axes = plt.subplots(
        1, len(keys), figsize=(5.2 * len(keys), 3.6), sharex=True, squeeze=False, layout="constrained"
    )
    bins = np.linspace(-1.0, 1.0, 101)
    for ax, key in zip(axes[0], keys, strict=True):
        f = figs[key]
        series = [
            (f.draws["intra_image"], f"image–image ({len(f.draws['intra_image']):,})", _IMAGE),
            (f.draws["intra_text"], f"text–text ({len(f.draws['intra_text']):,})", _TEXT),
            (f.draws["cross"], f"text–image, random ({len(f.draws['cross']):,})", "#444444"),
        ]
        if f.pair_cosines is not None:
            series.append((f.pair_cosines, f"text–image, matched ({len(f.pair_cosines):,})", _PAIR))
        for values, label, colour in series:
            ax.hist(values, bins=bins, density=True, histtype="stepfilled", alpha=0.35, color=colour, label=label)
            ax.hist(values, bins=bins, density=True, histtype="step", color=colour, linewidth=1.2)
        ax.set_title(f"{metrics[key].get('label', key)}: cosine of random pairs")
        ax.set_xlabel("cosine similarity")
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("density")
    return _png(fig)


def pca_scatter(metrics: Mapping[str, Any], figs: Mapping[str, EntryFigures]) -> bytes:
    """Both modalities on the top two principal axes of each entry's pooled sample."""
    keys = list(figs)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.8 * len(keys), 4.4), squeeze=False, layout="constrained")
    for ax, key in zip(axes[0], keys, strict=True):
        f = figs[key]
        ax.scatter(f.pca_image[:, 0], f.pca_image[:, 1], s=3, alpha=0.4, color=_IMAGE,
                   label=f"image ({len(f.pca_image):,})", rasterized=True)  # fmt: skip
        ax.scatter(f.pca_text[:, 0], f.pca_text[:, 1], s=3, alpha=0.4, color=_TEXT,
                   label=f"text ({len(f.pca_text):,})", rasterized=True)  # fmt: skip
        ex = f.pca_explained
        ax.set_xlabel(f"PC1 ({ex[0]:.0%} of variance)")
        ax.set_ylabel(f"PC2 ({ex[1]:.0%} of variance)")
        ax.set_title(f"{metrics[key].get('label', key)}: 2-D PCA of the pooled sample")
        ax.set_aspect("equal", adjustable="datalim")
        ax.legend(fontsize=7, markerscale=4, loc="best")
    return _png(fig)


def spectra(metrics: Mapping[str, Any]) -> bytes:
    """Top covariance eigenvalues of the image rows and of each entry's text rows (log scale)."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8), layout="constrained")
    first = next(iter(metrics.values()))
    img = first.get("spectrum_image") or []
    ax.semilogy(np.arange(1, len(img) + 1), img, color=_IMAGE, linewidth=2, label="image")
    styles = ["-", "--", ":", "-."]
    for j, (key, m) in enumerate(metrics.items()):
        spec = m.get("spectrum_text") or []
        ax.semilogy(np.arange(1, len(spec) + 1), spec, color=_TEXT, linestyle=styles[j % len(styles)],
                    linewidth=1.6, label=f"text, {m.get('label', key)}")  # fmt: skip
    source = first.get("spectrum_source", "all rows")
    ax.set_title(f"Covariance spectrum of the unit rows, top {len(img)}\n(from {source})", fontsize=10)
    ax.set_xlabel("eigenvalue rank")
    ax.set_ylabel("eigenvalue")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _png(fig)


def knn_bars(metrics: Mapping[str, Any]) -> bytes:
    """k-NN mixing per entry against the ideal, and how many of the k neighbours are images."""
    keys = list(metrics)
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(10.5, 3.6), gridspec_kw={"width_ratios": [1, 2]}, layout="constrained"
    )
    labels = [metrics[k_].get("label", k_) for k_ in keys]
    colours = [_ENTRY_COLOURS[j % len(_ENTRY_COLOURS)] for j in range(len(keys))]
    mixing = [metrics[k_]["knn_mixing"] for k_ in keys]
    ideal = metrics[keys[0]]["knn_mixing_ideal"]
    bars = left.bar(labels, mixing, color=colours)
    left.bar_label(bars, fmt="%.2f", fontsize=8)
    left.axhline(ideal, color="black", linestyle="--", linewidth=1)
    left.text(-0.4, ideal, f"no gap: {ideal:.2f}", va="bottom", ha="left", fontsize=8)
    left.set_ylim(0, max(1.0, max(mixing) * 1.1))
    left.set_ylabel("fraction of neighbours that are images")
    k = metrics[keys[0]]["knn_k"]
    n = metrics[keys[0]]["sample"]["text_rows"]
    left.set_title(f"k-NN mixing (k = {k}, {n:,} text queries)")
    width = 0.8 / len(keys)
    for j, key in enumerate(keys):
        counts = np.asarray(metrics[key]["neighbour_image_counts"], dtype=float)
        frac = counts / max(counts.sum(), 1)
        right.bar(np.arange(len(frac)) + (j - (len(keys) - 1) / 2) * width, frac, width=width,
                  color=colours[j], label=labels[j])  # fmt: skip
    # Without a gap each neighbour is an image with probability `ideal`, independently enough
    # that the count is close to binomial: the shape a well-mixed neighbourhood should have.
    no_gap = [math.comb(k, j) * ideal**j * (1 - ideal) ** (k - j) for j in range(k + 1)]
    right.plot(np.arange(k + 1), no_gap, "k--", marker="o", markersize=3, linewidth=1, label="no gap (binomial)")
    right.set_xticks(np.arange(k + 1))
    right.set_xlabel(f"image neighbours among a text row's {k} nearest")
    right.set_ylabel("fraction of text queries")
    right.set_title("How mixed each text row's neighbourhood is")
    right.legend(fontsize=8)
    return _png(fig)
