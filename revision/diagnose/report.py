"""The diagnose outputs for people: the stdout table, a plain-language reading, and report.html.

report.html is one self-contained file: inline CSS, pictures as base64 PNG data URIs, no
scripts and no external links, so it opens offline and can be mailed around.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from revision.diagnose.pipeline import EntryFigures
from revision.palette import fmt_row, img_tag, method_colour

# (key, label, what to expect): the rows of both tables, in order.
ROWS: list[tuple[str, str, str]] = [
    ("centroid_gap", "centroid gap ‖μᵢ − μₜ‖", "0 = no gap; all rows"),
    ("centroid_cosine", "cosine of the centroids", "1 = same direction; all rows"),
    ("trace_text", "trace (text)", "total variance of unit rows; all rows"),
    ("trace_image", "trace (image)", "all rows"),
    ("trace_ratio", "trace ratio text / image", "1 = equal spread; all rows"),
    ("rmg", "relative modality gap", "0.5 = no gap; exact over all rows"),
    ("rmg_paired", "relative modality gap, paired", "matched pairs"),
    ("linear_separability", "linear separability", "held-out accuracy; 0.5 = no gap"),
    ("knn_mixing", "k-NN mixing", "fraction of a text row's neighbours that are images"),
    ("knn_mixing_ideal", "k-NN mixing if no gap", "n_img / (n_txt + n_img − 1)"),
    ("top1_cross_cosine", "best image cosine per text", "mean over text rows"),
    ("top1_intra_cosine", "best other-text cosine per text", "mean over text rows"),
    ("recall_at_1_t2i", "recall@1 text→image", "among the sampled pairs"),
    ("recall_at_5_t2i", "recall@5 text→image", ""),
    ("recall_at_10_t2i", "recall@10 text→image", ""),
    ("median_rank_t2i", "median rank text→image", "1 = best"),
    ("recall_at_1_i2t", "recall@1 image→text", ""),
    ("recall_at_5_i2t", "recall@5 image→text", ""),
    ("recall_at_10_i2t", "recall@10 image→text", ""),
    ("median_rank_i2t", "median rank image→text", ""),
    ("residual_drift", "residual drift ‖μ_aligned − μᵢ‖", "aligned stores; 0 = centred on images"),
    ("anisotropy_text.effective_rank", "effective rank (text)", "exp(entropy of the spectrum); higher = rounder"),
    ("anisotropy_image.effective_rank", "effective rank (image)", ""),
    ("anisotropy_text.top1_fraction", "top eigenvalue share (text)", "of the total variance"),
    ("anisotropy_image.top1_fraction", "top eigenvalue share (image)", ""),
]


def _get(m: Mapping[str, Any], key: str) -> Any:
    """m[key], where "a.b" reads m["a"]["b"]; None when absent."""
    value: Any = m
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _cells(metrics: Mapping[str, Mapping[str, Any]], key: str) -> list[str]:
    """One table row: the metric of every entry at one precision (ranks at one decimal, as a
    median of an even count can be a half)."""
    values = [_get(m, key) for m in metrics.values()]
    return fmt_row(values, 1 if key.startswith("median_rank") else None)


def _present_rows(metrics: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    return [row for row in ROWS if any(_get(m, row[0]) is not None for m in metrics.values())]


def text_table(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """The metrics as an aligned plain-text table: one row per metric, one column per entry."""
    keys = list(metrics)
    header = ["metric", *[str(metrics[k].get("label", k)) for k in keys]]
    lines = [[label, *_cells(metrics, key)] for key, label, _ in _present_rows(metrics)]
    widths = [max(len(r[j]) for r in [header, *lines]) for j in range(len(header))]

    def line(cells: list[str]) -> str:
        # Metric names align left, numbers right.
        padded = [c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(padded)

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, lines)])


def _separability_words(acc: float) -> str:
    if acc >= 0.99:
        return "perfectly separable"
    if acc >= 0.75:
        return "easily separable"
    if acc >= 0.6:
        return "somewhat separable"
    return "close to indistinguishable"


def _mixing_words(mixing: float, ideal: float) -> str:
    share = mixing / ideal if ideal > 0 else 0.0
    if share < 0.1:
        return "neighbourhoods are modality-pure"
    if share < 0.5:
        return "neighbourhoods are still mostly modality-pure"
    if share < 0.9:
        return "neighbourhoods are partly mixed"
    return "neighbourhoods are as mixed as if there were no gap"


def reading(metrics: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """A few plain sentences that say what the numbers mean."""
    raw = metrics["raw"]
    out = [
        f"Raw: the text and image centroids are {raw['centroid_gap']:.2f} apart (cosine "
        f"{raw['centroid_cosine']:.2f}); a linear classifier tells the modalities apart with "
        f"{raw['linear_separability']:.1%} held-out accuracy ({_separability_words(raw['linear_separability'])}); "
        f"the relative modality gap is {raw['rmg']:.3f} (0.5 would be no gap); k-NN mixing is "
        f"{raw['knn_mixing']:.2f} of an ideal {raw['knn_mixing_ideal']:.2f}: "
        f"{_mixing_words(raw['knn_mixing'], raw['knn_mixing_ideal'])}."
    ]
    for key, m in metrics.items():
        if key == "raw":
            continue
        label = m.get("label", key)
        sentence = (
            f"After {label}: the centroid gap went from {raw['centroid_gap']:.2f} to {m['centroid_gap']:.2f}; "
            f"k-NN mixing from {raw['knn_mixing']:.2f} to {m['knn_mixing']:.2f} of an ideal "
            f"{m['knn_mixing_ideal']:.2f} ({_mixing_words(m['knn_mixing'], m['knn_mixing_ideal'])}); "
            f"separability from {raw['linear_separability']:.2f} to {m['linear_separability']:.2f} "
            f"({_separability_words(m['linear_separability'])}); RMG from {raw['rmg']:.3f} to {m['rmg']:.3f}; "
            f"the text/image trace ratio from {raw['trace_ratio']:.2f} to {m['trace_ratio']:.2f}."
        )
        if "recall_at_1_t2i" in m and "recall_at_1_t2i" in raw:
            sentence += (
                f" Text→image recall@1 among {m['retrieval_images']:,} images went from "
                f"{raw['recall_at_1_t2i']:.3f} to {m['recall_at_1_t2i']:.3f}"
                + (
                    " (a shared transform of all text rows can move pairs together without changing "
                    "which image is nearest)."
                    if abs(m["recall_at_1_t2i"] - raw["recall_at_1_t2i"]) < 0.01
                    else "."
                )
            )
        out.append(sentence)
    return out


_PAIR_KINDS = {
    "identity": "row r of text with row r of image, ids equal",
    "ids": "equal ids",
    "file": "from the pairs file",
}

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1260px; color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.8em; }
table { border-collapse: collapse; font-size: 0.92em; }
th, td { padding: 0.3em 0.8em; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child, th:last-child { text-align: left; } td.note { color: #777; text-align: left; }
thead th { border-bottom: 2px solid #444; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: 0.4em 0; display: block; }
td:not(:first-child):not(.note) { font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.35em; border-radius: 2px; }
.meta { color: #666; font-size: 0.9em; } .reading p { background: #f6f6f2; padding: 0.6em 0.9em; }
"""


