"""Readable diagnose reports: panels wide enough on the page, no overlapping text, one colour per
method in every figure, one precision per table row, and the palette itself."""

from __future__ import annotations

import itertools
import re
from html.parser import HTMLParser
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from revision import palette  # noqa: E402
from revision.diagnose import figures  # noqa: E402
from revision.diagnose.pipeline import run_diagnosis  # noqa: E402
from revision.diagnose.report import render_html, text_table  # noqa: E402

PAGE_PX = 1260  # the report's content width (its CSS body max-width)
MIN_PANEL_PX = 350  # a panel with its labels and title
MIN_PLOT_PX = 300  # the plot area alone


@pytest.fixture(scope="module")
def diagnosis() -> Any:
    """raw + 6 aligned entries of a small gapped corpus: the demo's seven panels."""
    rng = np.random.default_rng(0)
    n, d = 400, 24
    shared = rng.standard_normal((n, d))
    image = shared + 2.0 * np.eye(d)[0] + 0.3 * rng.standard_normal((n, d))
    text = shared - 2.0 * np.eye(d)[0] + 0.3 * rng.standard_normal((n, d))
    u = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    t, i = u(text), u(image)
    shift = i.mean(0) - t.mean(0)
    aligned = {
        "realign": u(t + shift),
        "realign-ot": u(t + shift + 0.01 * rng.standard_normal(t.shape)),
        "mean-shift": t - t.mean(0),
        "c3": u(t - t.mean(0) + 0.1 * rng.standard_normal(t.shape)),
        "capdec": u(t + 0.1 * rng.standard_normal(t.shape)),
        "my-method": u(t + 0.5 * shift),
    }
    return run_diagnosis(text.astype(np.float32), image.astype(np.float32), aligned=aligned, sample=300,
                         pairs=True, gpu=False, threads=1)  # fmt: skip


def display_panel_widths(fig: Any, *, labels: bool = True) -> list[float]:
    """Each axes' width in CSS px once the PNG is shown as the report shows it (at DISPLAY_DPI,
    scaled down to the page when wider): with its tick labels, axis labels and title, or the plot
    area alone."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width_px = fig.get_figwidth() * palette.DISPLAY_DPI
    scale = min(1.0, PAGE_PX / width_px)
    out = []
    for ax in fig.axes:
        if labels:
            out.append(ax.get_tightbbox(renderer).width / fig.dpi * palette.DISPLAY_DPI * scale)
        else:
            out.append(ax.get_position().width * width_px * scale)
    return out


def _drawn_texts(fig: Any) -> list[Any]:
    """The texts the figure really draws: titles, axis labels, the tick labels inside the view
    limits (matplotlib keeps undrawn ones outside them), legends, the suptitle."""
    texts = [fig._suptitle] if fig._suptitle is not None else []
    for legend in fig.legends:
        texts += legend.get_texts()
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
        for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = min(lo, hi), max(lo, hi)
            ticks = axis.get_major_ticks()
            texts += [t.label1 for t, loc in zip(ticks, axis.get_majorticklocs(), strict=False) if lo <= loc <= hi]
        if ax.get_legend() is not None:
            texts += ax.get_legend().get_texts()
        texts += [t for t in ax.texts]
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


def overlapping_texts(fig: Any) -> list[tuple[str, str]]:
    """Pairs of drawn texts whose boxes overlap by more than a pixel."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer).padded(-1)) for t in _drawn_texts(fig)]
    return [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]


def _drawn(diagnosis: Any) -> dict[str, Any]:
    m, f = diagnosis.metrics, diagnosis.figures
    return {
        "cosine_histograms": figures.draw_cosine_histograms(m, f),
        "pca_scatter": figures.draw_pca_scatter(m, f),
        "spectra": figures.draw_spectra(m),
        "knn_bars": figures.draw_knn_bars(m),
        "glance": figures.draw_glance(m),
    }


