"""Reference compatibility on every golden case: through `align-pkl`, and through ingest → align → export.

Matching means: every aligned row within 1e-5 max-abs, scale within 1e-6 relative, means within 1e-6,
every other key of every record kept (same order, same values).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_align_oracle import CASES, GOLDEN

from revision.cli import main


def _load(p: Path) -> Any:
    with open(p, "rb") as fh:
        return pickle.load(fh)


def compare_records(got: list[dict[str, Any]], expected: list[dict[str, Any]], where: str) -> None:
    assert len(got) == len(expected), f"{where}: {len(got)} records, expected {len(expected)}"
    for k, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert list(g) == list(e), f"{where}: record {k} keys {list(g)} != {list(e)}"
        for key in e:
            if key != "embed":
                assert g[key] == e[key], f"{where}: record {k} key {key!r}: {g[key]!r} != {e[key]!r}"
    got_v = np.stack([g["embed"] for g in got])
    exp_v = np.stack([e["embed"] for e in expected])
    assert got_v.dtype == np.float32
    diff = np.abs(got_v.astype(np.float64) - exp_v)
    worst = np.unravel_index(diff.argmax(), diff.shape)
    assert diff.max() <= 1e-5, f"{where}: max {diff.max():.3g} at {worst}, mean {diff.mean():.3g}"


def compare_stats(got: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    assert list(got) == list(expected), f"{where}: keys {list(got)} != {list(expected)}"
    assert abs(got["scale"] / expected["scale"] - 1) <= 1e-6, f"{where}: scale {got['scale']} vs {expected['scale']}"
    for key in ("mu_txt", "mu_img", "mu_hat"):
        assert got[key].dtype == np.float32 and got[key].shape == expected[key].shape
        d = np.abs(got[key].astype(np.float64) - expected[key]).max()
        assert d <= 1e-6, f"{where}: {key} max diff {d:.3g}"
    for key in ("trace_txt", "trace_img"):
        assert abs(got[key] - expected[key]) <= 1e-6 * abs(expected[key]), f"{where}: {key}"
    assert got["strict_finite"] == expected["strict_finite"]


@pytest.mark.parametrize("case", CASES)
def test_align_pkl_matches_golden(case: str, tmp_path: Path) -> None:
    src = GOLDEN / case
    out = tmp_path / "out"
    rc = main([
        "align-pkl", "--input_dir", str(src / "input/text"), "--img_input_dir", str(src / "input/image"),
        "--output_dir", str(out), "--chunk_size", "333", "--strict_finite", "1", "--save_stats", "1", "--no-progress",
    ])  # fmt: skip
    assert rc == 0
    expected_files = sorted((src / "expected/trace").iterdir())
    assert sorted(p.name for p in (out / "trace").iterdir()) == [p.name for p in expected_files]
    for f in expected_files:
        compare_records(_load(out / "trace" / f.name), _load(f), f"{case}/{f.name}")
    compare_stats(_load(out / "trace_stats.pkl"), _load(src / "expected/trace_stats.pkl"), case)
    mean = _load(out / "mean_vector.pkl")
    exp_mean = _load(src / "expected/mean_vector.pkl")
    assert mean.dtype == np.float32 and np.abs(mean.astype(np.float64) - exp_mean).max() <= 1e-6


@pytest.mark.parametrize("case", CASES)
def test_ingest_align_export_matches_golden(case: str, tmp_path: Path) -> None:
    src = GOLDEN / case
    for modality in ("text", "image"):
        assert main(["ingest", str(src / "input" / modality), str(tmp_path / f"{modality}.zarr"),
                     "--format", "reference-pkl", "--chunk-rows", "128"]) == 0  # fmt: skip
    rc = main([
        "align", "--text", str(tmp_path / "text.zarr"), "--image", str(tmp_path / "image.zarr"),
        "--out", str(tmp_path / "aligned.zarr"), "--block-rows", "256", "--no-progress",
        "--export-trace-stats", str(tmp_path / "trace_stats.pkl"),
    ])  # fmt: skip
    assert rc == 0
    expected_files = sorted((src / "expected/trace").iterdir())
    per_file = len(_load(expected_files[0]))
    assert main(["export", str(tmp_path / "aligned.zarr"), str(tmp_path / "exp"), "--format", "reference-pkl",
                 "--rows-per-file", str(per_file)]) == 0  # fmt: skip
    got: list[dict[str, Any]] = []
    expected: list[dict[str, Any]] = []
    for k, f in enumerate(expected_files, start=1):
        got += _load(tmp_path / "exp" / f"text_embeds_{k}.pkl")
        expected += _load(f)
    compare_records(got, expected, f"{case} via stores")
    compare_stats(_load(tmp_path / "trace_stats.pkl"), _load(src / "expected/trace_stats.pkl"), f"{case} via stores")


def test_compare_records_rejects_a_wrong_alignment(tmp_path: Path) -> None:
    """The golden check bites: outputs without the centroid correction are rejected."""
    from test_align_oracle import load_case_vectors, unit

    case = "small-d64"
    t = unit(load_case_vectors(case, "input/text"))
    i = unit(load_case_vectors(case, "input/image"))
    mu_t, mu_i = t.mean(0), i.mean(0)
    s = np.sqrt(((i - mu_i) ** 2).sum(1).mean() / ((t - mu_t) ** 2).sum(1).mean())
    wrong = unit(mu_i + s * (t - mu_t)).astype(np.float32)  # no phantom-drift correction
    expected: list[dict[str, Any]] = []
    for f in sorted((GOLDEN / case / "expected/trace").iterdir()):
        expected += _load(f)
    got = [{**e, "embed": w} for e, w in zip(expected, wrong, strict=True)]
    with pytest.raises(AssertionError, match="max"):
        compare_records(got, expected, "wrong")
