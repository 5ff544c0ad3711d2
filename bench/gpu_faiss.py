"""Step (e) of the GPU check: diagnose's FAISS GPU index (optional faiss-gpu-cu12 wheel).

Builds diagnose's exact and IVF indexes on the GPU through `revision.diagnose.neighbours.build_index`,
times a search, and compares the exact GPU neighbours with a float64 torch search. Exit 0 with
"skipped" in the JSON when the wheel is absent or cannot load (its CUDA 12 libraries are not in
the image): FAISS is optional for the check.

    python -P bench/gpu_faiss.py --output faiss.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from revision.bench.harness import write_results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="indexed rows (default 200000)")
    ap.add_argument("--dim", type=int, default=1280, help="row width (default 1280)")
    ap.add_argument("--queries", type=int, default=2000, help="queries (default 2000)")
    ap.add_argument("--k", type=int, default=10, help="neighbours (default 10)")
    ap.add_argument("--output", type=Path, required=True, help="JSON path")
    args = ap.parse_args(argv)
    doc: dict[str, Any] = {"rows": args.rows, "dim": args.dim, "queries": args.queries, "k": args.k}
    try:
        import faiss

        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    except Exception as exc:  # noqa: BLE001 - an unloadable optional wheel is a skip, reported
        doc["headline"] = {"skipped": f"faiss did not load: {type(exc).__name__}: {exc}"}
        write_results("gpu_faiss", doc, args.output)
        print(f"gpu_faiss: skipped ({doc['headline']['skipped']})")
        return 0
    if gpus == 0:
        doc["headline"] = {"skipped": f"faiss {faiss.__version__} sees no GPU (CPU-only build or no CUDA 12 runtime)"}
        write_results("gpu_faiss", doc, args.output)
        print(f"gpu_faiss: skipped ({doc['headline']['skipped']})")
        return 0
    from revision.diagnose.neighbours import build_index

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.choice(args.rows, size=args.queries, replace=False)] + 0.05 * rng.standard_normal(
        (args.queries, args.dim), dtype=np.float32
    )
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    xt, qt = torch.from_numpy(x).double(), torch.from_numpy(q).double()
    want = torch.topk(qt @ xt.T, args.k, dim=1).indices.numpy()
    results: dict[str, Any] = {}
    for exact in (True, False):
        t0 = time.perf_counter()
        index, choice = build_index(x, exact=exact, seed=0, gpu=True)
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, got = index.search(q, args.k)
        searched = time.perf_counter() - t0
        recall = float(np.mean([len(set(g) & set(w)) / args.k for g, w in zip(got, want, strict=True)]))
        results[choice.kind] = {"gpu": choice.gpu, "build_seconds": built, "search_seconds": searched,
                                "queries_per_s": args.queries / searched, "recall_at_k": recall}  # fmt: skip
    doc["faiss"] = faiss.__version__
    doc["indexes"] = results
    exact_entry = results["flat-ip"]
    ok = exact_entry["gpu"] and exact_entry["recall_at_k"] >= 0.99
    doc["headline"] = {k: {"gpu": v["gpu"], "recall": v["recall_at_k"], "qps": v["queries_per_s"]}
                       for k, v in results.items()}  # fmt: skip
    write_results("gpu_faiss", doc, args.output)
    print(f"gpu_faiss: {results}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
