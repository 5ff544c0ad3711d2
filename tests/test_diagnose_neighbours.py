"""FAISS k-NN metrics against brute force, and the known answers of constructed cases."""

from __future__ import annotations

import numpy as np
import pytest

from revision.diagnose.neighbours import _drop_self, exact_topk, knn_metrics


def cone(n: int, d: int, axis: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    x = axis + spread * rng.standard_normal((n, d)) * np.linspace(1.5, 0.2, d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def unit_axis(d: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(d)
    return v / np.linalg.norm(v)


def mixing_brute(t: np.ndarray, i: np.ndarray, k: int) -> tuple[float, float, float]:
    """Pooled brute-force k-NN of each text row (itself excluded): mixing, top-1 cross, top-1 intra."""
    pooled = np.concatenate([t, i]).astype(np.float64)
    sims = t.astype(np.float64) @ pooled.T
    sims[np.arange(len(t)), np.arange(len(t))] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    mixing = float((order >= len(t)).mean())
    cross = float(sims[:, len(t) :].max(axis=1).mean())
    intra = float(sims[:, : len(t)].max(axis=1).mean())
    return mixing, cross, intra


@pytest.mark.parametrize(("n_t", "n_i", "d", "k"), [(2, 1, 3, 1), (37, 53, 17, 5), (400, 300, 64, 10)])
def test_knn_matches_brute_force(n_t: int, n_i: int, d: int, k: int) -> None:
    rng = np.random.default_rng(n_t + d)
    t = cone(n_t, d, unit_axis(d, rng), 1.0, rng)
    i = cone(n_i, d, unit_axis(d, rng), 1.0, rng)
    m = knn_metrics(t, i, k=k, seed=0, threads=1)
    k_eff = min(k, n_t - 1 + n_i)
    want_mix, want_cross, want_intra = mixing_brute(t, i, k_eff)
    assert abs(m["knn_mixing"] - want_mix) < 1e-9, f"mixing {m['knn_mixing']} vs brute force {want_mix}"
    assert abs(m["top1_cross_cosine"] - want_cross) < 1e-5
    assert abs(m["top1_intra_cosine"] - want_intra) < 1e-5
    assert m["knn_mixing_ideal"] == n_i / (n_t + n_i - 1)
    assert sum(m["neighbour_image_counts"]) == n_t


def test_identical_distributions_mix_ideally_and_disjoint_not_at_all() -> None:
    rng = np.random.default_rng(1)
    d = 16
    axis = unit_axis(d, rng)
    same = knn_metrics(cone(3000, d, axis, 0.8, rng), cone(2000, d, axis, 0.8, rng), k=10, seed=0)
    assert abs(same["knn_mixing"] - same["knn_mixing_ideal"]) < 0.03, same["knn_mixing"]
    apart = knn_metrics(cone(500, d, axis, 0.1, rng), cone(500, d, -axis, 0.1, rng), k=10, seed=0)
    assert apart["knn_mixing"] == 0.0
    assert apart["top1_cross_cosine"] < apart["top1_intra_cosine"]


def test_approximate_index_reports_its_recall() -> None:
    rng = np.random.default_rng(4)
    d = 32
    axis = unit_axis(d, rng)
    t, i = cone(3000, d, axis, 0.9, rng), cone(3000, d, axis, 0.9, rng)
    exact = knn_metrics(t, i, k=10, seed=0, threads=1)
    approx = knn_metrics(t, i, k=10, seed=0, exact_limit=1000, threads=1)
    assert approx["faiss"]["index"].startswith("ivf")
    recall = approx["faiss"]["recall_vs_exact"]
    nlist = int(approx["faiss"]["index"][3:].split("-")[0])
    # nprobe grows until the measured recall reaches the target, or every list is probed.
    assert recall >= 0.95 or approx["faiss"]["nprobe"] == nlist, approx["faiss"]
    assert approx["faiss"]["recall_queries"] == 1000
    assert abs(approx["knn_mixing"] - exact["knn_mixing"]) < 0.05
    assert "recall_vs_exact" not in exact["faiss"]


def test_thread_count_is_measured_and_recorded() -> None:
    rng = np.random.default_rng(6)
    t = cone(300, 8, unit_axis(8, rng), 1.0, rng)
    m = knn_metrics(t, t.copy(), k=3, seed=0)
    assert m["faiss"]["threads"] >= 1 and m["faiss"]["thread_probe_seconds"]
    assert m["faiss"]["threads"] == int(
        min(m["faiss"]["thread_probe_seconds"], key=m["faiss"]["thread_probe_seconds"].get)
    )


def test_drop_self_handles_duplicates() -> None:
    # Row 0's own id comes second (a duplicate tied with it), row 1's is missing from the list.
    ids = np.array([[5, 0, 7], [3, 4, 6]])
    scores = np.array([[1.0, 1.0, 0.5], [0.9, 0.8, 0.7]], dtype=np.float32)
    kept_ids, kept_scores = _drop_self(ids, scores, 2)
    assert kept_ids.tolist() == [[5, 7], [3, 4]]
    assert _drop_self(ids, scores, 2, np.array([7, 3]))[0].tolist() == [[5, 0], [4, 6]]
    assert kept_scores.tolist() == [[1.0, 0.5], [pytest.approx(0.9), pytest.approx(0.8)]]


def test_exact_topk_orders_scores() -> None:
    rng = np.random.default_rng(8)
    q, b = rng.standard_normal((9, 5)).astype(np.float32), rng.standard_normal((31, 5)).astype(np.float32)
    scores, ids = exact_topk(q, b, 4, block=4)
    ref = np.argsort(-(q @ b.T), axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(ids, ref)
    assert np.all(np.diff(scores, axis=1) <= 0)