def test_grid_puts_at_most_three_readable_panels_in_a_row() -> None:
    for n in range(1, 9):
        with palette.style():
            fig, axes = palette.grid(n)
        assert len(axes) == len(fig.axes) == n
        rows = {round(ax.get_position().y0, 3) for ax in axes}
        assert len(rows) == -(-n // palette.MAX_COLS)
        assert min(display_panel_widths(fig, labels=False)) >= MIN_PLOT_PX, n
        plt.close(fig)


def test_the_old_single_row_layout_is_caught() -> None:
    # The layout this replaced: seven panels side by side, 5.2 in each. The check must reject it.
    fig, axes = plt.subplots(1, 7, figsize=(5.2 * 7, 3.6), layout="constrained")
    assert max(display_panel_widths(fig)) < MIN_PANEL_PX
    assert max(display_panel_widths(fig, labels=False)) < MIN_PLOT_PX
    plt.close(fig)
    # And an overlap the text check must see: two long labels drawn on top of each other.
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.set_xticks([0, 0.02], ["a long tick label", "another long one"])
    assert overlapping_texts(fig)
    plt.close(fig)


def test_every_figure_is_readable_for_seven_entries(diagnosis: Any) -> None:
    for name, fig in _drawn(diagnosis).items():
        assert min(display_panel_widths(fig)) >= MIN_PANEL_PX, name
        assert min(display_panel_widths(fig, labels=False)) >= MIN_PLOT_PX, name
        assert not overlapping_texts(fig), (name, overlapping_texts(fig)[:3])
        plt.close(fig)


def test_each_method_has_one_colour_in_every_figure(diagnosis: Any) -> None:
    drawn = _drawn(diagnosis)
    keys = list(diagnosis.metrics)
    for j, key in enumerate(keys):
        want = palette.method_colour(key)
        hist_ax, pca_ax = drawn["cosine_histograms"].axes[j], drawn["pca_scatter"].axes[j]
        # Text–text fill of the histogram, text points of the PCA scatter, the panel titles.
        assert want in {to_hex(p.get_facecolor(), keep_alpha=False) for p in hist_ax.patches}, key
        assert to_hex(pca_ax.collections[1].get_facecolor()[0], keep_alpha=False) == want, key
        assert to_hex(hist_ax.title.get_color()) == want and to_hex(pca_ax.title.get_color()) == want
        # The text spectrum and the neighbour-count line are labelled by the entry.
        spec = {ln.get_label(): to_hex(ln.get_color()) for ln in drawn["spectra"].axes[0].lines}
        assert spec[f"text, {key}"] == want
        knn_left, knn_right = drawn["knn_bars"].axes
        assert to_hex(knn_left.patches[j].get_facecolor(), keep_alpha=False) == want
        assert {ln.get_label(): to_hex(ln.get_color()) for ln in knn_right.lines}[key] == want
        assert to_hex(drawn["glance"].axes[0].patches[j].get_facecolor(), keep_alpha=False) == want
    # Images are never drawn in a method's colour.
    assert palette.IMAGE_COLOUR not in {palette.method_colour(k) for k in keys}
    for fig in drawn.values():
        plt.close(fig)


def test_table_rows_have_one_precision(diagnosis: Any) -> None:
    class Rows(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[list[str]] = []

        def handle_starttag(self, tag: str, attrs: Any) -> None:
            if tag == "tr":
                self.rows.append([])

        def handle_data(self, data: str) -> None:
            if self.rows:
                self.rows[-1].append(data.strip())

    page = render_html(diagnosis.metrics, diagnosis.figures)
    parser = Rows()
    parser.feed(page)
    n = len(diagnosis.metrics)
    checked = 0
    for row in parser.rows[1:]:
        numbers = [c for c in row[1 : 1 + n] if c != "—"]
        decimals = {len(c.split(".")[1]) if "." in c else 0 for c in numbers}
        assert len(decimals) == 1, row
        checked += 1
    assert checked >= 20
    # The terminal table agrees with the page: same cells.
    table = text_table(diagnosis.metrics)
    assert re.search(rf"^median rank text→image(\s+\d+\.\d){{{n}}}$", table, re.M)
    # Colour swatches head the columns.
    for key in diagnosis.metrics:
        assert f"background:{palette.method_colour(key)}'></span>{key}" in page


def test_method_colours_are_distinct_and_stable() -> None:
    colours = list(palette.METHOD_COLOURS.values())
    assert len(set(colours)) == len(colours)
    assert palette.method_colour("aligned-realign-ot") == palette.METHOD_COLOURS["realign-ot"]
    assert palette.method_colour("aligned-realign") == palette.METHOD_COLOURS["realign"]
    mine = palette.method_colour("my-method")
    assert mine == palette.method_colour("my-method") and mine not in colours
    assert palette.method_colour("xrealign") != palette.METHOD_COLOURS["realign"]


def test_number_formats() -> None:
    assert palette.fmt_row([0.787, 0.0004, 1.30621]) == ["0.7870", "0.0004", "1.3062"]
    assert palette.fmt_row([49.0, 149.8]) == ["49.0", "149.8"]
    assert palette.fmt_row([12345.6, 7.0]) == ["12,346", "7"]
    assert palette.fmt_row([None, 3, 0.5]) == ["—", "3", "0.5000"]
    assert palette.fmt_mean_std(0.9312, 0.0121) == "0.931 ± 0.012"
    assert palette.fmt_mean_std(0.9312, None) == "0.931"
    png = palette.png_bytes(plt.figure(figsize=(3.0, 2.0)))
    assert palette.png_size(png) == (3 * palette.SAVE_DPI, 2 * palette.SAVE_DPI)
    assert ' width="300"' in palette.img_tag(png, "x")
