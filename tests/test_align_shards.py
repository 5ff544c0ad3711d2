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
