"""Alignment benchmark: store-native `revision align` vs its I/O floor and a naive float64 baseline;
`revision align-pkl` vs a re-implementation of the reference script on pickles.

--mode store (default): synthetic fp16 text + image stores (a modality gap between two cones).
  - align: the three passes (rows/s, GB/s per pass), best of --repeats;
  - floor: the same I/O with no arithmetic — raw scans of the text (twice) and the image (once), plus
    pass 3's I/O: the text read once more, converted to float32 and written through the store's writer
    on a write-behind thread. What any exact implementation must at least spend. Floor and align run
    interleaved, taking turns going first, each after `settle`, so both meet the same disk state;
  - baseline: the reference algorithm in memory, whole arrays in float64, four passes over text and
    two over images (at --baseline-rows when the full size would not fit in RAM; compared per row);
  - peak RSS of align (in a fresh subprocess) at rows/4 and at rows.
--mode pkl: reference pickles (--pkl-rows text + image rows, --rows-per-file a file): `revision
  align-pkl` vs bench/reference_realign.py (the baseline), each in a subprocess with its peak RSS, plus
  store-native `align` on the same data after ingest; outputs are checked equal.

Run small to check it works:   python -m revision.bench.bench_align --rows 20000 --dim 256 --repeats 1
Real sizes (integrator):       python -m revision.bench.bench_align && python -m revision.bench.bench_align --mode pkl
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from revision.bench.harness import peak_rss_mb, print_table, write_results

GEN_BLOCK = 16_384


def _cone(rng: np.random.Generator, n: int, dim: int, axis: int) -> np.ndarray:
    centre = np.zeros(dim, dtype=np.float32)
    centre[axis] = 1.0
    x = rng.standard_normal((n, dim), dtype=np.float32) * np.float32(0.6 / np.sqrt(dim) * 4)
    x += centre
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16)


def make_store(path: Path, rows: int, dim: int, modality: str, seed: int) -> None:
    """A fp16 store of `rows` synthetic rows, written block by block (bounded memory)."""
    from revision.store import FeatureStore, StoreConfig

    if path.exists():
        return
    rng = np.random.default_rng(seed)
    tmp = path.with_name(path.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    axis = 0 if modality == "text" else 1
    with FeatureStore.create(tmp, StoreConfig(modality=modality, dim=dim, dtype="float16")) as st:
        for s in range(0, rows, GEN_BLOCK):
            n = min(GEN_BLOCK, rows - s)
            st.append(_cone(rng, n, dim, axis), [f"{modality[:3]}_{k:010d}" for k in range(s, s + n)])
    tmp.rename(path)


def make_pickles(d: Path, rows: int, dim: int, per_file: int, modality: str, seed: int) -> None:
    if d.exists():
        return
    rng = np.random.default_rng(seed)
    tmp = d.with_name(d.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    key = "caption" if modality == "text" else "image_path"
    for k, s in enumerate(range(0, rows, per_file), start=1):
        n = min(per_file, rows - s)
        x = _cone(rng, n, dim, 0 if modality == "text" else 1)
        recs = [{"id": f"{modality[:3]}_{j:010d}", key: f"item {j}", "embed": x[j - s]} for j in range(s, s + n)]
        with open(tmp / f"{modality}_embeds_{k}.pkl", "wb") as fh:
            pickle.dump(recs, fh, protocol=4)
    tmp.rename(d)


# -- measurements -------------------------------------------------------------------------------------


def scan_seconds(path: Path) -> tuple[float, int]:
    """A raw scan of every chunk, no arithmetic: the faster of the store's copying read (read-ahead
    threads) and its zero-copy views with every byte read once (a byte max, at memory speed)."""
    from revision.store import FeatureStore

    st = FeatureStore.open(path)
    best, nbytes = float("inf"), 0
    for zero_copy in (False, True):
        t0 = time.perf_counter()
        nbytes = 0
        for _, block in st.iter_chunks(zero_copy=zero_copy):
            if zero_copy:
                block.reshape(-1).view(np.uint8).max()
            nbytes += block.nbytes
        best = min(best, time.perf_counter() - t0)
    return best, nbytes


def write_floor_seconds(text: Path, out: Path, dtype: str = "float32") -> tuple[float, float]:
    """Pass 3's I/O without its arithmetic: each text block read (zero-copy, as pass 3 reads), converted
    to `dtype` (pass 3's --out-dtype) and appended through the store's writer on a write-behind thread,
    exactly as pass 3 writes. → (seconds until the store is committed, seconds until its pages are on disk)."""
    from revision.align.writebehind import WriteBehind
    from revision.store import FeatureStore, StoreConfig

    st = FeatureStore.open(text)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    cfg = StoreConfig(modality="text", dim=st.dim, dtype=dtype, chunk_rows=st.chunk_rows,
                      chunks_per_shard=max(1, st.shard_rows // st.chunk_rows))  # fmt: skip
    writes = WriteBehind()
    try:
        with FeatureStore.create(out, cfg) as dst:
            for lo, block in st.iter_chunks(zero_copy=True):
                writes.submit(dst.append, block.astype(np.dtype(dtype)), st.read_ids(lo, lo + block.shape[0]))
            writes.drain()
    finally:
        writes.close()
    seconds = time.perf_counter() - t0
    os.sync()
    return seconds, time.perf_counter() - t0


def settle(out: Path) -> None:
    """Before each timed step: the previous output gone, every dirty page on disk and the deletion's
    discards done, so no step pays for another's write-back. This disk is mounted with `discard`: a
    5 GB delete slowed the next few seconds of writes by up to 2x when only `sync` separated them."""
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    time.sleep(DISCARD_WAIT_S)
    os.sync()


#: Seconds to let a deletion's discards finish (ext4 issues them at the next journal commit, ≤ 5 s).
DISCARD_WAIT_S = 15.0


def align_once(text: Path, image: Path, out: Path) -> dict[str, Any]:
    from revision.align import align_stores

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    res = align_stores(text, image, out, progress=False)
    total = time.perf_counter() - t0
    os.sync()
    synced = time.perf_counter() - t0
    return {"seconds": total, "synced": synced, "passes": [t.to_json() for t in res.timings]}


def naive_baseline_seconds(text: Path, image: Path, rows: int) -> float:
    """The reference algorithm in memory: whole float64 arrays, four passes over text, two over images."""
    from revision.store import FeatureStore

    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    t0 = time.perf_counter()
    t = FeatureStore.open(text).read(0, rows).astype(np.float64)
    i = FeatureStore.open(image).read(0, rows).astype(np.float64)
    mu_t = unit(t).mean(0).astype(np.float32).astype(np.float64)
    mu_i = unit(i).mean(0).astype(np.float32).astype(np.float64)
    tr_t = ((unit(t) - mu_t) ** 2).sum(1).mean()
    tr_i = ((unit(i) - mu_i) ** 2).sum(1).mean()
    s = np.sqrt(tr_i / (tr_t + 1e-10))
    mu_hat = unit(mu_i + s * (unit(t) - mu_t)).mean(0)
    out = unit(unit(mu_i + s * (unit(t) - mu_t)) - mu_hat + mu_i).astype(np.float32)
    assert out.shape[0] == rows
    return time.perf_counter() - t0


def _subprocess(args: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "revision.bench.bench_align", "--_worker", json.dumps(args)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"worker {args[0]} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def worker(spec: list[str]) -> None:
    """Runs in a fresh process: one job, then prints {seconds, peak_rss_mb} as the last line."""
    kind = spec[0]
    t0 = time.perf_counter()
    if kind == "align":
        from revision.align import align_stores

        out = Path(spec[3])
        shutil.rmtree(out, ignore_errors=True)
        align_stores(spec[1], spec[2], out, progress=False)
    elif kind == "align-pkl":
        from revision.cli import main

        rc = main(["align-pkl", "--input_dir", spec[1], "--img_input_dir", spec[2], "--output_dir", spec[3],
                   "--no-progress"])  # fmt: skip
        assert rc == 0
    elif kind == "reference":
        from revision.bench.reference_realign import run

        run(Path(spec[1]), Path(spec[2]), Path(spec[3]))
    else:
        raise SystemExit(f"unknown worker {kind}")
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()}))


# -- modes --------------------------------------------------------------------------------------------


def store_mode(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rows, dim = args.rows, args.dim
    small = max(1, rows // 4)
    text, image = work / f"text-{rows}-{dim}.zarr", work / f"image-{rows}-{dim}.zarr"
    make_store(text, rows, dim, "text", 1)
    make_store(image, rows, dim, "image", 2)
    out = work / "aligned.zarr"
    # Floor and align interleaved, each after `settle`, so both meet the same disk state; the best of
    # each counts, and the per-repeat ratios show the spread.
    scans_t, scans_i, writes_f, runs, floors = [], [], [], [], []
    # One untimed write first: the first large write of a process here runs up to 2x slower (page
    # cache full of the inputs), and would otherwise land on whichever step comes first.
    write_floor_seconds(text, out)
    # Two measures of each step: until it returns, and until its output is on disk (`sync` inside the
    # clock). The first depends on how much of the 5 GB the page cache absorbed, which varies run to
    # run; the second is what the disk must do in any case, so the ratio of record uses it.
    writes_synced: list[float] = []
    floors_synced: list[float] = []
    for rep in range(args.repeats):
        settle(out)
        scans_t.append(scan_seconds(text)[0])
        scans_i.append(scan_seconds(image)[0])
        # Floor and align take turns going first, so an order effect cannot favour either.
        for step in ("floor", "align") if rep % 2 == 0 else ("align", "floor"):
            settle(out)
            if step == "floor":
                returned, synced = write_floor_seconds(text, out)
                writes_f.append(returned)
                writes_synced.append(synced)
            else:
                runs.append(align_once(text, image, out))
        # The floor: the text read twice (passes 1-2), the image once, and pass 3's read + write.
        reads = 2 * scans_t[-1] + scans_i[-1]
        floors.append(reads + writes_f[-1])
        floors_synced.append(reads + writes_synced[-1])
    settle(out)
    scan_t, scan_i, write_f = min(scans_t), min(scans_i), min(writes_f)
    floor = 2 * scan_t + scan_i + min(writes_synced)
    best = min(runs, key=lambda r: r["synced"])
    per_repeat = [r["synced"] / f for r, f in zip(runs, floors_synced, strict=True)]
    per_repeat_cached = [r["seconds"] / f for r, f in zip(runs, floors, strict=True)]
    base_rows = min(rows, args.baseline_rows)
    base = naive_baseline_seconds(text, image, base_rows) if base_rows > 0 else float("nan")
    base_per_row = base / base_rows if base_rows else float("nan")
    row_bytes = dim * 2
    table = []
    for p in best["passes"]:
        table.append({"step": f"align: {p['name']}", "rows": p["rows"], "seconds": p["seconds"],
                      "rows/s": p["rows"] / p["seconds"], "GB/s": p["bytes"] / p["seconds"] / 1e9})  # fmt: skip
    table.append({"step": "align: total", "rows": rows, "seconds": best["seconds"], "rows/s": rows / best["seconds"],
                  "GB/s": 4 * rows * row_bytes / best["seconds"] / 1e9})  # fmt: skip
    table.append({"step": "align: total, output on disk", "rows": rows, "seconds": best["synced"],
                  "rows/s": rows / best["synced"]})  # fmt: skip
    table.append({"step": "floor: scan text", "rows": rows, "seconds": scan_t, "rows/s": rows / scan_t,
                  "GB/s": rows * row_bytes / scan_t / 1e9})  # fmt: skip
    table.append({"step": "floor: scan image", "rows": rows, "seconds": scan_i, "rows/s": rows / scan_i,
                  "GB/s": rows * row_bytes / scan_i / 1e9})  # fmt: skip
    table.append({"step": "floor: read text + write f32 (pass 3's I/O)", "rows": rows, "seconds": write_f,
                  "rows/s": rows / write_f})  # fmt: skip
    table.append({"step": "floor: the same, output on disk", "rows": rows, "seconds": min(writes_synced),
                  "rows/s": rows / min(writes_synced)})  # fmt: skip
    table.append({"step": "floor: 2 text + 1 image + pass 3's I/O on disk", "rows": rows, "seconds": floor,
                  "rows/s": rows / floor})  # fmt: skip
    table.append({"step": f"baseline f64 in memory ({base_rows:,} rows)", "rows": base_rows, "seconds": base,
                  "rows/s": base_rows / base if base else float("nan")})  # fmt: skip
    rss = {}
    for n in sorted({small, rows}):
        t_n, i_n = work / f"text-{n}-{dim}.zarr", work / f"image-{n}-{dim}.zarr"
        make_store(t_n, n, dim, "text", 1)
        make_store(i_n, n, dim, "image", 2)
        rss[n] = _subprocess(["align", str(t_n), str(i_n), str(work / f"rss-{n}.zarr")])
        shutil.rmtree(work / f"rss-{n}.zarr", ignore_errors=True)
    for n, r in rss.items():
        table.append({"step": f"align in a subprocess ({n:,} rows)", "rows": n, "seconds": r["seconds"],
                      "rows/s": n / r["seconds"], "peak RSS MB": r["peak_rss_mb"]})  # fmt: skip
    print_table(table, ["step", "rows", "seconds", "rows/s", "GB/s", "peak RSS MB"])
    ratios = {
        "align_over_floor": best["synced"] / floor,
        "align_over_floor_median_repeat": float(np.median(per_repeat)),
        "align_over_floor_each_repeat": per_repeat,
        "page_cache_align_over_floor_median_repeat": float(np.median(per_repeat_cached)),
        "page_cache_align_over_floor_each_repeat": per_repeat_cached,
        "baseline_over_align_per_row": base_per_row * rows / best["seconds"],
        "rss_large_over_small": rss[rows]["peak_rss_mb"] / rss[small]["peak_rss_mb"],
        "rss_large_mb": rss[rows]["peak_rss_mb"],
    }
    print("\n" + "  ".join(f"{k} = {v:.3g}" for k, v in ratios.items() if isinstance(v, float)))
    print("align_over_floor in each repeat: " + ", ".join(f"{r:.2f}" for r in per_repeat))
    print("the same until each step returns (page cache): " + ", ".join(f"{r:.2f}" for r in per_repeat_cached))
    print("targets: align_over_floor ≤ 1.5, rss_large_over_small ≤ 1.25, rss_large_mb < 1536")
    shutil.rmtree(out, ignore_errors=True)
    return {
        "mode": "store",
        "rows": rows,
        "dim": dim,
        "table": table,
        "ratios": ratios,
        "align_runs": runs,
        "per_repeat": [
            {
                "scan_text": a,
                "scan_image": b,
                "write_floor": c,
                "write_floor_synced": cs,
                "floor": f,
                "floor_synced": fs,
                "align": r["seconds"],
                "align_synced": r["synced"],
            }  # fmt: skip
            for a, b, c, cs, f, fs, r in zip(
                scans_t, scans_i, writes_f, writes_synced, floors, floors_synced, runs, strict=True
            )
        ],
    }


def pkl_mode(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rows, dim, per = args.pkl_rows, args.dim, args.rows_per_file
    src_t, src_i = work / f"pkl-text-{rows}-{dim}-{per}", work / f"pkl-image-{rows}-{dim}-{per}"
    make_pickles(src_t, rows, dim, per, "text", 1)
    make_pickles(src_i, rows, dim, per, "image", 2)
    out_ours, out_ref = work / "pkl-ours", work / "pkl-ref"
    table = []
    results: dict[str, Any] = {}
    for name, kind, out in (("align-pkl", "align-pkl", out_ours), ("reference (baseline)", "reference", out_ref)):
        best = None
        for _ in range(args.repeats):
            shutil.rmtree(out, ignore_errors=True)
            r = _subprocess([kind, str(src_t), str(src_i), str(out)])
            best = r if best is None or r["seconds"] < best["seconds"] else best
        assert best is not None
        results[name] = best
        table.append({"step": name, "rows": rows, "seconds": best["seconds"], "rows/s": rows / best["seconds"],
                      "peak RSS MB": best["peak_rss_mb"]})  # fmt: skip
    worst = 0.0
    for f in sorted((out_ref / "trace").iterdir()):
        with open(f, "rb") as a, open(out_ours / "trace" / f.name, "rb") as b:
            ra, rb = pickle.load(a), pickle.load(b)
        worst = max(worst, float(np.abs(np.stack([r["embed"] for r in ra]) - np.stack([r["embed"] for r in rb])).max()))
    # Store-native align on the same data (ingest is not timed).
    from revision.cli import main

    st_t, st_i = work / f"pkl-text-{rows}-{dim}.zarr", work / f"pkl-image-{rows}-{dim}.zarr"
    for src, dst in ((src_t, st_t), (src_i, st_i)):
        if not dst.exists():
            assert main(["ingest", str(src), str(dst), "--format", "reference-pkl"]) == 0
    best = None
    for _ in range(args.repeats):
        r = _subprocess(["align", str(st_t), str(st_i), str(work / "pkl-store-aligned.zarr")])
        best = r if best is None or r["seconds"] < best["seconds"] else best
    assert best is not None
    results["align (store)"] = best
    table.append({"step": "align (store-native)", "rows": rows, "seconds": best["seconds"],
                  "rows/s": rows / best["seconds"], "peak RSS MB": best["peak_rss_mb"]})  # fmt: skip
    print_table(table, ["step", "rows", "seconds", "rows/s", "peak RSS MB"])
    ref, ours = results["reference (baseline)"], results["align-pkl"]
    ratios = {
        "align_pkl_speedup": ref["seconds"] / ours["seconds"],
        "align_pkl_rss_fraction": ours["peak_rss_mb"] / ref["peak_rss_mb"],
        "align_store_speedup": ref["seconds"] / best["seconds"],
        "max_abs_diff_vs_baseline": worst,
    }
    print("\n" + "  ".join(f"{k} = {v:.3g}" for k, v in ratios.items()))
    print("targets: align_pkl_speedup ≥ 5, align_pkl_rss_fraction ≤ 0.25, align_store_speedup ≥ 10")
    for out in (out_ours, out_ref, work / "pkl-store-aligned.zarr"):
        shutil.rmtree(out, ignore_errors=True)
    return {"mode": "pkl", "rows": rows, "dim": dim, "rows_per_file": per, "table": table, "ratios": ratios}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("store", "pkl"), default="store", help="what to measure (default: store)")
    ap.add_argument("--rows", type=int, default=1_000_000, help="text rows = image rows, store mode (default: 1M)")
    ap.add_argument("--dim", type=int, default=1280, help="vector dimension (default: %(default)s)")
    ap.add_argument("--baseline-rows", type=int, default=250_000,
                    help="rows of the in-memory float64 baseline (needs 16·rows·dim bytes; default 250k)")  # fmt: skip
    ap.add_argument("--pkl-rows", type=int, default=400_000, help="text = image rows, pkl mode (default: 400k)")
    ap.add_argument("--rows-per-file", type=int, default=200_000, help="pkl mode: rows per pickle (default: 200k)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats; the fastest counts (default: %(default)s)")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch directory, reused across runs (default: temp)")
    ap.add_argument(
        "--json-out", type=Path, default=None, help="results file (default: bench/results/align[-pkl].json)"
    )
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker is not None:
        worker(json.loads(args._worker))
        return
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-align-")
        work = Path(tmp.name)
    else:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    try:
        payload = store_mode(args, work) if args.mode == "store" else pkl_mode(args, work)
    finally:
        if tmp is not None:
            tmp.cleanup()
    name = "align" if args.mode == "store" else "align-pkl"
    print(f"results: {write_results(name, payload, args.json_out)}")


if __name__ == "__main__":
    main()
