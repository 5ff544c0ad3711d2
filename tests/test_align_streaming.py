"""Streaming equals in-memory: the out-of-core passes against the float64 oracle, for random chunkings."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_align_oracle import make_store, oracle_realign, unit

from revision.align import AlignConfig, align_stores, fit_stores
from revision.store import FeatureStore

TOL = {"float32": 2e-6, "float16": 2e-6, "bfloat16": 2e-6}


def gapped(rng: np.random.Generator, n: int, d: int, offset: float) -> np.ndarray:
    """Rows around a direction: a cone with a modality gap between text (offset) and image."""
    centre = np.zeros(d)
    centre[0] = 1.0
    centre[min(1, d - 1)] += offset
    return (centre + rng.normal(scale=0.4, size=(n, d)) * rng.uniform(0.5, 1.5, size=d)).astype(np.float32)


def _report(a: np.ndarray, b: np.ndarray) -> str:
    d = np.abs(a.astype(np.float64) - b)
    return f"max {d.max():.3g} at {np.unravel_index(d.argmax(), d.shape)}, mean {d.mean():.3g}"


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_text=st.integers(16, 300),
    n_image=st.integers(16, 300),
    dim=st.sampled_from([2, 7, 33]),
    chunk_t=st.integers(1, 64),
    chunk_i=st.integers(1, 64),
    block=st.integers(1, 200),
    dtype=st.sampled_from(["float16", "float32", "bfloat16"]),
    seed=st.integers(0, 2**16),
)
def test_streaming_align_equals_oracle(
    n_text: int, n_image: int, dim: int, chunk_t: int, chunk_i: int, block: int, dtype: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    text = gapped(rng, n_text, dim, 0.8)
    image = gapped(rng, n_image, dim, -0.3)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ts = make_store(root / "t.zarr", text, "text", chunk_rows=chunk_t, dtype=dtype)
        ims = make_store(root / "i.zarr", image, "image", chunk_rows=chunk_i, dtype=dtype)
        # The oracle sees exactly the stored values (fp16/bf16 rounding happens at storage).
        t_stored = ts.read().view(np.uint16) if dtype == "bfloat16" else ts.read()
        i_stored = ims.read().view(np.uint16) if dtype == "bfloat16" else ims.read()
        if dtype == "bfloat16":
            t_stored = torch.from_numpy(t_stored.view(np.int16)).view(torch.bfloat16).float().numpy()
            i_stored = torch.from_numpy(i_stored.view(np.int16)).view(torch.bfloat16).float().numpy()
        ref = oracle_realign(t_stored, i_stored)
        res = align_stores(ts, ims, root / "a.zarr", block_rows=block, commit_rows=max(1, n_text // 3), progress=False)
        out = FeatureStore.open(root / "a.zarr")
        got = out.read()
        assert out.rows == n_text and list(out.read_ids()) == list(ts.read_ids())
        assert np.abs(got - ref["out"]).max() <= TOL[dtype], _report(got, ref["out"])
        st_ = res.stats
        # Unit rows are formed in fp32 (as the kernels do): the scale carries ~1e-7 relative noise.
        assert abs(st_.scale / ref["scale"] - 1) < 1e-6
        np.testing.assert_allclose(st_.mu_hat.numpy(), ref["mu_hat"], atol=1e-6)
        # Rounded to float32 from fp32-formed unit rows: at most one float32 ulp from the oracle's.
        np.testing.assert_allclose(st_.mu_t.numpy(), ref["mu_t"], rtol=0, atol=1.2e-7)


@settings(max_examples=10, deadline=None)
@given(n=st.integers(2, 400), chunks=st.lists(st.integers(1, 97), min_size=2, max_size=4), seed=st.integers(0, 999))
def test_stats_do_not_depend_on_chunking(n: int, chunks: list[int], seed: int) -> None:
    """Pass-1/2 statistics agree to 1e-12 relative whatever the chunk and block sizes.

    With the means rounded to float32 (the reference's step, on by default) too: a 1e-16 difference
    in a mean would become a float32 ulp when the exact mean lies on a float32 tie, which means of
    float32 data do about once per thousand columns; means from column totals are chunking-free.
    """
    rng = np.random.default_rng(seed)
    text = gapped(rng, n, 16, 0.5)
    image = gapped(rng, n + 3, 16, -0.5)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, c in enumerate(chunks):
            ts = make_store(Path(tmp) / f"t{k}.zarr", text, "text", chunk_rows=c, dtype="float32")
            ims = make_store(Path(tmp) / f"i{k}.zarr", image, "image", chunk_rows=c + 1, dtype="float32")
            stats, _ = fit_stores(ts, ims, AlignConfig(block_rows=c * 2, progress=False))
            results.append(stats)
    base = results[0]
    for other in results[1:]:
        for a, b in ((base.text.m2, other.text.m2), (base.image.m2, other.image.m2), (base.sum_h, other.sum_h)):
            rel = float((a - b).abs().max() / b.abs().max())
            assert rel < 1e-12, f"relative difference {rel:.3g}"
        assert abs(base.scale / other.scale - 1) < 1e-12
        assert abs(base.trace_t / other.trace_t - 1) < 1e-12


def test_a_per_block_centroid_is_rejected(tmp_path: Path) -> None:
    """A wrong streaming shortcut (centroid correction per block instead of global) fails the check."""
    rng = np.random.default_rng(3)
    text = gapped(rng, 200, 8, 0.8)
    text[:100] += 0.7  # blocks that differ, so per-block centroids differ from the global one
    image = gapped(rng, 150, 8, -0.3)
    ref = oracle_realign(text, image)
    t, i = unit(text), unit(image)
    wrong = []
    for s in range(0, 200, 50):
        h = unit(ref["mu_i"] + ref["scale"] * (t[s : s + 50] - ref["mu_t"]))
        wrong.append(unit(h - h.mean(0) + ref["mu_i"]))
    assert i.shape[0] == 150
    assert np.abs(np.concatenate(wrong) - ref["out"]).max() > TOL["float32"]


def test_out_dtypes(tmp_path: Path) -> None:
    """--out-dtype float16 / bfloat16 store the same rows, rounded once."""
    rng = np.random.default_rng(8)
    ts = make_store(tmp_path / "t.zarr", gapped(rng, 150, 24, 0.8), "text", chunk_rows=32)
    ims = make_store(tmp_path / "i.zarr", gapped(rng, 170, 24, -0.3), "image", chunk_rows=32)
    align_stores(ts, ims, tmp_path / "f32.zarr", progress=False)
    ref = FeatureStore.open(tmp_path / "f32.zarr").read()
    for dtype, tol in (("float16", 1e-3), ("bfloat16", 8e-3)):
        align_stores(ts, ims, tmp_path / f"{dtype}.zarr", out_dtype=dtype, progress=False)
        st_ = FeatureStore.open(tmp_path / f"{dtype}.zarr")
        assert st_.dtype == dtype
        got = to_float(st_.read(), dtype)
        assert np.abs(got - ref).max() <= tol, _report(got, ref)
        assert np.abs(got - ref).max() > 0  # it really was rounded


def to_float(block: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return torch.from_numpy(block.view(np.int16)).view(torch.bfloat16).float().numpy()
    return block.astype(np.float32)


def test_text_only_methods_fit_without_images(tmp_path: Path) -> None:
    from revision.cli import main

    rng = np.random.default_rng(2)
    make_store(tmp_path / "t.zarr", gapped(rng, 90, 8, 0.5), "text", chunk_rows=16)
    for method in ("c3", "capdec", "mean-shift"):
        stats = tmp_path / f"{method}.json"
        assert main(["fit", "--text", str(tmp_path / "t.zarr"), "--stats", str(stats), "--method", method,
                     "--no-progress"]) == 0  # fmt: skip
        assert main(["apply", "--text", str(tmp_path / "t.zarr"), "--stats", str(stats),
                     "--out", str(tmp_path / f"{method}.zarr"), "--no-progress"]) == 0  # fmt: skip
        assert FeatureStore.open(tmp_path / f"{method}.zarr").rows == 90
    assert main(["fit", "--text", str(tmp_path / "t.zarr"), "--stats", str(tmp_path / "r.json")]) == 2


def test_triton_kernels_through_the_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The passes on the Triton kernels (interpreted on CPU here; on CUDA with --device cuda) equal the oracle."""
    pytest.importorskip("triton")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    monkeypatch.setenv("REVISION_KERNELS", "triton")
    rng = np.random.default_rng(4)
    text, image = gapped(rng, 40, 8, 0.8), gapped(rng, 30, 8, -0.3)
    ts = make_store(tmp_path / "t.zarr", text, "text", chunk_rows=16, dtype="float32")
    ims = make_store(tmp_path / "i.zarr", image, "image", chunk_rows=16, dtype="float32")
    res = align_stores(ts, ims, tmp_path / "a.zarr", progress=False)
    ref = oracle_realign(text, image)
    got = FeatureStore.open(tmp_path / "a.zarr").read()
    assert np.abs(got - ref["out"]).max() <= 1e-5, _report(got, ref["out"])
    assert abs(res.stats.scale / ref["scale"] - 1) < 1e-6
