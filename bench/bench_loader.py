"""Loader benchmark: random batches of ids → (B, D) float embeddings, memmap view vs the reference's dict.

Both approaches get the same ids (uniformly random over all rows, batches of 256) on the same data:
- ours: `export_memmap` of a FeatureStore, then `FeatureView.lookup` (sorted hash index) and a
  row gather (positioned reads; the memory-mapped gather is measured too) → float32 tensor;
- baseline (the reference's loader): every pickle (lists of dicts with a float16 `embed`, 200,000
  rows a file) loaded into one dict keyed by id, then `np.stack` of the batch's entries → float32.
Each approach runs in its own subprocess, so its peak RSS (VmHWM) is its own. For information, the
training path is timed too: LLaVA-style annotations joined to the view by id, block-shuffled batches
from DataLoader workers (JSON parsing of the text fields included).

    python bench/bench_loader.py                                   # 500k x 1280 fp16 (~4.5 GB disk)
    python bench/bench_loader.py --rows 20000 --dim 256 --batches 50 --json-out /tmp/bl.json
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from revision.bench.harness import peak_rss_mb, print_table, time_it, write_results

PICKLE_ROWS = 200_000
BLOCK = 50_000


def row_id(i: int) -> str:
    return f"img_{i:010d}"


def make_inputs(work: Path, rows: int, dim: int) -> None:
    """The same unit-norm fp16 rows as reference pickles and as a FeatureStore, block by block."""
    from revision.store import FeatureStore, StoreConfig

    pkl_dir, store = work / "pkl", work / "image.zarr"
    if store.exists() and pkl_dir.exists() and (work / "ann.jsonl").exists():
        return
    shutil.rmtree(pkl_dir, ignore_errors=True)
    shutil.rmtree(store, ignore_errors=True)
    pkl_dir.mkdir(parents=True)
    cfg = StoreConfig(modality="image", dim=dim, dtype="float16", normalized=True)
    pending: list[dict[str, Any]] = []
    with FeatureStore.create(store, cfg) as st:
        for lo in range(0, rows, BLOCK):
            x = np.random.default_rng([7, lo]).standard_normal((min(BLOCK, rows - lo), dim), dtype=np.float32)
            x16 = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
            ids = [row_id(i) for i in range(lo, lo + len(x16))]
            st.append(x16, ids)
            pending.extend(
                {"id": i, "image_path": f"images/{i}.jpg", "embed": v} for i, v in zip(ids, x16, strict=True)
            )
            while len(pending) >= PICKLE_ROWS or (pending and lo + len(x16) >= rows):
                part, pending = pending[:PICKLE_ROWS], pending[PICKLE_ROWS:]
                k = len(list(pkl_dir.glob("*.pkl"))) + 1
                with open(pkl_dir / f"image_embeds_{k}.pkl", "wb") as fh:
                    pickle.dump(part, fh, protocol=pickle.HIGHEST_PROTOCOL)
    # LLaVA-style pretraining annotations, one per row, in a shuffled order (as after a dataset merge).
    with open(work / "ann.jsonl", "w") as fh:
        for lo in range(0, rows, BLOCK):
            for i in np.random.default_rng([8, lo]).permutation(np.arange(lo, min(rows, lo + BLOCK))).tolist():
                cap = f"a photo of object {i % 1000} on a table"
                conv = [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": cap}]
                fh.write(json.dumps({"id": row_id(i), "caption": cap, "conversations": conv}) + "\n")


def query_batches(rows: int, batch: int, batches: int, seed: int = 1) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [[row_id(i) for i in rng.integers(0, rows, batch).tolist()] for _ in range(batches)]


# -- roles, each run in its own process ---------------------------------------------------------------


def role_export(args: argparse.Namespace) -> dict[str, Any]:
    from revision.store import FeatureStore
    from revision.store.memmap import export_memmap

    dest = Path(args.workdir) / "view"
    t0 = time.perf_counter()
    export_memmap(FeatureStore.open(Path(args.workdir) / "image.zarr"), dest, show_progress=False, overwrite=True)
    return {"export_s": time.perf_counter() - t0, "export_peak_rss_mb": peak_rss_mb()}


def role_view(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from revision.train import FeatureView

    t0 = time.perf_counter()
    view = FeatureView.open(Path(args.workdir) / "view", read_mode=args.read_mode)
    view.lookup([row_id(0)])  # first touch of the index files is part of start-up
    open_s = time.perf_counter() - t0
    batches = query_batches(view.num_rows, args.batch, args.batches)

    def run() -> None:
        for ids in batches:
            out = view.rows(view.lookup(ids), dtype=torch.float32)
            assert out.shape == (len(ids), view.dim)

    timing = time_it(run, warmup=1, repeats=args.repeats)
    check = view.embeds(batches[0][:4]).numpy()
    return {
        "samples_per_s": args.batch * args.batches / timing.median,
        "spread": timing.spread,
        "peak_rss_mb": peak_rss_mb(),
        "open_s": open_s,
        "checksum": float(np.abs(check).sum()),
    }


def role_baseline(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    t0 = time.perf_counter()
    features: dict[str, np.ndarray] = {}
    for path in sorted((Path(args.workdir) / "pkl").glob("*.pkl")):
        with open(path, "rb") as fh:
            for item in pickle.load(fh):
                if item["embed"] is not None:
                    features[item["id"]] = item["embed"]
    load_s = time.perf_counter() - t0
    batches = query_batches(len(features), args.batch, args.batches)

    def run() -> None:
        for ids in batches:
            out = torch.from_numpy(np.stack([features[i] for i in ids])).float()
            assert out.shape == (len(ids), out.shape[1])

    timing = time_it(run, warmup=1, repeats=args.repeats)
    check = torch.from_numpy(np.stack([features[i] for i in batches[0][:4]])).float().numpy()
    return {
        "samples_per_s": args.batch * args.batches / timing.median,
        "spread": timing.spread,
        "peak_rss_mb": peak_rss_mb(),
        "load_s": load_s,
        "checksum": float(np.abs(check).sum()),
    }


def role_loader(args: argparse.Namespace) -> dict[str, Any]:
    """The training path: annotations joined by id, block-shuffled batches from DataLoader workers."""
    import resource

    from revision.train import FeatureDataset, LoaderConfig, make_loader

    t0 = time.perf_counter()
    ds = FeatureDataset(Path(args.workdir) / "ann.jsonl", Path(args.workdir) / "view")
    join_s = time.perf_counter() - t0
    cfg = LoaderConfig(batch_size=args.batch, num_workers=args.workers, seed=0)
    it = iter(make_loader(ds, cfg))
    t0 = time.perf_counter()
    next(it)  # workers started and the first batch delivered
    first_s = time.perf_counter() - t0
    n = 0
    t0 = time.perf_counter()
    for batch in it:
        n += len(batch["ids"])
        if n >= args.batch * args.batches:
            break
    elapsed = time.perf_counter() - t0
    del it  # shuts the workers down, so their peak RSS is reported as the children's
    return {
        "samples_per_s": n / elapsed,
        "join_s": join_s,
        "first_batch_s": first_s,
        "peak_rss_mb": peak_rss_mb(),
        "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


ROLES = {"export": role_export, "view": role_view, "baseline": role_baseline, "loader": role_loader}


def run_role(role: str, args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--role", role, "--workdir", str(args.workdir), "--batch", str(args.batch)]
    cmd += ["--batches", str(args.batches), "--repeats", str(args.repeats), "--workers", str(args.workers), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bench_loader: role {role} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=500_000, help="rows of the feature set (default 500000)")
    p.add_argument("--dim", type=int, default=1280, help="embedding dimension (default 1280)")
    p.add_argument("--batch", type=int, default=256, help="ids per batch (default 256)")
    p.add_argument("--batches", type=int, default=400, help="random batches per timed pass (default 400)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes; the median is reported (default 3)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the training-path run (default 2)")
    p.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one, removed)")
    p.add_argument("--json-out", default=None, help="results JSON (default bench/results/bench_loader.json)")
    p.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    p.add_argument("--read-mode", default="pread", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role:
        import torch

        # As in a DataLoader worker: one intra-op thread (two threads on a busy 2-core machine make a
        # (256, 1280) fp16→fp32 conversion ~10x slower). Both approaches convert with torch.
        torch.set_num_threads(1)
        print(json.dumps(ROLES[args.role](args)))
        return 0

    own_dir = args.workdir is None
    args.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_loader-"))
    try:
        t0 = time.perf_counter()
        make_inputs(args.workdir, args.rows, args.dim)
        print(f"inputs: {args.rows:,} x {args.dim} fp16 in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        exp = run_role("export", args)
        ours = run_role("view", args, "--read-mode", "pread")
        mapped = run_role("view", args, "--read-mode", "mmap")
        base = run_role("baseline", args)
        loader = run_role("loader", args)
    finally:
        if own_dir:
            shutil.rmtree(args.workdir, ignore_errors=True)
    if not (ours["checksum"] == mapped["checksum"] == base["checksum"]):
        raise SystemExit(f"bench_loader: approaches disagree on the embeddings ({ours}, {mapped}, {base})")
    table = [
        {"approach": name, "samples/s": r["samples_per_s"], "peak RSS MB": r["peak_rss_mb"], "start-up s": start}
        for name, r, start in (
            ("memmap view (pread gather)", ours, ours["open_s"]),
            ("memmap view (mmap gather)", mapped, mapped["open_s"]),
            ("reference dict of pickles", base, base["load_s"]),
        )
    ]
    print_table(table, ["approach", "samples/s", "peak RSS MB", "start-up s"])
    print(
        f"training path (annotations joined by id, {args.workers} workers): {loader['samples_per_s']:,.0f} samples/s, "
        f"join {loader['join_s']:.2f} s, peak RSS main {loader['peak_rss_mb']:.0f} MB / "
        f"worker {loader['worker_peak_rss_mb']:.0f} MB"
    )
    payload = {
        "rows": args.rows,
        "dim": args.dim,
        "dtype": "float16",
        "batch": args.batch,
        "batches": args.batches,
        "samples_per_s": ours["samples_per_s"],
        "peak_rss_mb": ours["peak_rss_mb"],
        "open_s": ours["open_s"],
        "spread": ours["spread"],
        "mmap_samples_per_s": mapped["samples_per_s"],
        "mmap_peak_rss_mb": mapped["peak_rss_mb"],
        "export_s": exp["export_s"],
        "export_peak_rss_mb": exp["export_peak_rss_mb"],
        "baseline_samples_per_s": base["samples_per_s"],
        "baseline_peak_rss_mb": base["peak_rss_mb"],
        "baseline_load_s": base["load_s"],
        "baseline_spread": base["spread"],
        "loader_workers": args.workers,
        "loader_samples_per_s": loader["samples_per_s"],
        "loader_join_s": loader["join_s"],
        "loader_first_batch_s": loader["first_batch_s"],
        "loader_peak_rss_mb": loader["peak_rss_mb"],
        "loader_worker_peak_rss_mb": loader["worker_peak_rss_mb"],
        "speed_ratio": ours["samples_per_s"] / base["samples_per_s"],
        "rss_ratio": ours["peak_rss_mb"] / base["peak_rss_mb"],
        "targets": {"samples_per_s": 200_000, "rss_ratio_max": 0.25},
        "notes": "one torch thread per process (as in DataLoader workers). mmap gather: every touched page "
        "of vectors.npy counts in RSS (shared page cache, mapped in whole large folios); the pread gather "
        "keeps RSS at the batch.",
    }
    out = write_results("bench_loader", payload, args.json_out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
