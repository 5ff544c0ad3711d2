"""FAISS edges of diagnose: tiny modalities in IVF mode, thread count (affinity, restored), the
recall reference's memory."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import faiss
import numpy as np
import pytest

from revision.diagnose import neighbours
from revision.diagnose.neighbours import exact_topk, knn_metrics, pick_threads


def unit(rng: np.random.Generator, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    x = rng.normal(size=(n, d)) + shift
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def simple_topk(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """All scores at once, sorted by score descending then row ascending: the specification."""
    sims = queries @ base.T
    order = np.lexsort((np.broadcast_to(np.arange(len(base)), sims.shape), -sims), axis=1)[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


@pytest.mark.parametrize(("n_t", "n_i"), [(30, 400), (400, 20), (1, 3)])
def test_ivf_mode_with_a_tiny_modality(n_t: int, n_i: int) -> None:
    """Fewer than 39 rows in one modality made nlist 0 (a FAISS RuntimeError); such a modality is
    now searched exactly, and the result equals a fully exact run wherever recall is perfect."""
    rng = np.random.default_rng(1)
    text, image = unit(rng, max(n_t, 2), 16, 0.5), unit(rng, n_i, 16, -0.5)
    k = min(5, len(text) - 1 + n_i)
    ivf = knn_metrics(text, image, k=k, seed=0, exact_limit=10, gpu=False, threads=1)
    exact = knn_metrics(text, image, k=k, seed=0, gpu=False, threads=1)
    assert "flat-ip" in ivf["faiss"]["index"]
    if ivf["faiss"].get("recall_vs_exact") == 1.0:
        assert ivf["knn_mixing"] == exact["knn_mixing"]
    assert ivf["top1_cross_cosine"] == pytest.approx(exact["top1_cross_cosine"], abs=0.05)


def test_thread_count_is_restored() -> None:
    rng = np.random.default_rng(2)
    text, image = unit(rng, 300, 8), unit(rng, 300, 8)
    before = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(3)
        knn_metrics(text, image, k=5, seed=0, gpu=False, threads=1)
        assert faiss.omp_get_max_threads() == 3
        out = knn_metrics(text, image, k=5, seed=0, gpu=False, threads=None)
        assert faiss.omp_get_max_threads() == 3, out["faiss"]
        pick_threads(faiss.IndexFlatIP(8), text[:10], 3)
        assert faiss.omp_get_max_threads() == 3
    finally:
        faiss.omp_set_num_threads(before)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_thread_candidates_follow_the_affinity_mask() -> None:
    rng = np.random.default_rng(3)
    x = unit(rng, 200, 8)
    index = faiss.IndexFlatIP(8)
    index.add(x)
    mask = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(mask)})
        threads, timings = pick_threads(index, x[:50], 5)
    finally:
        os.sched_setaffinity(0, mask)
    assert (threads, list(timings)) == (1, ["1"])


@pytest.mark.parametrize(("block", "block_elements"), [(256, None), (7, 7 * 13), (64, 64 * 500), (1, 1)])
def test_blockwise_exact_topk_equals_the_simple_computation(block: int, block_elements: int | None) -> None:
    rng = np.random.default_rng(4)
    base = unit(rng, 3001, 16)
    base[2000:2010] = base[5]  # exact ties: broken by row, whatever the blocking
    queries = np.concatenate([unit(rng, 60, 16), base[[5, 17]]])
    want_s, want_i = simple_topk(queries, base, 11)
    got_s, got_i = exact_topk(queries, base, 11, block=block, block_elements=block_elements)
    assert np.array_equal(got_i, want_i), np.argwhere(got_i != want_i)[:5]
    # BLAS may round a one-query product (a GEMV) differently from a GEMM in the last bit.
    np.testing.assert_allclose(got_s, want_s, rtol=0, atol=1e-6)
    # k larger than the base: every row, in order.
    s_all, i_all = exact_topk(queries[:3], base[:9], 50, block=2, block_elements=4)
    assert i_all.shape == (3, 9) and np.array_equal(i_all, simple_topk(queries[:3], base[:9], 9)[1])


def test_recall_reference_unchanged_by_a_small_block(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    text, image = unit(rng, 900, 16, 0.3), unit(rng, 700, 16, -0.3)
    q = np.arange(0, 900, 7)
    want = neighbours._exact_pooled(text, image, q, 10)
    monkeypatch.setattr(neighbours, "EXACT_BLOCK_ELEMENTS", 300)
    assert neighbours._exact_pooled(text, image, q, 10) == want
    ivf = knn_metrics(text, image, k=10, seed=0, exact_limit=100, gpu=False, threads=1)
    assert ivf["faiss"]["recall_queries"] > 0
    monkeypatch.setattr(neighbours, "EXACT_BLOCK_ELEMENTS", 1 << 22)
    assert knn_metrics(text, image, k=10, seed=0, exact_limit=100, gpu=False, threads=1) == ivf


def test_recall_reference_memory_is_bounded_by_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """256 queries against 60,000 rows: all scores at once are 61 MB (and more for their sort); the
    blocked reference stays within a few blocks of EXACT_BLOCK_ELEMENTS, and answers the same."""
    rng = np.random.default_rng(6)
    base = unit(rng, 60_000, 8)
    queries = base[:256].copy()
    want = exact_topk(queries, base, 11)
    monkeypatch.setattr(neighbours, "EXACT_BLOCK_ELEMENTS", 1 << 16, raising=False)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        got = exact_topk(queries, base, 11)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"peak {peak / 2**20:.1f} MiB"
    assert np.array_equal(got[1], want[1])


def test_k_beyond_the_sample_is_refused_naming_the_cap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_align_oracle import make_store

    from revision.cli import main

    rng = np.random.default_rng(7)
    make_store(tmp_path / "t.zarr", unit(rng, 30, 8, 0.5), "text").close()
    make_store(tmp_path / "i.zarr", unit(rng, 25, 8, -0.5), "image").close()
    args = ["diagnose", "--text", str(tmp_path / "t.zarr"), "--image", str(tmp_path / "i.zarr"), "--quiet"]
    assert main([*args, "--k", "60", "--out", str(tmp_path / "d1")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("revision diagnose: error: --k 60") and "--k 54 or less" in err and "\n" not in err
    assert not (tmp_path / "d1" / "metrics.json").exists()
    assert main([*args, "--k", "54", "--threads", "1", "--out", str(tmp_path / "d2")]) == 0
    assert json.loads((tmp_path / "d2" / "metrics.json").read_text())["raw"]["knn_k"] == 54