def render_html(metrics: Mapping[str, Mapping[str, Any]], figs: Mapping[str, EntryFigures]) -> str:
    """The whole report as one HTML document."""
    keys = list(metrics)
    raw = metrics["raw"]
    # Each entry's column heading carries its colour in the figures below.
    head = "".join(
        f"<th><span class='swatch' style='background:{method_colour(k)}'></span>"
        f"{html.escape(str(metrics[k].get('label', k)))}</th>"
        for k in keys
    )
    body = []
    for key, label, note in _present_rows(metrics):
        cells = "".join(f"<td>{c}</td>" for c in _cells(metrics, key))
        body.append(f"<tr><td>{html.escape(label)}</td>{cells}<td class='note'>{html.escape(note)}</td></tr>")
    inputs = raw["inputs"]
    meta = (
        f"Text: {inputs['text']['rows']:,} rows; image: {inputs['image']['rows']:,} rows; "
        f"dim {inputs['image']['dim']}. "
        f"Streamed metrics cover all rows; sampled metrics use {raw['sample']['text_rows']:,} text and "
        f"{raw['sample']['image_rows']:,} image rows (seed {raw['sample']['seed']}). "
        f"Neighbour search: FAISS {raw['faiss']['index']}, {raw['faiss']['threads']} thread(s)"
        + (", GPU" if raw["faiss"]["gpu"] else "")
        + (
            f", nprobe {raw['faiss']['nprobe']}, recall@k vs exact search {raw['faiss']['recall_vs_exact']:.3f}"
            f" on {raw['faiss']['recall_queries']:,} queries"
            if raw["faiss"].get("recall_vs_exact") is not None
            else ""
        )
        + "."
    )
    if "pairs" in raw:
        p = raw["pairs"]
        meta += (
            f" Retrieval: {p['sampled']:,} sampled pairs ({_PAIR_KINDS.get(p['kind'], p['kind'])}); "
            f"paired RMG over {raw['rmg_paired_rows']:,} pairs."
        )
    from revision.diagnose import figures  # matplotlib loads when a figure is drawn, not with the metrics table

    pictures = [
        ("The gap at a glance", figures.glance(metrics),
         "Headline metrics per entry; the dashed line is the value without a gap."),
        ("Cosine similarity, cross- vs intra-modal", figures.cosine_histograms(metrics, figs),
         "With a modality gap the text–image histogram sits left of both intra-modal ones."),
        ("2-D PCA of both modalities", figures.pca_scatter(metrics, figs),
         "With a gap the two colours form separate clouds, usually split along the first axis."),
        ("Covariance spectra", figures.spectra(metrics),
         "A steep spectrum means an anisotropic cone. An isotropic rescaling (ReAlign) matches the total "
         "variance, not the shape; a covariance-matching method brings the text curve onto the image curve."),
        ("k-NN mixing", figures.knn_bars(metrics),
         "Without a gap a text row's neighbours are images in proportion to the pool (the dashed line)."),
    ]  # fmt: skip
    sections = "".join(
        f"<h2>{html.escape(title)}</h2><p class='meta'>{html.escape(caption)}</p>{img_tag(png, title)}"
        for title, png, caption in pictures
    )
    paragraphs = "".join(f"<p>{html.escape(s)}</p>" for s in reading(metrics))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>revision diagnose: modality gap report</title>
<style>{_CSS}</style></head><body>
<h1>Modality gap report</h1>
<p class="meta">{html.escape(meta)}</p>
<h2>What the numbers say</h2><div class="reading">{paragraphs}</div>
<h2>Metrics</h2>
<table><thead><tr><th>metric</th>{head}<th>how to read</th></tr></thead>
<tbody>{"".join(body)}</tbody></table>
{sections}
</body></html>
"""
