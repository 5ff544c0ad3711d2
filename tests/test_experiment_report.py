"""The experiment report: structure, colours, number formats and inlined images of report.html,
and the terminal table, on a synthetic results dict shaped like `revision experiment`'s."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from revision.errors import UserError
from revision.experiment import report
from revision.experiment.figures import draw_accuracy_vs_gap, draw_per_attribute, spearman
from revision.palette import METHOD_COLOURS, method_colour

METHODS = ["raw", "paired", "realign", "realign-ot", "mean-shift", "c3", "capdec", "gap-shift"]
# Exact match without noise per method, and the centroid gap of its aligned text: a world where a
# smaller gap goes with a better captioner, except for realign-ot (the ranks disagree by one).
TRUTH = {"raw": (0.21, 0.79), "paired": (0.95, None), "realign": (0.88, 0.01), "realign-ot": (0.80, 0.005),
         "mean-shift": (0.55, 0.48), "c3": (0.70, 0.47), "capdec": (0.45, 0.57), "gap-shift": (0.75, 0.06)}  # fmt: skip
ATTRS = ("count", "size", "colour", "shape", "position")


def _png(path: Path, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, rng.random((32, 32, 3)))


def synthetic_results(base: Path | None, *, seeds: int = 3, noises: tuple[float, ...] = (0.0, 0.05)) -> dict[str, Any]:
    """8 methods × len(noises) × `seeds` runs with per-attribute scores, gap metrics for every
    method but paired, three samples (their images written under `base` unless None), and a 1 vs 576
    token ablation."""
    rng = np.random.default_rng(0)
    runs = []
    for method in METHODS:
        for noise in noises:
            for seed in range(seeds):
                em = float(np.clip(TRUTH[method][0] + (0.04 if noise and method != "paired" else 0.0)
                                   + rng.normal(0, 0.015), 0, 1))  # fmt: skip
                per = {a: float(np.clip(em ** (1 / 5) + rng.normal(0, 0.02), 0, 1)) for a in ATTRS}
                runs.append({"method": method, "noise": noise, "seed": seed, "visual_tokens": 1, "exact_match": em,
                             "attribute_accuracy": float(np.mean(list(per.values()))), "per_attribute": per,
                             "token_accuracy": min(1.0, em + 0.05), "train_seconds": 10 + rng.random()})  # fmt: skip
    gap = {}
    for method in METHODS:
        cg = TRUTH[method][1]
        if cg is None:
            continue
        gap[method] = {
            "label": method, "centroid_gap": cg, "linear_separability": 0.4 + 0.75 * cg,
            "knn_mixing": 0.5 - cg / 2, "rmg": 0.5 + cg / 8, "trace_image": 0.7656,
            "recall_at_1_t2i": 0.2 + rng.random() / 10, "anisotropy_text": {"effective_rank": 40.0},
            "spectrum_text": [0.1, 0.01], "sample": {"text_rows": 500},
        }  # fmt: skip
    truth = "two small red circles at the top left"
    samples = []
    for j in range(3):
        image = f"world/test/{j:04d}.png"
        if base is not None:
            _png(base / image, j)
        caps = {m: truth for m in METHODS}
        caps["raw"] = "one large blue circle at the bottom left"
        caps["c3"] = "two small red crosses"
        samples.append({"id": f"test-{j:04d}", "image": image, "truth": truth, "captions": caps})
    ablation_runs = [dict(r, visual_tokens=t, exact_match=r["exact_match"] - (0.02 if t == 576 else 0.0))
                     for t in (1, 576) for r in runs if r["method"] == "realign" and r["noise"] == 0.0]  # fmt: skip
    return {"schema": 1, "command": "revision experiment --out exp --seeds 3", "quick": False,
            "seeds": list(range(seeds)), "config": {"world": {"train": 4000, "test": 500}, "epochs": 3},
            "timings": {"world": 12.5, "encoder": 88.1, "train": 640.0}, "noise_sigma": 0.05,
            "encoder": {"kind": "toy dual encoder", "gap": {"centroid_gap": 0.79}}, "machine": "2-core CI runner",
            "runs": runs, "gap": gap, "samples": samples,
            "ablation": {"method": "realign", "runs": ablation_runs}}  # fmt: skip


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.h2: list[str] = []
        self.rows: list[list[str]] = []
        self._in: str | None = None
        self._row: list[str] | None = None
        self._cell = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.srcs.append(dict(attrs)["src"] or "")
        if tag in ("h2", "td"):
            self._in, self._cell = tag, ""
        if tag == "tr":
            self._row = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2" and self._in == "h2":
            self.h2.append(self._cell)
        if tag == "td" and self._row is not None:
            self._row.append(self._cell.strip())
        if tag == "tr" and self._row:
            self.rows.append(self._row)
        if tag in ("h2", "td"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in:
            self._cell += data


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    base = tmp_path_factory.mktemp("exp")
    results = synthetic_results(base)
    path = report.render_report(results, base / "out", base_dir=base)
    return results, path.read_text(), path


def test_report_has_every_section_and_inlines_every_picture(rendered: tuple[dict[str, Any], str, Path]) -> None:
    results, page, path = rendered
    assert path.name == "report.html"
    p = _Page()
    p.feed(page)
    assert [h.split(".")[0] for h in p.h2] == ["1", "2", "3", "4", "5", "6"], p.h2
    # 2 figures + 3 sample images, all inlined; nothing points outside the file.
    assert len(p.srcs) == 5
    for src in p.srcs:
        kind, data = src.split(",", 1)
        assert kind == "data:image/png;base64"
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<script" not in page and not re.search(r"https?://|src=\"(?!data:)", page)
    assert results["command"] in page and "2-core CI runner" in page


def test_every_method_has_its_palette_colour_and_a_row_per_noise(rendered: tuple[dict[str, Any], str, Path]) -> None:
    _, page, _ = rendered
    p = _Page()
    p.feed(page)
    # The accuracy table: method, noise, seeds, 3 scores, note.
    table = [r for r in p.rows if len(r) == 7 and r[0] in METHODS]
    assert [(r[0], r[1]) for r in table] == [("raw", "0"), ("raw", "0.05")] + [
        (m, n) for m in METHODS[2:] for n in ("0", "0.05")
    ] + [("paired", "0"), ("paired", "0.05")]
    for m in METHODS:
        assert f"background:{METHOD_COLOURS[m]}'></span>{m}" in page, m
    assert {r[6] for r in table if r[0] == "raw"} == {"lower bound"}
    assert {r[6] for r in table if r[0] == "paired"} == {"upper bound"}
    # The best non-reference row (realign with noise, by construction) is the one highlighted.
    best = [r for r in table if r[6] == "best exact match"]
    assert [(r[0], r[1]) for r in best] == [("realign", "0.05")]
    assert page.count("class='best'") == 1


def test_scores_are_mean_and_std_over_seeds_at_three_decimals(rendered: tuple[dict[str, Any], str, Path]) -> None:
    results, page, _ = rendered
    p = _Page()
    p.feed(page)
    table = [r for r in p.rows if len(r) == 7 and r[0] in METHODS]
    for row in table:
        assert row[2] == "3"
        for cell in row[3:6]:
            assert re.fullmatch(r"\d\.\d{3} ± \d\.\d{3}", cell), cell
    em = [r["exact_match"] for r in results["runs"] if r["method"] == "c3" and r["noise"] == 0.0]
    c3 = next(r for r in table if r[0] == "c3" and r[1] == "0")
    assert c3[3] == f"{np.mean(em):.3f} ± {np.std(em, ddof=1):.3f}"


def test_wrong_attribute_words_are_marked(rendered: tuple[dict[str, Any], str, Path]) -> None:
    pytest.importorskip("revision.experiment.world")
    _, page, _ = rendered
    # raw names the wrong count, size, colour and vertical position; c3 the wrong shape and no position.
    raw = "<mark>one</mark> <mark>large</mark> <mark>blue</mark> circle at the <mark>bottom</mark> <mark>left</mark>"
    assert raw in page
    assert "two small red <mark>crosses</mark>" in page and "(no position)" in page
    truth = "two small red circles at the top left"
    assert report.marked_caption(truth, truth) == truth


def test_without_the_world_parser_words_absent_from_the_truth_are_marked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "_parser", lambda: None)
    got = report.marked_caption("two small red circles at the top left", "two large red circles at the top")
    assert got == "two <mark>large</mark> red circles at the top"


def test_gap_metrics_pick_varying_scalars_with_diagnose_labels(rendered: tuple[dict[str, Any], str, Path]) -> None:
    results, _, _ = rendered
    keys = [k for k, _ in report.gap_metrics(results["gap"])]
    # trace_image is constant, effective rank nested, spectra lists: none can predict anything.
    assert keys == ["centroid_gap", "rmg", "linear_separability", "knn_mixing", "recall_at_1_t2i"]
    assert dict(report.gap_metrics(results["gap"]))["centroid_gap"] == "centroid gap ‖μᵢ − μₜ‖"


def test_accuracy_against_gap_panels_use_method_colours_and_spearman() -> None:
    from matplotlib.colors import to_hex

    results = synthetic_results(None, seeds=2)
    summary, gap = report.summarise(results["runs"]), results["gap"]
    fig = draw_accuracy_vs_gap(summary, gap, [("centroid_gap", "centroid gap")])
    ax = fig.axes[0]
    colours = {to_hex(line.get_color()) for line in ax.lines}
    assert {method_colour(m) for m in METHODS if m != "paired"} <= colours
    assert method_colour("paired") in colours  # the upper bound as a dashed line
    x = [gap[m]["centroid_gap"] for m in METHODS if m in gap]
    y = [
        next(r["exact_match_mean"] for r in summary if r["method"] == m and r["noise"] == 0.0)
        for m in METHODS
        if m in gap
    ]
    assert f"{spearman(x, y):+.2f} (0)" in ax.get_title()
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_spearman_against_known_values() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties take average ranks: ranks x = 1, 2.5, 2.5, 4 and y = 1, 2, 3, 4.
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
    assert spearman([1, 2], [2, 1]) is None and spearman([1, 1, 1], [1, 2, 3]) is None


def test_per_attribute_bars_are_coloured_by_method() -> None:
    from matplotlib.colors import to_hex

    runs = synthetic_results(None, seeds=2)["runs"]
    fig = draw_per_attribute(runs)
    assert len(fig.axes) == 2  # one panel per noise level
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(ATTRS)
    legend = {
        t.get_text(): to_hex(h.get_facecolor())
        for t, h in zip(ax.get_legend().texts, ax.get_legend().legend_handles, strict=True)
    }
    assert legend == {m: method_colour(m) for m in METHODS}
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_terminal_table_and_missing_optional_parts(tmp_path: Path) -> None:
    results = synthetic_results(tmp_path, seeds=1, noises=(0.0,))
    for key in ("samples", "ablation", "gap"):
        del results[key]
    for r in results["runs"]:
        del r["per_attribute"]
    table = report.text_table(results).splitlines()
    assert table[0].split()[:3] == ["method", "noise", "seeds"]
    assert len(table) == 2 + len(METHODS)
    # One seed: no spread to show, the mean alone.
    assert re.search(r"^realign\s+0\s+1\s+0\.\d{3}\s+0\.\d{3}\s+\d\.\d{3}\s+best$", "\n".join(table), re.M)
    page = report.render_report(results, tmp_path / "out").read_text()
    assert "<h2>1." in page and "<h2>6." in page and "<h2>2." not in page and "<h2>4." not in page
    assert "<img" not in page


def test_bad_results_are_refused_with_the_row_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no 'runs'"):
        report.render_report({"schema": 1}, tmp_path)
    with pytest.raises(UserError, match=r"runs\[1\] lacks token_accuracy"):
        good = {"method": "raw", "noise": 0.0, "seed": 0, "exact_match": 0.1, "attribute_accuracy": 0.2,
                "token_accuracy": 0.3}  # fmt: skip
        bad = {k: v for k, v in good.items() if k != "token_accuracy"}
        report.text_table({"runs": [good, bad]})
