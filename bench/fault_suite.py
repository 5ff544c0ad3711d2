"""The fault-injection suite: every writer, a fault at each of its write calls in turn, nothing lost.

For each writer (ingest, embed, align, memmap export) the suite
1. runs it cleanly through the real CLI (`python -m revision …`) with `REVISION_FAULT=count`, which
   numbers every write call that the store's durability rests on (store/faults.py) and keeps the
   clean output's bytes;
2. for chosen write calls k and each fault kind (SIGKILL, EIO, ENOSPC) runs the same command again
   with `REVISION_FAULT=<kind>@k`, and checks: a killed run died by SIGKILL; an EIO/ENOSPC run exited
   2 with a one-line error and no traceback; whatever output exists opens at its last commit and
   zarr-python reads every array consistently (no row below an array's shape is unwritten);
3. re-runs the command without a fault and checks that it exits 0, its output has exactly the clean
   run's bytes, and no temporary files or staging directories are left.

`python bench/fault_suite.py --json-out bench/results/faults.json` runs the full sweep (every write
call × every kind × every writer); the test suite runs a sampled subset (tests/test_fault_suite.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("kill", "eio", "enospc")
_TEMP_MARKERS = (".tmp-", ".creating-", ".partial", ".ingest", ".old-")


@dataclass
class Writer:
    """One writer under test: the CLI arguments, its output paths and how to compare two outputs."""

    name: str
    argv: list[str]
    outputs: list[Path]  # files or directories the command produces (compared byte for byte)
    store: Path | None  # the feature store among them, checked after a fault
    volatile_keys: tuple[str, ...] = ()  # JSON keys that hold timings, not data
    workdir: Path | None = None  # removed between runs when the outputs live inside it

    def reset(self) -> None:
        """Remove everything the writer produced, so the next run starts from nothing."""
        for p in [self.workdir] if self.workdir is not None else self.outputs:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


def _env(fault: str | None, log: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVISION_FAULT")}
    env["REVISION_NO_PROGRESS"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("PYTHONHASHSEED", "0")  # training is bitwise reproducible on the CPU with it
    if fault:
        env["REVISION_FAULT"] = fault
    if log is not None:
        env["REVISION_FAULT_LOG"] = str(log)
    return env


def run_cli(argv: list[str], fault: str | None = None, log: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "revision", *argv],
        env=_env(fault, log),
        capture_output=True,
        text=True,
        timeout=600,
    )


# -- the writers' inputs ------------------------------------------------------------------------------
def _store(path: Path, modality: str, n: int, seed: int, *, dim: int = 16) -> None:
    from revision.store import FeatureStore, StoreConfig

    rng = np.random.default_rng(seed)
    cfg = StoreConfig(modality=modality, dim=dim, dtype="float16", chunk_rows=8, chunks_per_shard=2)
    with FeatureStore.create(path, cfg, metadata_columns={"caption": "str"}) as st:
        x = rng.standard_normal((n, dim)).astype(np.float32) + (0.5 if modality == "image" else -0.5)
        st.append(x, [f"{modality[0]}{i}" for i in range(n)], {"caption": [f"c{i}" for i in range(n)]})


def setup_ingest(root: Path) -> Writer:
    from revision.store.pickle_io import write_reference_pickle

    rng = np.random.default_rng(3)
    src = root / "pkl"
    k = 0
    for j in range(4):
        recs = []
        for _ in range(int(rng.integers(5, 12))):
            recs.append({"id": f"t{k}", "caption": f"c{k}", "embed": rng.standard_normal(16).astype(np.float16)})
            k += 1
        write_reference_pickle(src / f"text_embeds_{j + 1}.pkl", recs)
    dest = root / "ingested.zarr"
    argv = ["ingest", str(src), str(dest), "--format", "reference-pkl", "--chunk-rows", "4"]
    argv += ["--chunks-per-shard", "2", "--batch-rows", "5"]
    return Writer("ingest", argv, [dest], dest)


def setup_align(root: Path) -> Writer:
    _store(root / "text.zarr", "text", 45, 1)
    _store(root / "image.zarr", "image", 30, 2)
    out = root / "aligned.zarr"
    argv = ["align", "--text", str(root / "text.zarr"), "--image", str(root / "image.zarr"), "--out", str(out)]
    argv += ["--commit-rows", "16", "--block-rows", "8", "--no-progress"]
    # "created" in the stats file is when they were fitted: it differs between any two clean runs.
    return Writer("align", argv, [out, out.with_name(out.name + ".stats.json")], out, volatile_keys=("created",))


def setup_export(root: Path) -> Writer:
    _store(root / "src.zarr", "text", 40, 4)
    dest = root / "view"
    argv = ["export", str(root / "src.zarr"), str(dest), "--format", "memmap"]
    return Writer("export-memmap", argv, [dest], None, volatile_keys=("export_seconds",))


def setup_embed(root: Path) -> Writer:
    from revision.embed.tiny import build_tiny_clip, write_tiny_dataset

    model = build_tiny_clip(root / "model", seed=1)
    data = write_tiny_dataset(root / "data", n_images=6, n_texts=9, seed=2, broken=False)
    out = root / "emb"
    argv = ["embed", "--data", str(data), "--image-root", str(data.parent / "images"), "--out", str(out)]
    argv += ["--model", str(model), "--no-progress", "--batch-size", "2", "--group-batches", "1"]
    argv += ["--commit-seconds", "0", "--workers", "0"]
    return Writer("embed", argv, [out], out / "text.zarr")


def setup_train(root: Path) -> Writer:
    from revision.train.tiny import PROTOTYPE_PHRASES, build_prototype_task, build_tiny_llm

    build_tiny_llm(root / "llm", [*PROTOTYPE_PHRASES], hidden=32, layers=1, heads=2)
    build_prototype_task(root / "task", n=48)
    run = root / "run"
    argv = ["train", "pretrain", "--data", str(root / "task" / "ann.jsonl"), "--features", str(root / "task" / "view")]
    argv += ["--llm", str(root / "llm"), "--out", str(run), "--train-llm", "--epochs", "1", "--batch-size", "8"]
    argv += ["--save-every", "2"]
    # The weights are the data; run.json and metrics.jsonl also hold timings.
    return Writer("train", argv, [run / "projector.pt", run / "llm" / "model.safetensors"], None, workdir=run)


SETUPS: dict[str, Callable[[Path], Writer]] = {
    "ingest": setup_ingest,
    "align": setup_align,
    "export-memmap": setup_export,
    "embed": setup_embed,
    "train": setup_train,
}


# -- checks -------------------------------------------------------------------------------------------
def _normalise(path: Path, data: bytes, volatile: tuple[str, ...]) -> bytes:
    if not volatile or path.suffix != ".json":
        return data
    doc = json.loads(data)
    for key in volatile:
        doc.pop(key, None)
    return json.dumps(doc, sort_keys=True).encode()


def snapshot(w: Writer) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for root in w.outputs:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = _normalise(f, f.read_bytes(), w.volatile_keys)
    return out


def leftovers(w: Writer) -> list[str]:
    """Temporary files or staging directories anywhere under the writer's folder."""
    base = w.workdir or w.outputs[0].parent
    return sorted(str(p) for p in base.rglob("*") if any(m in p.name for m in _TEMP_MARKERS))


