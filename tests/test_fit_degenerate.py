"""Degenerate statistics (too few rows, all rows alike) are refused, or warned about under --no-strict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_align_oracle import make_store

from revision.align import AlignConfig, fit_stores
from revision.align.shards import merge_pass1
from revision.align.stats import FEW_ROWS, ZERO_TRACE, degenerate_findings
from revision.cli import main
from revision.errors import UserError


def _stores(tmp_path: Path, text: np.ndarray, image: np.ndarray) -> tuple[str, str]:
    make_store(tmp_path / "t.zarr", text.astype(np.float32), "text", dtype="float32").close()
    make_store(tmp_path / "i.zarr", image.astype(np.float32), "image", dtype="float32").close()
    return str(tmp_path / "t.zarr"), str(tmp_path / "i.zarr")


def _image(rows: int = 300, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, 16)) - 0.5


def _fit(tmp_path: Path, text: str, image: str, *extra: str) -> int:
    return main(["fit", "--text", text, "--image", image, "--stats", str(tmp_path / "s.json"), "--no-progress", *extra])


@pytest.mark.parametrize(
    ("text", "what"),
    [
        (np.random.default_rng(1).normal(size=(1, 16)), "1 text row"),
        (np.tile(np.random.default_rng(2).normal(size=(1, 16)), (500, 1)), "text trace"),
    ],
    ids=["one-row", "identical-rows"],
)
def test_degenerate_text_is_refused_then_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: np.ndarray, what: str
) -> None:
    t, i = _stores(tmp_path, text, _image())
    assert _fit(tmp_path, t, i) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("revision fit: error: --text") and what in err and "--no-strict" in err, err
    assert "\n" not in err and not (tmp_path / "s.json").exists()

    assert _fit(tmp_path, t, i, "--no-strict") == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and what in warnings[0] and "scale" in warnings[0], err
    assert (tmp_path / "s.json").exists()


def test_identical_rows_scale_is_what_the_warning_guards_against(tmp_path: Path) -> None:
    """The case from the issue: all text rows alike give s ≈ 88,000 (T_t ≈ 0 against T_i ≈ 0.77)."""
    text = np.tile(np.random.default_rng(2).normal(size=(1, 16)), (500, 1))
    t, i = _stores(tmp_path, text, _image())
    stats, _ = fit_stores(t, i, AlignConfig(progress=False, strict=False))
    assert stats.scale is not None and stats.scale > 10_000
    assert stats.trace_t <= ZERO_TRACE
    assert [serious for serious, _ in degenerate_findings(stats)] == [True]


def test_identical_image_rows_are_refused(tmp_path: Path) -> None:
    image = np.tile(np.random.default_rng(3).normal(size=(1, 16)), (300, 1))
    t, i = _stores(tmp_path, _image(400, seed=4) + 1.0, image)
    with pytest.raises(UserError, match="image trace"):
        fit_stores(t, i, AlignConfig(progress=False))


def test_few_rows_warn_even_under_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t, i = _stores(tmp_path, _image(40, seed=5) + 1.0, _image())
    assert _fit(tmp_path, t, i) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"only 40 text rows (fewer than {FEW_ROWS})" in warnings[0]


def test_ordinary_fit_is_silent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t, i = _stores(tmp_path, _image(400, seed=6) + 1.0, _image())
    assert _fit(tmp_path, t, i) == 0
    assert "warning" not in capsys.readouterr().err


def test_align_refuses_before_writing(tmp_path: Path) -> None:
    t, i = _stores(tmp_path, np.random.default_rng(1).normal(size=(1, 16)), _image())
    out = tmp_path / "a.zarr"
    assert main(["align", "--text", t, "--image", i, "--out", str(out), "--no-progress"]) == 2
    assert not out.exists()


def test_pass1_shards_are_not_judged_but_their_merge_is(tmp_path: Path) -> None:
    """One row per shard is fine for a shard's pass 1; the merged statistics are what must hold up."""
    row = np.random.default_rng(7).normal(size=(1, 16)).astype(np.float32)
    cfg = AlignConfig(progress=False)
    parts = []
    for k in range(2):
        make_store(tmp_path / f"t{k}.zarr", row, "text", dtype="float32", prefix=f"t{k}").close()
        make_store(tmp_path / f"i{k}.zarr", _image(50, seed=k).astype(np.float32), "image").close()
        parts.append(fit_stores(tmp_path / f"t{k}.zarr", tmp_path / f"i{k}.zarr", cfg, centroid=False)[0])
    with pytest.raises(UserError, match="merged statistics: .*text trace"):
        merge_pass1(parts, cfg)
