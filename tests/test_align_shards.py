"""Statistics fitted on shards merge exactly into the statistics of all rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_align_oracle import make_store

from revision.align import AlignConfig, fit_stores
from revision.align.engine import centroid_pass
from revision.align.shards import merge_centroids, merge_pass1
from revision.errors import UserError


@pytest.mark.parametrize("method", ["realign", "realign-ot"])
def test_sharded_fit_equals_whole_fit(tmp_path: Path, method: str) -> None:
    rng = np.random.default_rng(9)
    text = (rng.normal(size=(700, 10)) + 1.0).astype(np.float32)
    image = (rng.normal(size=(500, 10)) * np.linspace(0.2, 1, 10) - 1.0).astype(np.float32)
    cfg = AlignConfig(method=method, progress=False)
    whole, _ = fit_stores(
        make_store(tmp_path / "t.zarr", text, "text", dtype="float32"),
        make_store(tmp_path / "i.zarr", image, "image", dtype="float32"),
        cfg,
    )
    cuts_t, cuts_i = [0, 123, 400, 700], [0, 311, 312, 500]
    shards = []
    for k in range(3):
        ts = make_store(tmp_path / f"t{k}.zarr", text[cuts_t[k] : cuts_t[k + 1]], "text", dtype="float32")
        ims = make_store(tmp_path / f"i{k}.zarr", image[cuts_i[k] : cuts_i[k + 1]], "image", dtype="float32")
        shards.append((ts, ims))
    parts = [fit_stores(ts, ims, cfg, centroid=False)[0] for ts, ims in shards]
    assert all(p.sum_h is None for p in parts)
    global1 = merge_pass1(parts, cfg)
    merged = merge_centroids([centroid_pass(ts, global1, cfg)[0] for ts, _ in shards])

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max() / b.abs().max())

    assert merged.text.n == 700 and merged.image is not None and merged.image.n == 500
    assert rel(merged.text.m2, whole.text.m2) < 1e-12 and rel(merged.image.m2, whole.image.m2) < 1e-12
    assert abs(merged.scale / whole.scale - 1) < 1e-12
    assert rel(merged.sum_h, whole.sum_h) < 1e-12
    if method == "realign-ot":
        assert rel(merged.matrix, whole.matrix) < 1e-9
    # A part fitted against other pass-1 statistics is refused.
    own = fit_stores(*shards[0], cfg)[0]
    with pytest.raises(UserError, match="other pass-1"):
        merge_centroids([centroid_pass(shards[1][0], global1, cfg)[0], own])


def test_sharded_fit_through_the_cli(tmp_path: Path) -> None:
    from revision.align import load_stats
    from revision.cli import main

    rng = np.random.default_rng(12)
    text = (rng.normal(size=(300, 6)) + 1.0).astype(np.float32)
    image = (rng.normal(size=(260, 6)) - 1.0).astype(np.float32)
    make_store(tmp_path / "t.zarr", text, "text", dtype="float32")
    make_store(tmp_path / "i.zarr", image, "image", dtype="float32")
    for k, (a, b, c, d) in enumerate([(0, 100, 0, 200), (100, 300, 200, 260)]):
        make_store(tmp_path / f"t{k}.zarr", text[a:b], "text", dtype="float32")
        make_store(tmp_path / f"i{k}.zarr", image[c:d], "image", dtype="float32")
        assert main(["fit", "--text", str(tmp_path / f"t{k}.zarr"), "--image", str(tmp_path / f"i{k}.zarr"),
                     "--stats", str(tmp_path / f"p{k}.json"), "--pass1-only", "--no-progress"]) == 0  # fmt: skip
    assert main(["fit", "--merge", str(tmp_path / "p0.json"), str(tmp_path / "p1.json"),
                 "--stats", str(tmp_path / "pass1.json")]) == 0  # fmt: skip
    for k in range(2):
        assert main(["fit", "--text", str(tmp_path / f"t{k}.zarr"), "--centroid-from", str(tmp_path / "pass1.json"),
                     "--stats", str(tmp_path / f"c{k}.json"), "--no-progress"]) == 0  # fmt: skip
    # Mixing a pass-1 file with a pass-2 file is refused.
    assert main(["fit", "--merge", str(tmp_path / "p0.json"), str(tmp_path / "c1.json"),
                 "--stats", str(tmp_path / "bad.json")]) == 2  # fmt: skip
    assert main(["fit", "--merge", str(tmp_path / "c0.json"), str(tmp_path / "c1.json"),
                 "--stats", str(tmp_path / "merged.json")]) == 0  # fmt: skip
    assert main(["fit", "--text", str(tmp_path / "t.zarr"), "--image", str(tmp_path / "i.zarr"),
                 "--stats", str(tmp_path / "whole.json"), "--no-progress"]) == 0  # fmt: skip
    merged, whole = load_stats(tmp_path / "merged.json"), load_stats(tmp_path / "whole.json")
    assert merged.n_hat == whole.n_hat == 300
    assert abs(merged.scale / whole.scale - 1) < 1e-12
    assert float((merged.mu_hat - whole.mu_hat).abs().max()) < 1e-13


def _two_shards(tmp_path: Path) -> None:
    """t0/i0, t1/i1 with pass-1 files p0, p1, the merged pass1.json and pass-2 files c0, c1."""
    from revision.cli import main

    rng = np.random.default_rng(21)
    for k in range(2):
        make_store(tmp_path / f"t{k}.zarr", (rng.normal(size=(150, 6)) + 1.0).astype(np.float32), "text",
                   dtype="float32", prefix=f"t{k}-").close()  # fmt: skip
        make_store(tmp_path / f"i{k}.zarr", (rng.normal(size=(120, 6)) - 1.0).astype(np.float32), "image",
                   dtype="float32", prefix=f"i{k}-").close()  # fmt: skip
        assert main(["fit", "--text", str(tmp_path / f"t{k}.zarr"), "--image", str(tmp_path / f"i{k}.zarr"),
                     "--stats", str(tmp_path / f"p{k}.json"), "--pass1-only", "--no-progress"]) == 0  # fmt: skip
    assert main(["fit", "--merge", str(tmp_path / "p0.json"), str(tmp_path / "p1.json"),
                 "--stats", str(tmp_path / "pass1.json")]) == 0  # fmt: skip
    for k in range(2):
        assert main(["fit", "--text", str(tmp_path / f"t{k}.zarr"), "--centroid-from", str(tmp_path / "pass1.json"),
                     "--stats", str(tmp_path / f"c{k}.json"), "--no-progress"]) == 0  # fmt: skip


def test_merge_refuses_the_same_shard_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from revision.cli import main

    _two_shards(tmp_path)
    capsys.readouterr()
    out = str(tmp_path / "bad.json")
    p0, c0 = str(tmp_path / "p0.json"), str(tmp_path / "c0.json")
    # The same path (also spelled differently) and the same content under another name.
    shutil.copy(p0, tmp_path / "p0-copy.json")
    shutil.copy(c0, tmp_path / "c0-copy.json")
    for files, why in (
        ([p0, p0], "same file"),
        ([p0, str(tmp_path / "." / "p0.json")], "same file"),
        ([p0, str(tmp_path / "p1.json"), str(tmp_path / "p0-copy.json")], "same statistics"),
        ([c0, str(tmp_path / "c0-copy.json")], "same statistics"),
    ):
        assert main(["fit", "--merge", *files, "--stats", out]) == 2, files
        err = capsys.readouterr().err.strip()
        assert err.startswith(("revision fit: error: --merge", "revision fit: error: merge")), err
        assert why in err and "\n" not in err, err
    assert not (tmp_path / "bad.json").exists()


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--merge", "p0.json", "p1.json", "--text", "t0.zarr"], "--text"),
        (["--merge", "p0.json", "p1.json", "--image", "i0.zarr"], "--image"),
        (["--merge", "p0.json", "p1.json", "--pass1-only"], "--pass1-only"),
        (["--merge", "p0.json", "p1.json", "--method", "realign-ot"], "--method"),
        (["--merge", "c0.json", "c1.json", "--shrinkage", "0.5"], "--shrinkage"),
        (["--text", "t0.zarr", "--centroid-from", "pass1.json", "--method", "mean-shift"], "--method"),
        (["--text", "t0.zarr", "--centroid-from", "pass1.json", "--image", "i0.zarr"], "--image"),
        (["--text", "t0.zarr", "--centroid-from", "pass1.json", "--export-trace-stats", "x.pkl"], "--export-trace"),
        (["--text", "t0.zarr", "--image", "i0.zarr", "--method", "mean-shift", "--export-trace-stats", "x.pkl"],
         "--method mean-shift"),
        (["--text", "t0.zarr", "--image", "i0.zarr", "--pass1-only", "--export-trace-stats", "x.pkl"],
         "--pass1-only"),
        (["--text", "t0.zarr", "--image", "i0.zarr", "--method", "gap-shift", "--gap-lambda", "-1"], "--gap-lambda"),
    ],
)  # fmt: skip
def test_fit_refuses_flags_it_would_ignore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], named: str
) -> None:
    from revision.cli import main

    _two_shards(tmp_path)
    capsys.readouterr()
    args = [str(tmp_path / f) if f.endswith((".json", ".zarr", ".pkl")) else f for f in flags]
    assert main(["fit", *args, "--stats", str(tmp_path / "out.json"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("revision fit: error:") and named in err and "\n" not in err, err
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "x.pkl").exists()


def test_trace_stats_export_from_the_final_merge(tmp_path: Path) -> None:
    import pickle

    from revision.cli import main

    _two_shards(tmp_path)
    pkl = tmp_path / "trace_stats.pkl"
    assert main(["fit", "--merge", str(tmp_path / "c0.json"), str(tmp_path / "c1.json"),
                 "--stats", str(tmp_path / "final.json"), "--export-trace-stats", str(pkl)]) == 0  # fmt: skip
    record = pickle.loads(pkl.read_bytes())
    assert record["mu_hat"].shape == (6,) and record["strict_finite"] is True
    # A pass-1 merge has no centroid: refused before the stats file is written.
    p0, p1 = str(tmp_path / "p0.json"), str(tmp_path / "p1.json")
    x = str(tmp_path / "x.pkl")
    assert main(["fit", "--merge", p0, p1, "--stats", str(tmp_path / "p.json"), "--export-trace-stats", x]) == 2
    assert not (tmp_path / "p.json").exists() and not (tmp_path / "x.pkl").exists()
