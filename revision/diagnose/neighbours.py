"""FAISS nearest-neighbour diagnostics on sampled unit rows: k-NN mixing and top-1 cosines.

Text queries are searched against a text index and an image index separately and the two
result lists merged; for exact search that is the same as one search of the pooled sample, and
it yields the best cross-modal and intra-modal cosines from the same search. Up to
`exact_limit` pooled rows the indexes are exact (IndexFlatIP; on unit rows inner product is
cosine); beyond, IVF-Flat, whose recall against exact search is measured on a query subset and
reported. FAISS's thread count is picked by timing a probe search (on a small shared machine one
thread can beat two).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

EXACT_LIMIT = 200_000
RECALL_QUERIES = 1000
RECALL_TARGET = 0.95


@dataclass
class IndexChoice:
    """How the neighbour search was run, for metrics.json."""

    kind: str
    threads: int
    gpu: bool
    nprobe: int | None = None
    nlist: int = 0


def _gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and getattr(faiss, "get_num_gpus", lambda: 0)() > 0


def build_index(x: np.ndarray, *, exact: bool, seed: int, gpu: bool) -> tuple[Any, IndexChoice]:
    """An inner-product index over unit rows `x` (float32, C-contiguous)."""
    d = x.shape[1]
    if exact:
        index: Any = faiss.IndexFlatIP(d)
        choice = IndexChoice("flat-ip", faiss.omp_get_max_threads(), gpu=False)
    else:
        nlist = int(min(max(16, 4 * math.sqrt(len(x))), len(x) // 39))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        train = x[rng.choice(len(x), size=min(len(x), 64 * nlist), replace=False)]
        index.train(train)
        index.nprobe = max(1, nlist // 16)
        choice = IndexChoice(
            f"ivf{nlist}-flat-ip", faiss.omp_get_max_threads(), gpu=False, nprobe=index.nprobe, nlist=nlist
        )
    if gpu and _gpu_available():
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, 0, index)
        index.referenced_objects = [res]  # faiss's idiom: the GPU resources live as long as the index
        choice.gpu = True
    index.add(x)
    return index, choice


def pick_threads(index: Any, probe: np.ndarray, k: int) -> tuple[int, dict[str, float]]:
    """The FAISS thread count with the fastest probe search; returns (threads, seconds by count)."""
    cpus = os.cpu_count() or 1
    candidates = sorted({1, cpus, *(2**p for p in range(1, 8) if 2**p < cpus)})
    timings: dict[str, float] = {}
    for threads in candidates:
        faiss.omp_set_num_threads(threads)
        index.search(probe, k)  # warm caches so the first candidate is not penalised
        t0 = time.perf_counter()
        index.search(probe, k)
        timings[str(threads)] = time.perf_counter() - t0
    best = int(min(timings, key=lambda t: timings[t]))
    faiss.omp_set_num_threads(best)
    return best, timings


def _drop_self(
    ids: np.ndarray, scores: np.ndarray, k: int, self_rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's own row (`self_rows[q]`, default q) from its k + 1 results."""
    n = len(ids)
    rows = np.arange(n) if self_rows is None else np.asarray(self_rows)
    is_self = ids == rows[:, None]
    # Where the row is not among the results (ties with duplicates), drop the last one instead.
    missing = ~is_self.any(axis=1)
    is_self[missing, -1] = True
    first = np.argmax(is_self, axis=1)
    keep = np.ones_like(is_self)
    keep[np.arange(n), first] = False
    return ids[keep].reshape(n, k), scores[keep].reshape(n, k)