def check_store_after_fault(store: Path, clean_rows: int) -> str | None:
    """None if the store (if it exists) is readable at a commit; otherwise what is wrong."""
    if not (store / "zarr.json").exists():
        return None
    from revision.store import FeatureStore

    try:
        st = FeatureStore.open(store)
        rows = st.rows
        if rows > clean_rows:
            return f"{rows} rows committed, more than a clean run's {clean_rows}"
        if rows:
            st.read(0, rows)
            st.read_ids(0, rows)
            for col in st.metadata_columns:
                st.read_metadata(col, 0, rows)
        st.close()
    except Exception as exc:  # noqa: BLE001 - any failure here is the finding
        return f"store unreadable at its last commit: {type(exc).__name__}: {exc}"
    try:
        import zarr

        g = zarr.open_group(str(store), mode="r")
        if g.attrs["revision"]["rows"] != rows:
            return "zarr-python sees another committed count"
        names = ["vectors", "ids", *(f"meta/{c}" for c in st.metadata_columns)]
        for name in names:
            arr = g[name]
            if arr.shape[0] < rows:
                return f"zarr-python: {name} has {arr.shape[0]} rows, fewer than the {rows} committed"
            arr[: arr.shape[0]]
    except Exception as exc:  # noqa: BLE001
        return f"zarr-python cannot read the store: {type(exc).__name__}: {exc}"
    return None


@dataclass
class Prepared:
    writer: Writer
    root: Path
    clean: dict[str, bytes]
    points: list[str]  # "kind path" of each write call, in order
    clean_rows: int
    seconds: float


