"""Scale-out benchmark: `revision fit` / `align` in 1 vs 2 processes (torchrun, gloo), and the cost and
exactness of the ordered merge of segment statistics at 1,024 simulated ranks.

(a) fit and align on synthetic fp16 stores, run as subprocesses: one process with 1 thread, one
    process with 2 threads (what a user runs on this machine without torchrun), and torchrun with 2
    processes of 1 thread each. Scaling efficiency = t(1 process, 1 thread) / (2 · t(2 processes));
    the passes' own seconds (rank 0's report, gathers included) and the command wall times (process
    start included) are both given, with the machine's load average, since the machine is shared.
(b) 1,024 segment partials of (n, mean, M2, totals) at D = 1280, as 1,024 ranks would each hold one:
    their pickled size (what all_gather_object moves to every rank), the time to unpickle them and
    fold them in order (what every rank does), bitwise equality of the result for 1, 2, 7, 1,000 and
    1,024 simulated ranks, and the error against an exact (math.fsum) merge of the partials' totals
    and an extended-precision merge of their M2; the naive merge (each rank folds its own segments,
    ranks merged after) for contrast.

Run small:  python bench/bench_scale.py --rows 50000 --dim 256 --json-out /tmp/scale.json
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from revision import dist
from revision.bench.harness import print_table, write_results
from revision.kernels import Moments, merge_moments, row_stats
from revision.store import FeatureStore, StoreConfig

_PASS_LINE = re.compile(r"^\s+(pass [^:]+): ([\d,]+) rows in ([\d.]+) s")


def _make_store(path: Path, rows: int, dim: int, modality: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    centre = np.zeros(dim, np.float32)
    centre[0 if modality == "text" else 1] = 1.0
    with FeatureStore.create(path, StoreConfig(modality=modality, dim=dim, dtype="float16"), durable=False) as st:
        for lo in range(0, rows, 65_536):
            n = min(65_536, rows - lo)
            x = rng.standard_normal((n, dim), dtype=np.float32) * np.float32(2.4 / math.sqrt(dim)) + centre
            st.append(x.astype(np.float16), [f"{modality[0]}{k}" for k in range(lo, lo + n)])
            st.commit()


def _run(cmd: list[str], threads: int) -> tuple[float, dict[str, float], str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "REVISION_NO_PROGRESS": "1", "REVISION_DIST_BACKEND": "gloo"}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    passes = {m[1]: float(m[3]) for line in done.stdout.splitlines() if (m := _PASS_LINE.match(line))}
    return wall, passes, done.stdout


def scaling(root: Path, rows: int, dim: int, repeats: int) -> list[dict[str, Any]]:
    text, image = root / "text.zarr", root / "image.zarr"
    _make_store(text, rows, dim, "text", 1)
    _make_store(image, rows, dim, "image", 2)
    py = [sys.executable, "-m", "revision"]
    tr = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "revision"]
    results = []
    for cmd_name in ("fit", "align"):
        best: dict[str, tuple[float, dict[str, float]]] = {}
        for rep in range(repeats):
            for how, launcher, threads in (("1 proc x 1 thread", py, 1), ("1 proc x 2 threads", py, 2),
                                           ("2 procs x 1 thread", tr, 1)):  # fmt: skip
                out = root / f"out-{rep}-{how.replace(' ', '')}"
                args = ["--text", str(text), "--image", str(image), "--no-progress"]
                args += ["--stats", f"{out}.json"] if cmd_name == "fit" else ["--out", str(out)]
                wall, passes, _ = _run([*launcher, cmd_name, *args], threads)
                if how not in best or wall < best[how][0]:
                    best[how] = (wall, passes)
                subprocess.run(["rm", "-rf", str(out), f"{out}.json", f"{out}.stats.json"], check=False)
        base_wall, base_passes = best["1 proc x 1 thread"]
        for how, (wall, passes) in best.items():
            p12 = sum(v for k, v in passes.items() if not k.startswith("pass 3"))
            b12 = sum(v for k, v in base_passes.items() if not k.startswith("pass 3"))
            procs = 2 if how.startswith("2") else 1
            results.append({
                "command": cmd_name, "launch": how, "wall_s": wall, "passes_1_2_s": p12,
                "pass_3_s": passes.get("pass 3 apply"),
                "efficiency_passes_1_2": b12 / (procs * p12) if p12 else None,
                "efficiency_wall": base_wall / (procs * wall),
                "rows_per_s_passes_1_2": 2 * rows / p12 if p12 else None,
            })  # fmt: skip
    return results


def _fold(parts: list[Moments], dim: int) -> Moments:
    total = Moments.empty(dim)
    for p in parts:
        total = merge_moments(total, p)
    return total


def merge_at_scale(ranks: int, dim: int, rows_per_segment: int) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((ranks * rows_per_segment, dim), dtype=np.float32) * 0.05 + 0.02).astype(np.float16)
    xt = torch.from_numpy(x)
    parts = [row_stats(xt[k * rows_per_segment : (k + 1) * rows_per_segment]) for k in range(ranks)]
    blob = pickle.dumps(parts, protocol=pickle.HIGHEST_PROTOCOL)
    t0 = time.perf_counter()
    gathered = pickle.loads(blob)
    t_unpickle = time.perf_counter() - t0
    t0 = time.perf_counter()
    one = _fold(gathered, dim)
    t_fold = time.perf_counter() - t0
    segs = [(k, k + 1) for k in range(ranks)]
    bitwise = {}
    naive_equal = {}
    for n in (1, 2, 7, 1000, ranks):
        runs = [dist.share(segs, dist.World(rank=r, size=n, local_rank=r)) for r in range(n)]
        ours = _fold([parts[a] for run in runs for a, _ in run], dim)
        bitwise[n] = bool(torch.equal(ours.mean, one.mean) and torch.equal(ours.m2, one.m2))
        naive = _fold([_fold([parts[a] for a, _ in run], dim) for run in runs if run], dim)
        naive_equal[n] = bool(torch.equal(naive.m2, one.m2))
    # The merge's own error, against the partials it merges: exact column means (math.fsum of the
    # segments' float64 totals) and M2 = Σ m2_k + n_k (mean_k − mean)² in extended precision.
    totals = np.stack([p.total.numpy() for p in parts])
    exact_mean = np.array([math.fsum(totals[:, j]) for j in range(dim)]) / len(x)
    ld = np.longdouble
    n_k = np.array([p.n for p in parts], dtype=ld)[:, None]
    means = np.stack([p.mean.numpy() for p in parts]).astype(ld)
    m2s = np.stack([p.m2.numpy() for p in parts]).astype(ld)
    m2_ref = (m2s.sum(axis=0) + (n_k * (means - exact_mean.astype(ld)) ** 2).sum(axis=0)).astype(np.float64)
    mean_err = float(np.abs(one.mean.numpy() - exact_mean).max() / np.abs(exact_mean).max())
    m2_err = float(np.abs(one.m2.numpy() - m2_ref).max() / np.abs(m2_ref).max())
    return {
        "ranks": ranks, "dim": dim, "rows": len(x), "gathered_bytes": len(blob),
        "unpickle_s": t_unpickle, "fold_s": t_fold, "merge_s": t_unpickle + t_fold,
        "bitwise_equal_for_simulated_ranks": bitwise, "naive_merge_equal_for_simulated_ranks": naive_equal,
        "mean_max_rel_error_vs_exact": mean_err, "m2_max_rel_error_vs_extended": m2_err,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=400_000, help="rows per store for (a) (default: 400000)")
    ap.add_argument("--dim", type=int, default=768, help="dimension for (a) (default: 768)")
    ap.add_argument("--repeats", type=int, default=2, help="repeats of (a), best kept (default: 2)")
    ap.add_argument("--ranks", type=int, default=1024, help="simulated ranks for (b) (default: 1024)")
    ap.add_argument("--merge-dim", type=int, default=1280, help="dimension for (b) (default: 1280)")
    ap.add_argument("--json-out", default=None, help="JSON path (default: bench/results/scale.json)")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        rows = scaling(Path(tmp), args.rows, args.dim, args.repeats)
    load_after = os.getloadavg()
    print_table(rows, ["command", "launch", "wall_s", "passes_1_2_s", "pass_3_s", "efficiency_passes_1_2",
                       "efficiency_wall"])  # fmt: skip
    merge = merge_at_scale(args.ranks, args.merge_dim, 16)
    m = merge
    print(f"\nmerge at {m['ranks']} simulated ranks, D={m['dim']}: {m['gathered_bytes'] / 1e6:.1f} MB gathered, "
          f"unpickle {m['unpickle_s']:.3f} s + fold {m['fold_s']:.3f} s")  # fmt: skip
    print(f"bitwise equal for simulated ranks: {m['bitwise_equal_for_simulated_ranks']}")
    print(f"naive per-rank merge equal: {m['naive_merge_equal_for_simulated_ranks']}")
    print(f"max rel error: mean {m['mean_max_rel_error_vs_exact']:.2e}, M2 {m['m2_max_rel_error_vs_extended']:.2e}")
    payload = {
        "rows": args.rows, "dim": args.dim, "repeats": args.repeats, "scaling": rows, "merge": merge,
        "load_average_before": load_before, "load_average_after": load_after, "cpus": os.cpu_count(),
    }  # fmt: skip
    path = write_results("scale", payload, args.json_out)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