def exact_topk(queries: np.ndarray, base: np.ndarray, k: int, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the k largest inner products, by blocked brute force (the recall reference)."""
    k = min(k, len(base))
    ids = np.empty((len(queries), k), dtype=np.int64)
    scores = np.empty((len(queries), k), dtype=np.float32)
    for s in range(0, len(queries), block):
        sims = queries[s : s + block] @ base.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        part_scores = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-part_scores, axis=1, kind="stable")
        ids[s : s + block] = np.take_along_axis(part, order, axis=1)
        scores[s : s + block] = np.take_along_axis(part_scores, order, axis=1)
    return scores, ids


def _pooled_search(
    t_index: Any, i_index: Any, queries: np.ndarray, self_rows: np.ndarray, k: int, n_t: int, n_i: int
) -> dict[str, np.ndarray]:
    """The k nearest of each query among text (itself excluded) and image rows, from both indexes.

    Returns the best text and image scores and `pooled`: (n, k) pooled ids, images offset by n_t,
    −1 where the index returned nothing.
    """
    k_t, k_i = min(k + 1, n_t), min(k, n_i)
    s_t, id_t = t_index.search(queries, k_t)
    s_i, id_i = i_index.search(queries, k_i)
    id_t, s_t = _drop_self(id_t, s_t, k_t - 1, self_rows)
    scores = np.concatenate([s_t, s_i], axis=1)
    ids = np.concatenate([id_t, np.where(id_i >= 0, id_i + n_t, -1)], axis=1)
    scores = np.where(ids >= 0, scores, -np.inf)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return {
        "pooled": np.take_along_axis(ids, top, axis=1),
        "best_text": np.where(id_t[:, 0] >= 0, s_t[:, 0], np.nan) if k_t > 1 else np.full(len(queries), np.nan),
        "best_image": np.where(id_i[:, 0] >= 0, s_i[:, 0], np.nan),
    }


def _exact_pooled(text: np.ndarray, image: np.ndarray, q: np.ndarray, k: int) -> list[set[int]]:
    """Brute-force pooled k-NN ids of text rows `q` (themselves excluded), the recall reference."""
    n_t = len(text)
    et_s, et_id = exact_topk(text[q], text, k + 1)
    ei_s, ei_id = exact_topk(text[q], image, k)
    truth = []
    for row, qi in enumerate(q.tolist()):
        keep = et_id[row] != qi
        ids = np.concatenate([et_id[row][keep], ei_id[row] + n_t])
        scores = np.concatenate([et_s[row][keep], ei_s[row]])
        truth.append(set(ids[np.argsort(-scores, kind="stable")[:k]].tolist()))
    return truth


def _recall(pooled: np.ndarray, truth: list[set[int]], k: int) -> float:
    return sum(len(set(row.tolist()) & want) for row, want in zip(pooled, truth, strict=True)) / (len(truth) * k)


def knn_metrics(
    text: np.ndarray,
    image: np.ndarray,
    *,
    k: int,
    seed: int,
    exact_limit: int = EXACT_LIMIT,
    gpu: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """k-NN mixing of text rows within the pooled sample, and the mean best cross/intra cosines.

    text, image: unit float32 rows. Returns metrics plus `neighbour_image_counts`, the histogram
    (length k + 1) of how many of each text row's k neighbours are images. With an approximate
    index, nprobe doubles until the recall against brute force on a query subset reaches
    `RECALL_TARGET` (or every list is probed); that recall is reported.
    """
    n_t, n_i = len(text), len(image)
    if n_t < 2 or n_i < 1:
        raise ValueError(f"k-NN needs at least 2 text rows and 1 image row, got {n_t} and {n_i}")
    k = min(k, n_t - 1 + n_i)
    text = np.ascontiguousarray(text, dtype=np.float32)
    image = np.ascontiguousarray(image, dtype=np.float32)
    exact = n_t + n_i <= exact_limit
    t_index, choice = build_index(text, exact=exact, seed=seed, gpu=gpu)
    i_index, i_choice = build_index(image, exact=exact, seed=seed + 1, gpu=gpu)
    timings: dict[str, float] = {}
    if threads is None:
        if choice.gpu:
            threads = faiss.omp_get_max_threads()
        else:
            threads, timings = pick_threads(t_index, text[: min(256, n_t)], min(k + 1, n_t))
    faiss.omp_set_num_threads(threads)
    choice.threads = threads

    recall: float | None = None
    if not exact:
        rng = np.random.default_rng(seed + 2)
        q = np.sort(rng.choice(n_t, size=min(RECALL_QUERIES, n_t), replace=False))
        truth = _exact_pooled(text, image, q, k)
        nlist = max(choice.nlist, i_choice.nlist)
        nprobe = choice.nprobe or 1
        while True:
            _set_nprobe(t_index, nprobe)
            _set_nprobe(i_index, nprobe)
            recall = _recall(_pooled_search(t_index, i_index, text[q], q, k, n_t, n_i)["pooled"], truth, k)
            if recall >= RECALL_TARGET or nprobe >= nlist:
                break
            nprobe = min(2 * nprobe, nlist)
        choice.nprobe = nprobe

    res = _pooled_search(t_index, i_index, text, np.arange(n_t), k, n_t, n_i)
    image_hits = (res["pooled"] >= n_t).sum(axis=1)
    out: dict[str, Any] = {
        "knn_k": k,
        "knn_mixing": float(image_hits.mean() / k),
        "knn_mixing_ideal": n_i / (n_t + n_i - 1),
        "neighbour_image_counts": np.bincount(image_hits, minlength=k + 1).tolist(),
        "top1_cross_cosine": float(np.nanmean(res["best_image"])),
        "top1_intra_cosine": float(np.nanmean(res["best_text"])),
        "faiss": {
            "index": choice.kind,
            "gpu": choice.gpu,
            "threads": threads,
            "thread_probe_seconds": timings,
            "nprobe": choice.nprobe,
        },
    }
    if recall is not None:
        out["faiss"]["recall_vs_exact"] = recall
        out["faiss"]["recall_queries"] = len(truth)
    return out


def _set_nprobe(index: Any, nprobe: int) -> None:
    # CPU IndexIVFFlat and the GPU IVF indexes both expose `nprobe`.
    index.nprobe = nprobe
