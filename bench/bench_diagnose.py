"""Diagnose benchmark: `revision diagnose` on N + N rows, time per metric and peak RSS, vs in-memory NumPy.

Baselines measured in the same run, on the same stores:
- "in-memory numpy": load both stores whole into float32, normalise, and compute the same
  streamed statistics (centroid gap, traces, closed-form RMG) and the same k-NN mixing by
  NumPy brute force on the same sample: what a notebook would do. Its RSS grows with N.
- k-NN alone: FAISS (the thread count diagnose picks) vs NumPy brute force on the same sample.
Each of diagnose and the in-memory baseline runs in its own subprocess, so its peak RSS is its own.

    python bench/bench_diagnose.py                                  # 1M + 1M x 768 (≈ 3 GB of disk)
    python bench/bench_diagnose.py --rows 20000 --dim 128 --workdir /tmp/bd
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from revision.bench.harness import peak_rss_mb, print_table, write_results


def _own_rss_mb() -> float:
    return peak_rss_mb()


def make_corpus(work: Path, rows: int, dim: int) -> tuple[Path, Path]:
    from revision.corpus import CorpusConfig, write_corpus

    cfg = CorpusConfig(rows=rows, dim=dim, latent=min(64, dim // 2 - 1), seed=0)
    return write_corpus(cfg, work / f"corpus_{rows}x{dim}")


def run_diagnose(text: Path, image: Path, out: Path, sample: int, k: int) -> dict[str, Any]:
    """`revision diagnose` in a subprocess: wall time, its peak RSS, per-metric seconds."""
    argv = ["diagnose", "--text", str(text), "--image", str(image), "--pairs",
            "--sample", str(sample), "--k", str(k), "--out", str(out), "--quiet"]  # fmt: skip
    rss_file = out.with_suffix(".rss")
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, __file__, "--_diagnose", str(rss_file), *argv], check=True, stdout=subprocess.DEVNULL
    )
    wall = time.perf_counter() - t0
    metrics = json.loads((out / "metrics.json").read_text())["raw"]
    return {"wall_s": wall, "rss_mb": float(rss_file.read_text()), "metrics": metrics}


def diagnose_main(rss_file: str, argv: list[str]) -> None:
    """The CLI, then this process's peak RSS into `rss_file` (runs in its own process)."""
    from revision.cli import main as cli_main

    if cli_main(argv) != 0:
        raise SystemExit(f"revision {' '.join(argv)} failed")
    Path(rss_file).write_text(str(_own_rss_mb()))


