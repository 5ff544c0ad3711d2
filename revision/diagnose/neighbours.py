"""FAISS nearest-neighbour diagnostics on sampled unit rows: k-NN mixing and top-1 cosines.

Text queries are searched against a text index and an image index separately and the two
result lists merged; for exact search that is the same as one search of the pooled sample, and
it yields the best cross-modal and intra-modal cosines from the same search. Up to
`exact_limit` pooled rows the indexes are exact (IndexFlatIP; on unit rows inner product is
cosine); beyond, IVF-Flat, whose recall against exact search is measured on a query subset and
reported. FAISS's thread count is picked by timing a probe search (on a small shared machine one
thread can beat two) among the CPUs this process may run on, and set only for the duration of
the search: the process's previous FAISS thread count is restored afterwards.

A modality with fewer than `IVF_MIN_ROWS` sampled rows gets an exact index even in IVF mode (FAISS
wants about 39 training rows per list; such a set is searched exactly in no time). The recall
reference is brute force in blocks of queries × base rows, so its memory is bounded by the
block sizes, not by the number of base rows.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

EXACT_LIMIT = 200_000
RECALL_QUERIES = 1000
RECALL_TARGET = 0.95
#: FAISS's k-means wants at least this many training rows per inverted list.
ROWS_PER_LIST = 39
#: Fewer rows than this make no IVF index (not even one list): such a modality is searched exactly.
IVF_MIN_ROWS = ROWS_PER_LIST
#: Query rows × base rows scored at once by the brute-force recall reference: float32 scores, their
#: uint64 sort keys and the merge's copies, ~30 bytes each, so ~30 MB at the peak.
EXACT_BLOCK_ELEMENTS = 1 << 20


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


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity call on this platform
        return os.cpu_count() or 1


@contextmanager
def faiss_threads(threads: int | None = None) -> Iterator[None]:
    """Run a block with FAISS's OpenMP thread count at `threads` (None: unchanged); the previous
    count is restored on exit, so a diagnosis never changes it for the rest of the process."""
    previous = faiss.omp_get_max_threads()
    try:
        if threads is not None:
            faiss.omp_set_num_threads(threads)
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def build_index(x: np.ndarray, *, exact: bool, seed: int, gpu: bool) -> tuple[Any, IndexChoice]:
    """An inner-product index over unit rows `x` (float32, C-contiguous); exact below IVF_MIN_ROWS."""
    d = x.shape[1]
    if exact or len(x) < IVF_MIN_ROWS:
        index: Any = faiss.IndexFlatIP(d)
        choice = IndexChoice("flat-ip", faiss.omp_get_max_threads(), gpu=False)
    else:
        nlist = int(min(max(16, 4 * math.sqrt(len(x))), len(x) // ROWS_PER_LIST))
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
    """The FAISS thread count with the fastest probe search; returns (threads, seconds by count).

    Candidates go up to the CPUs this process may use; FAISS's thread count is left as it was.
    """
    cpus = available_cpus()
    candidates = sorted({1, cpus, *(2**p for p in range(1, 8) if 2**p < cpus)})
    timings: dict[str, float] = {}
    for threads in candidates:
        with faiss_threads(threads):
            index.search(probe, k)  # warm caches so the first candidate is not penalised
            t0 = time.perf_counter()
            index.search(probe, k)
            timings[str(threads)] = time.perf_counter() - t0
    best = int(min(timings, key=lambda t: timings[t]))
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


def _order_keys(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """uint64 keys, unique per id, whose ascending order is score descending, then id ascending."""
    bits = np.ascontiguousarray(scores, dtype=np.float32).view(np.uint32)
    # float32 bit patterns made to sort like the floats: negatives flipped, positives' sign bit set.
    ascending = np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))
    return ((~ascending).astype(np.uint64) << np.uint64(32)) | ids.astype(np.uint64)


def _scores_of_keys(keys: np.ndarray) -> np.ndarray:
    ascending = (~(keys >> np.uint64(32))).astype(np.uint32)
    bits = np.where(ascending & np.uint32(0x80000000), ascending & np.uint32(0x7FFFFFFF), ~ascending)
    return bits.astype(np.uint32).view(np.float32)


def exact_topk(
    queries: np.ndarray, base: np.ndarray, k: int, block: int = 256, block_elements: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the k largest inner products, by blocked brute force (the recall reference).

    Queries go `block` at a time and base rows in slices of block_elements / block (default
    EXACT_BLOCK_ELEMENTS): each slice's top k merges into a running top k, so memory is a few times
    block_elements, whatever the number of base rows. Order: score descending, then row ascending
    (ties are broken by row, so any blocking gives the same answer).
    """
    k = min(k, len(base))
    ids = np.empty((len(queries), k), dtype=np.int64)
    scores = np.empty((len(queries), k), dtype=np.float32)
    step = max(1, (block_elements or EXACT_BLOCK_ELEMENTS) // max(1, block))
    if k == 0:
        return scores, ids
    for s in range(0, len(queries), block):
        q = queries[s : s + block]
        best = np.empty((len(q), 0), dtype=np.uint64)
        for b0 in range(0, len(base), step):
            sims = q @ base[b0 : b0 + step].T
            keys = np.concatenate([best, _order_keys(sims, np.arange(b0, b0 + sims.shape[1])[None, :])], axis=1)
            kk = min(k, keys.shape[1])
            best = np.partition(keys, kk - 1, axis=1)[:, :kk] if kk < keys.shape[1] else keys
        best = np.sort(best, axis=1)
        ids[s : s + block] = (best & np.uint64(0xFFFFFFFF)).astype(np.int64)
        scores[s : s + block] = _scores_of_keys(best)
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
    threads: FAISS threads (None: the fastest of a probe); FAISS's own setting is restored on return.
    """
    with faiss_threads():
        return _knn_metrics(text, image, k=k, seed=seed, exact_limit=exact_limit, gpu=gpu, threads=threads)


def _knn_metrics(
    text: np.ndarray, image: np.ndarray, *, k: int, seed: int, exact_limit: int, gpu: bool, threads: int | None
) -> dict[str, Any]:
    n_t, n_i = len(text), len(image)
    if n_t < 2 or n_i < 1:
        raise ValueError(f"k-NN needs at least 2 text rows and 1 image row, got {n_t} and {n_i}")
    k = min(k, n_t - 1 + n_i)
    text = np.ascontiguousarray(text, dtype=np.float32)
    image = np.ascontiguousarray(image, dtype=np.float32)
    exact = n_t + n_i <= exact_limit
    t_index, choice = build_index(text, exact=exact, seed=seed, gpu=gpu)
    i_index, i_choice = build_index(image, exact=exact, seed=seed + 1, gpu=gpu)
    # A small modality gets an exact index even in IVF mode; with none approximate, nothing to measure.
    exact = exact or (choice.nlist == 0 and i_choice.nlist == 0)
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
        nprobe = choice.nprobe or i_choice.nprobe or 1
        while True:
            for index, c in ((t_index, choice), (i_index, i_choice)):
                if c.nlist:
                    _set_nprobe(index, min(nprobe, c.nlist))
            recall = _recall(_pooled_search(t_index, i_index, text[q], q, k, n_t, n_i)["pooled"], truth, k)
            if recall >= RECALL_TARGET or nprobe >= nlist:
                break
            nprobe = min(2 * nprobe, nlist)
        choice.nprobe = nprobe
        if choice.kind != i_choice.kind:
            choice.kind = f"{choice.kind} (text) / {i_choice.kind} (image)"

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
