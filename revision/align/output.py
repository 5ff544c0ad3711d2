"""The output store of pass 3: who owns it, when it is complete, and how often it is committed.

An apply job's output carries its progress record from the moment it is created (not only from its
first commit), so a job interrupted at any moment — before its first commit included — finds its own
output again and resumes. Ownership is checked under the writer lock and before the crash repair: a
second job pointed at the same `--out` is refused (LockedError while the first runs, or "not written
by …" afterwards) without touching a byte. A finished `align` records what it was run on; re-running
the same command finds that and returns at once instead of redoing passes 1–2.

Under torchrun `--out` is a directory of parts, one per rank (`partRRR-of-WWW.zarr`, read back as
one store set), each with its own progress record over its rows [lo, hi): each rank resumes its own
part, and a resume with another number of processes is refused before anything is written.
`--out` may be a URL (`s3://bucket/aligned/`): there the directory is a prefix, found by listing.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from revision import dist
from revision.align.config import AlignConfig
from revision.align.methods import Method
from revision.align.stats import AlignStats
from revision.errors import UserError
from revision.store import FeatureStore, Readable, StoreConfig, StoreSet
from revision.store.lock import probe
from revision.store.storeset import PART_NAME, AnyPath, part_name

JOB = "align-apply"

#: Output bytes between the default commits of pass 3: per-shard commits cost ~0.6 s per 5 GB here.
COMMIT_BYTES = 1 << 30
#: And at most this many seconds between commits, so an interrupt loses little work on slow disks.
COMMIT_SECONDS = 20.0


def store_fingerprint(st: Readable) -> dict[str, Any]:
    """What identifies a store's (or set's) committed content cheaply: path, rows, commit records' hash."""
    h = hashlib.sha256()
    for part in st.parts if isinstance(st, StoreSet) else [st]:
        h.update((part.path / "zarr.json").read_bytes())
    return {
        "path": str(st.path.resolve()),
        "rows": st.rows,
        "commit": h.hexdigest()[:16],
    }


def output_part(out: AnyPath, text: Readable) -> tuple[AnyPath, tuple[int, int] | None]:
    """Where this process writes pass 3 and which text rows: (`out`, None) in a one-process run,
    (`out/partRRR-of-WWW.zarr`, (lo, hi)) for rank R of W. A world size other than the one `out`
    was started with is refused."""
    w = dist.world()
    # zarr.json first: on object storage `out/` is a prefix, known only by listing what is under it.
    if (out / "zarr.json").is_file():
        if w.distributed:
            raise UserError(
                f"--out {out}: written by a one-process run; resume it with one process (this run has "
                f"{w.size}) or remove it"
            )
    elif out.is_dir():
        names = [c.name for c in out.iterdir()]
        counts = {int(m["count"]) for m in map(PART_NAME.match, names) if m}
        if counts and counts != {w.size}:
            raise UserError(
                f"--out {out}: parts of a run with {min(counts)} processes; resume it with that many "
                f"(this run has {w.size}) or remove it"
            )
        strays = [n for n in names if not PART_NAME.match(n) and not n.startswith(".")]
        if w.distributed and strays:
            raise UserError(f"--out {out}: exists and holds {strays[0]!r}, not only store parts; pick another --out")
    if not w.distributed:
        return out, None
    out.mkdir(parents=True, exist_ok=True)
    # Rows split on chunks, not on --block-rows: a resume with other flags finds its parts' rows again.
    chunks = text.block_ranges(0, None, text.chunk_rows)
    lo, hi = dist.span(dist.share(dist.segments(chunks, dist.MAX_SEGMENTS), w))
    return out / part_name(w.rank, w.size), (lo, hi)


def run_identity(text: Readable, image: Readable | None, config: AlignConfig) -> dict[str, Any]:
    """An `align` run: its inputs' fingerprints and its configuration (the stats follow from them)."""
    cfg = config.to_json()
    for volatile in ("progress", "device", "block_rows", "commit_rows"):  # how it runs, not what it computes
        cfg.pop(volatile, None)
    return {
        "text": store_fingerprint(text),
        "image": None if image is None else store_fingerprint(image),
        "config": cfg,
    }


def progress_record(
    stats: AlignStats,
    text: Readable,
    next_row: int,
    run: dict[str, Any] | None,
    *,
    span: tuple[int, int] | None = None,
) -> dict[str, Any]:
    rec: dict[str, Any] = {"job": JOB, "stats": stats.digest(), "source_rows": text.rows, "next_row": next_row}
    if run is not None:
        rec["run"] = run
    if span is not None:
        rec["span"] = list(span)
    if next_row >= (text.rows if span is None else span[1]):
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


def _span_of(prog: dict[str, Any]) -> list[int] | None:
    value = prog.get("span")
    return None if value is None else list(value)


def check_before_work(out: Path, text: Readable, *, span: tuple[int, int] | None = None) -> None:
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
        if prog.get("job") != JOB or prog.get("source_rows") != text.rows or _span_of(prog) != _listed(span):
            raise UserError(_not_ours(out))


def _listed(span: tuple[int, int] | None) -> list[int] | None:
    return None if span is None else list(span)


def _not_ours(out: Path) -> str:
    return (
        f"--out {out}: already exists and was not written by an unfinished apply of these statistics "
        "on this text store; remove it or pick another --out"
    )


def out_config(text: Readable, method: Method, config: AlignConfig, stats: AlignStats) -> StoreConfig:
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
    text: Readable,
    method: Method,
    config: AlignConfig,
    stats: AlignStats,
    run: dict[str, Any] | None,
    *,
    span: tuple[int, int] | None = None,
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
            progress=progress_record(stats, text, 0 if span is None else span[0], run, span=span),
        )
    digest = stats.digest()

    def ours(st: FeatureStore) -> None:  # runs under the lock, before any repair
        prog = st.progress or {}
        if prog.get("job") != JOB or prog.get("stats") != digest or prog.get("source_rows") != text.rows:
            raise UserError(_not_ours(out))
        if _span_of(prog) != _listed(span):
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