def prepare(name: str, base: Path) -> Prepared:
    """Set up `name`'s inputs, run it cleanly while counting write calls, keep its output; reset."""
    root = base / name
    root.mkdir(parents=True)
    w = SETUPS[name](root)
    log = base / f"{name}.points"
    t0 = time.perf_counter()
    proc = run_cli(w.argv, "count", log)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"clean {name} run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    points = [line.split(" ", 1)[1] for line in log.read_text().splitlines()]
    clean = snapshot(w)
    clean_rows = 0
    if w.store is not None:
        from revision.store import FeatureStore

        clean_rows = FeatureStore.open(w.store).rows
    w.reset()
    return Prepared(w, root, clean, points, clean_rows, seconds)


def one_fault(prep: Prepared, kind: str, k: int) -> dict[str, Any]:
    """Inject `kind` at write call k, check the aftermath, re-run, compare. Returns the record."""
    w = prep.writer
    rec: dict[str, Any] = {"writer": w.name, "kind": kind, "point": k, "where": prep.points[k - 1]}
    proc = run_cli(w.argv, f"{kind}@{k}")
    rec["rc"] = proc.returncode
    problems: list[str] = []
    if kind == "kill":
        if proc.returncode != -9:
            problems.append(f"expected death by SIGKILL, got rc {proc.returncode}: {proc.stderr[-500:]}")
    else:
        err_lines = [line for line in proc.stderr.splitlines() if line.strip()]
        if proc.returncode != 2:
            problems.append(f"expected exit 2, got {proc.returncode}: {proc.stderr[-800:]}")
        elif "Traceback" in proc.stderr or not any("error:" in line for line in err_lines):
            problems.append(f"not a one-line error: {proc.stderr[-800:]}")
        rec["message"] = err_lines[-1] if err_lines else ""
    if w.store is not None:
        issue = check_store_after_fault(w.store, prep.clean_rows)
        if issue:
            problems.append(issue)
    again = run_cli(w.argv)
    if again.returncode != 0:
        problems.append(f"re-run failed ({again.returncode}): {again.stderr[-800:]}")
    else:
        got = snapshot(w)
        if got != prep.clean:
            diff = sorted(set(got) ^ set(prep.clean)) or [k for k in got if got[k] != prep.clean[k]]
            problems.append(f"re-run output differs from a clean run's: {diff[:5]}")
        left = leftovers(w)
        if left:
            problems.append(f"left behind: {left[:5]}")
    rec["ok"] = not problems
    if problems:
        rec["problems"] = problems
    w.reset()  # the next fault starts from nothing
    for p in leftovers(w):
        shutil.rmtree(p, ignore_errors=True) if Path(p).is_dir() else Path(p).unlink(missing_ok=True)
    return rec


def choose_points(n: int, sample: int | None, rng: random.Random) -> list[int]:
    """All of 1..n, or `sample` of them: always the first and the last, the rest drawn at random."""
    if sample is None or sample >= n:
        return list(range(1, n + 1))
    picks = {1, n}
    while len(picks) < sample:
        picks.add(rng.randint(1, n))
    return sorted(picks)[:sample] if sample >= 2 else [rng.randint(1, n)]


def sweep(
    writers: list[str], kinds: tuple[str, ...] = KINDS, sample: int | None = None, seed: int = 0
) -> dict[str, Any]:
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    per_writer: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="revision-faults-") as tmp:
        for name in writers:
            prep = prepare(name, Path(tmp))
            tried = 0
            for kind in kinds:
                for k in choose_points(len(prep.points), sample, rng):
                    records.append(one_fault(prep, kind, k))
                    tried += 1
            per_writer[name] = {
                "write_calls": len(prep.points),
                "faults_tried": tried,
                "clean_run_seconds": round(prep.seconds, 2),
                "call_kinds": sorted({p.split(" ", 1)[0] for p in prep.points}),
            }
    failed = [r for r in records if not r["ok"]]
    return {
        "writers": per_writer,
        "kinds": list(kinds),
        "sample_per_kind": sample,
        "faults_tried": len(records),
        "failures": len(failed),
        "nothing_lost": not failed,
        "records": records,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writers", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    ap.add_argument("--sample", type=int, default=None, help="write calls per writer and kind (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    result = sweep(args.writers, tuple(args.kinds), args.sample, args.seed)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    for name, info in result["writers"].items():
        bad = sum(1 for r in result["records"] if r["writer"] == name and not r["ok"])
        print(f"{name:14s} {info['write_calls']:4d} write calls  {info['faults_tried']:4d} faults  {bad} failed")
    for r in result["records"]:
        if not r["ok"]:
            print(f"FAILED {r['writer']} {r['kind']}@{r['point']} ({r['where']}): {r['problems']}")
    if args.json_out:
        from revision.bench.harness import write_results

        write_results("faults", {"command": " ".join(sys.argv), **result}, args.json_out)
    return 0 if result["nothing_lost"] else 1


if __name__ == "__main__":
    sys.exit(main())
