"""Bad input → a clear one-line error, exit status 2, nothing half-written."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from test_align_oracle import make_store, oracle_realign

from revision.cli import main
from revision.store import FeatureStore


def _pair(tmp: Path, n: int = 120, d: int = 8, d_image: int | None = None, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    make_store(tmp / "t.zarr", (rng.normal(size=(n, d)) + 1).astype(np.float32), "text", chunk_rows=16)
    di = d if d_image is None else d_image
    make_store(tmp / "i.zarr", (rng.normal(size=(n + 5, di)) - 1).astype(np.float32), "image", chunk_rows=16)
    return tmp / "t.zarr", tmp / "i.zarr"


def _align(t: Path, i: Path, out: Path, *extra: str) -> int:
    return main(["align", "--text", str(t), "--image", str(i), "--out", str(out), "--no-progress", *extra])


def test_dims_differ(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t, i = _pair(tmp_path, d=8, d_image=9)
    assert _align(t, i, tmp_path / "a.zarr") == 2
    err = capsys.readouterr().err
    assert "dim 8" in err and "dim 9" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a.zarr").exists()


def test_empty_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, i = _pair(tmp_path)
    make_store(tmp_path / "e.zarr", np.zeros((0, 8), np.float32), "text")
    assert _align(tmp_path / "e.zarr", i, tmp_path / "a.zarr") == 2
    assert "empty store" in capsys.readouterr().err
    assert not (tmp_path / "a.zarr").exists()


def test_swapped_modalities(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t, i = _pair(tmp_path)
    assert _align(i, t, tmp_path / "a.zarr") == 2
    assert "--text" in capsys.readouterr().err


@pytest.mark.parametrize("where", [0, 37, 119])
def test_nonfinite_names_store_and_row(tmp_path: Path, where: int, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(120, 8)) + 1).astype(np.float32)
    x[where, 3] = np.nan if where != 37 else np.inf
    make_store(tmp_path / "t.zarr", x, "text", chunk_rows=16)
    (tmp_path / "x").mkdir()
    _, i = _pair(tmp_path / "x", seed=2)
    assert _align(tmp_path / "t.zarr", i, tmp_path / "a.zarr") == 2
    err = capsys.readouterr().err
    assert f"row {where} " in err and "t.zarr" in err and "NaN or infinite" in err
    assert not (tmp_path / "a.zarr").exists()


def test_zero_row_strict_and_not(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(100, 8)) + 1).astype(np.float32)
    x[42] = 0
    (tmp_path / "x").mkdir()
    make_store(tmp_path / "t.zarr", x, "text", chunk_rows=16, dtype="float32")
    _, i = _pair(tmp_path / "x", seed=4)
    assert _align(tmp_path / "t.zarr", i, tmp_path / "a.zarr") == 2
    assert "row 42" in capsys.readouterr().err and not (tmp_path / "a.zarr").exists()
    # --no-strict keeps the reference's behaviour: the zero row is not normalised, then aligned.
    assert _align(tmp_path / "t.zarr", i, tmp_path / "a.zarr", "--no-strict") == 0
    ref = oracle_realign(x, FeatureStore.open(i).read())
    got = FeatureStore.open(tmp_path / "a.zarr").read()
    assert np.abs(got - ref["out"]).max() < 2e-6


def test_apply_refuses_stats_of_other_dim_or_method(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t, i = _pair(tmp_path)
    assert main(["fit", "--text", str(t), "--image", str(i), "--stats", str(tmp_path / "s.json"), "--no-progress"]) == 0
    (tmp_path / "o").mkdir()
    t9, _ = _pair(tmp_path / "o", d=9)
    assert (
        main(["apply", "--text", str(t9), "--stats", str(tmp_path / "s.json"), "--out", str(tmp_path / "a.zarr")]) == 2
    )
    assert "dim 8" in capsys.readouterr().err and not (tmp_path / "a.zarr").exists()
    args = ["apply", "--text", str(t), "--stats", str(tmp_path / "s.json"), "--out", str(tmp_path / "a.zarr")]
    assert main([*args, "--method", "c3"]) == 2
    assert "realign" in capsys.readouterr().err
    doc = json.loads((tmp_path / "s.json").read_text())
    doc["vectors"]["mu_t"] = doc["vectors"]["mu_t"][:-1]
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    args[4] = str(tmp_path / "bad.json")
    assert main(args) == 2
    assert "bad.json" in capsys.readouterr().err and not (tmp_path / "a.zarr").exists()


def test_out_exists_unrelated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t, i = _pair(tmp_path)
    before = sorted(p.name for p in (tmp_path / "i.zarr").rglob("*"))
    assert _align(t, i, i) == 2
    assert "is the input --image" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "i.zarr").rglob("*")) == before


def _write_pkls(d: Path, kind: str, x: np.ndarray, per_file: int) -> None:
    d.mkdir(parents=True)
    for k, s in enumerate(range(0, len(x), per_file), start=1):
        recs = [{"id": f"{kind}{j}", "caption": f"c{j}", "embed": x[j]} for j in range(s, min(len(x), s + per_file))]
        with open(d / f"{kind}_embeds_{k}.pkl", "wb") as fh:
            pickle.dump(recs, fh, protocol=4)


def _align_pkl(tmp: Path, *extra: str) -> int:
    return main(["align-pkl", "--input_dir", str(tmp / "text"), "--img_input_dir", str(tmp / "image"),
                 "--output_dir", str(tmp / "out"), "--no-progress", *extra])  # fmt: skip


def test_align_pkl_nonfinite_and_zero_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(5)
    t = (rng.normal(size=(90, 8)) + 1).astype(np.float16)
    im = (rng.normal(size=(70, 8)) - 1).astype(np.float16)
    t[50] = 0  # kept, unscaled: the reference's behaviour in the compatible path
    t[61, 2] = np.nan
    _write_pkls(tmp_path / "text", "text", t, 40)
    _write_pkls(tmp_path / "image", "image", im, 40)
    assert _align_pkl(tmp_path) == 2
    err = capsys.readouterr().err
    assert "text_embeds_2.pkl: item 21 (id 'text61')" in err
    assert not (tmp_path / "out" / "trace").exists() and not (tmp_path / "out" / "trace_stats.pkl").exists()
    assert _align_pkl(tmp_path, "--strict_finite", "0") == 0
    ref = oracle_realign(t, im)
    got = []
    for k in (1, 2, 3):
        with open(tmp_path / "out" / "trace" / f"text_embeds_{k}_trace.pkl", "rb") as fh:
            got += [r["embed"] for r in pickle.load(fh)]
    assert np.abs(np.stack(got) - ref["out"]).max() < 2e-6


def test_align_pkl_dims_differ(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(6)
    _write_pkls(tmp_path / "text", "text", rng.normal(size=(10, 8)).astype(np.float16), 5)
    _write_pkls(tmp_path / "image", "image", rng.normal(size=(10, 6)).astype(np.float16), 5)
    assert _align_pkl(tmp_path) == 2
    err = capsys.readouterr().err
    assert "has 8 values" in err and "image_embeds_1.pkl has 6" in err


def test_refused_align_keeps_existing_stats(tmp_path: Path) -> None:
    t, i = _pair(tmp_path)
    assert _align(t, i, tmp_path / "a.zarr") == 0
    before = (tmp_path / "a.zarr.stats.json").read_bytes()
    assert _align(t, i, tmp_path / "a.zarr", "--method", "gap-shift") == 2
    assert (tmp_path / "a.zarr.stats.json").read_bytes() == before
