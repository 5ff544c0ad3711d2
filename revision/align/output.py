"""The output store of pass 3: who owns it, when it is complete, and how often it is committed.

An apply job's output carries its progress record from the moment it is created (not only from its
first commit), so a job interrupted at any moment — before its first commit included — finds its own
output again and resumes. Ownership is checked under the writer lock and before the crash repair: a
second job pointed at the same `--out` is refused (LockedError while the first runs, or "not written
by …" afterwards) without touching a byte. A finished `align` records what it was run on; re-running
the same command finds that and returns at once instead of redoing passes 1–2.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from revision.align.config import AlignConfig
from revision.align.methods import Method
from revision.align.stats import AlignStats
from revision.errors import UserError
from revision.store import FeatureStore, StoreConfig
from revision.store.lock import probe

JOB = "align-apply"

#: Output bytes between the default commits of pass 3: per-shard commits cost ~0.6 s per 5 GB here.
COMMIT_BYTES = 1 << 30
#: And at most this many seconds between commits, so an interrupt loses little work on slow disks.
COMMIT_SECONDS = 20.0


def store_fingerprint(st: FeatureStore) -> dict[str, Any]:
    """What identifies a store's committed content cheaply: its path, rows and commit record's hash."""
    doc = (Path(st.path) / "zarr.json").read_bytes()
    return {
        "path": str(Path(st.path).resolve()),
        "rows": st.rows,
        "commit": hashlib.sha256(doc).hexdigest()[:16],
    }


def run_identity(text: FeatureStore, image: FeatureStore | None, config: AlignConfig) -> dict[str, Any]:
    """An `align` run: its inputs' fingerprints and its configuration (the stats follow from them)."""
    cfg = config.to_json()
    for volatile in ("progress", "device", "block_rows", "commit_rows"):  # how it runs, not what it computes
        cfg.pop(volatile, None)
    return {
        "text": store_fingerprint(text),
        "image": None if image is None else store_fingerprint(image),
        "config": cfg,
    }


def progress_record(stats: AlignStats, text: FeatureStore, next_row: int, run: dict[str, Any] | None) -> dict[str, Any]:
    rec: dict[str, Any] = {"job": JOB, "stats": stats.digest(), "source_rows": text.rows, "next_row": next_row}
    if run is not None:
        rec["run"] = run
    if next_row >= text.rows:
        rec["done"] = True
    return rec


def finished_run(out: Path, run: dict[str, Any]) -> FeatureStore | None:
    """The complete output of exactly this `align` run, if `out` holds it (opened read-only)."""
    if not (out / "zarr.json").is_file():
        return None
    try:
        st = FeatureStore.open(out)
    except UserError:
        return None
    prog = st.progress or {}
    if prog.get("job") == JOB and prog.get("done") and prog.get("run") == run:
        return st
    st.close()
    return None


def check_before_work(out: Path, text: FeatureStore) -> None:
    """Refuse an `--out` that is busy or plainly someone else's before passes 1–2 spend any time.

    Cheap and early; the binding check is `open_output`'s, under the lock, once the stats are known.
    """
    if not out.exists():
        return
    if not (out / "zarr.json").is_file():
        raise UserError(f"--out {out}: exists and is not a feature store; remove it or pick another --out")
    probe(out, f"--out {out}")
    with FeatureStore.open(out) as st:
        prog = st.progress or {}
        if prog.get("job") != JOB or prog.get("source_rows") != text.rows:
            raise UserError(_not_ours(out))


def _not_ours(out: Path) -> str:
    return (
        f"--out {out}: already exists and was not written by an unfinished apply of these statistics "
        "on this text store; remove it or pick another --out"
    )


def out_config(text: FeatureStore, method: Method, config: AlignConfig, stats: AlignStats) -> StoreConfig:
    return StoreConfig(
        modality="text",
        dim=text.dim,
        dtype=config.out_dtype,
        chunk_rows=text.chunk_rows,
        # The text store's geometry: output shards line up with input shards (and stay sanely sized).
        chunks_per_shard=max(1, text.shard_rows // text.chunk_rows),
        codec=text.codec,
        normalized=method.unit_output,
        encoder=text.config.encoder,
        provenance={**text.config.provenance, "aligned_from": str(text.path), "alignment_method": stats.method},
    )


def open_output(
    out: Path,
    text: FeatureStore,
    method: Method,
    config: AlignConfig,
    stats: AlignStats,
    run: dict[str, Any] | None,
) -> FeatureStore:
    """Create `out` (its progress recorded from the start), or reopen it for resuming if it is ours."""
    if not out.exists():
        attrs = {k: v for k, v in text.attrs.items() if k != "alignment"}
        attrs["alignment"] = stats.header()
        return FeatureStore.create(
            out,
            out_config(text, method, config, stats),
            metadata_columns=dict(text.metadata_columns),
            attrs=attrs,
            progress=progress_record(stats, text, 0, run),
        )
    digest = stats.digest()

    def ours(st: FeatureStore) -> None:  # runs under the lock, before any repair
        prog = st.progress or {}
        if prog.get("job") != JOB or prog.get("stats") != digest or prog.get("source_rows") != text.rows:
            raise UserError(_not_ours(out))
        if st.dtype != config.out_dtype:
            raise UserError(f"--out {out}: an unfinished run with --out-dtype {st.dtype}; resume with the same flag")

    if not (out / "zarr.json").is_file():
        raise UserError(f"--out {out}: exists and is not a feature store; remove it or pick another --out")
    return FeatureStore.open(out, mode="a", owner_check=ours)


class CommitClock:
    """When pass 3 commits: every `rows` rows (whole output shards) or every `seconds`, whichever first."""

    def __init__(self, start: int, rows: int, seconds: float) -> None:
        self.rows, self.seconds = rows, seconds
        self._next = (start // rows + 1) * rows
        self._last = time.monotonic()

    def due(self, done: int) -> bool:
        if done >= self._next or time.monotonic() - self._last >= self.seconds:
            self._next = (done // self.rows + 1) * self.rows
            self._last = time.monotonic()
            return True
        return False


def default_commit_rows(dst: FeatureStore) -> int:
    """Whole output shards adding up to about COMMIT_BYTES (at least one shard)."""
    shard_bytes = dst.shard_rows * dst.dim * dst.np_dtype.itemsize
    return dst.shard_rows * max(1, round(COMMIT_BYTES / shard_bytes))