def baseline_main(text: str, image: str, sample: int, k: int, out: str) -> None:
    """The in-memory baseline (runs in its own process)."""
    from revision.diagnose.sources import sample_indices
    from revision.store import FeatureStore

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    vecs = []
    for path in (text, image):
        st = FeatureStore.open(path)
        x = st.read().astype(np.float32)
        vecs.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    seconds["load_normalise"] = time.perf_counter() - t0
    t, i = vecs
    t0 = time.perf_counter()
    mt, mi = t.mean(0, dtype=np.float64), i.mean(0, dtype=np.float64)
    gap = float(np.linalg.norm(mi - mt))
    st_, si = t.sum(0, dtype=np.float64), i.sum(0, dtype=np.float64)
    n_t, n_i = len(t), len(i)
    cross = (1 - st_ @ si / (n_t * n_i)) / 2
    intra = [(1 - (s @ s - n) / (n * (n - 1))) / 2 for s, n in ((st_, n_t), (si, n_i))]
    rmg = float(cross / ((intra[0] + intra[1]) / 2 + cross))
    seconds["streamed_stats"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ts = t[sample_indices(n_t, sample, 0)]
    ims = i[sample_indices(n_i, sample, 1)]
    pooled = np.concatenate([ts, ims])
    image_hits = 0
    for s in range(0, len(ts), 1024):
        sims = ts[s : s + 1024] @ pooled.T
        sims[np.arange(len(sims)), np.arange(s, s + len(sims))] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        image_hits += int((top >= len(ts)).sum())
    seconds["knn_numpy"] = time.perf_counter() - t0
    Path(out).write_text(json.dumps({"seconds": seconds, "centroid_gap": gap, "rmg": rmg, "rss_mb": _own_rss_mb(),
                                     "knn_mixing": image_hits / (len(ts) * k)}))  # fmt: skip


def run_baseline(text: Path, image: Path, sample: int, k: int, work: Path) -> dict[str, Any]:
    out = work / "baseline.json"
    cmd = [sys.executable, __file__, "--_baseline", str(text), str(image), str(sample), str(k), str(out)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, **json.loads(out.read_text())}


def faiss_vs_numpy_knn(text: Path, image: Path, sample: int, k: int, repeats: int) -> dict[str, float]:
    from revision.bench.harness import time_it
    from revision.diagnose.neighbours import exact_topk, knn_metrics
    from revision.diagnose.sources import read_unit_rows, sample_indices
    from revision.store import FeatureStore

    t, i = FeatureStore.open(text), FeatureStore.open(image)
    ts = read_unit_rows(t, sample_indices(t.rows, sample, 0))
    ims = read_unit_rows(i, sample_indices(i.rows, sample, 1))
    pooled = np.concatenate([ts, ims])
    fa = time_it(lambda: knn_metrics(ts, ims, k=k, seed=0), warmup=0, repeats=repeats)
    npy = time_it(lambda: exact_topk(ts, pooled, k + 1, block=1024), warmup=0, repeats=repeats)
    return {"faiss_s": fa.median, "numpy_s": npy.median, "faiss_spread": fa.spread}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_baseline":
        b_text, b_image, b_sample, b_k, b_out = sys.argv[2:7]
        baseline_main(b_text, b_image, int(b_sample), int(b_k), b_out)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--_diagnose":
        diagnose_main(sys.argv[2], sys.argv[3:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows per modality (default: 1,000,000)")
    ap.add_argument("--dim", type=int, default=768, help="embedding dimension (default: 768)")
    ap.add_argument("--sample", type=int, default=5000, help="diagnose --sample (default: 5000)")
    ap.add_argument("--k", type=int, default=10, help="k-NN neighbours (default: 10)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the k-NN comparison (default: 3)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the corpus goes (default: a temp dir)")
    ap.add_argument("--skip-baseline", action="store_true", help="skip the in-memory baseline (needs 8·N·D bytes)")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default: bench/results/diagnose.json)")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_diagnose_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    text, image = make_corpus(work, args.rows, args.dim)
    print(f"corpus {args.rows:,} + {args.rows:,} x {args.dim} in {work} [{time.perf_counter() - t0:.1f} s]")

    diag = run_diagnose(text, image, work / "diag", args.sample, args.k)
    m = diag["metrics"]
    rows: list[dict[str, Any]] = [
        {"stage": name, "seconds": secs, "rows/s": (2 * args.rows / secs) if name.startswith("stream") else ""}
        for name, secs in m["seconds"].items()
    ]
    rows.append({"stage": "diagnose total (wall)", "seconds": diag["wall_s"], "peak RSS MB": diag["rss_mb"]})
    base: dict[str, Any] | None = None
    if not args.skip_baseline:
        base = run_baseline(text, image, args.sample, args.k, work)
        for name, secs in base["seconds"].items():
            rows.append({"stage": f"baseline: {name}", "seconds": secs})
        rows.append({"stage": "baseline total (wall)", "seconds": base["wall_s"], "peak RSS MB": base["rss_mb"]})
        for key in ("centroid_gap", "rmg", "knn_mixing"):
            # The two computations must agree (k-NN mixing only up to ties and sample draw).
            rows.append({"stage": f"check {key}", "diagnose": m[key], "baseline": base[key]})
    knn = faiss_vs_numpy_knn(text, image, args.sample, args.k, args.repeats)
    rows.append({"stage": "k-NN: faiss", "seconds": knn["faiss_s"]})
    rows.append({"stage": "k-NN: numpy brute force", "seconds": knn["numpy_s"],
                 "ratio": knn["numpy_s"] / knn["faiss_s"]})  # fmt: skip
    if base is not None:
        rows.append({"stage": "total: baseline / diagnose", "ratio": base["wall_s"] / diag["wall_s"]})
        rows.append({"stage": "RSS: baseline / diagnose", "ratio": base["rss_mb"] / diag["rss_mb"]})
    print_table(rows, ["stage", "seconds", "rows/s", "peak RSS MB", "diagnose", "baseline", "ratio"])
    path = write_results(
        "diagnose",
        {"config": vars(args) | {"workdir": str(work), "out": str(args.out)}, "diagnose": {
            "wall_s": diag["wall_s"], "rss_mb": diag["rss_mb"], "seconds": m["seconds"], "faiss": m["faiss"]},
         "baseline": base, "knn": knn, "table": rows},
        args.out,
    )  # fmt: skip
    print(f"results: {path}")


if __name__ == "__main__":
    main()
