"""Ingest: reference pickles, clip-retrieval npy + parquet, or parquet → a feature store.

A new DEST is built under a staging directory next to it (`.<name>.ingest/`) and renamed into place
only when complete, so DEST never exists half-written. The staging store commits after every input
file and about every four shards, recording `progress = {"job": "ingest", "key": …, "file": i, "item": k}`;
re-running the same ingest (same inputs and options → same key) continues from there and produces
the same store as an uninterrupted run. An existing DEST is appended to with a single commit at the
end: until then its readers see the old rows, and a crash or a rejected input leaves it as it was
(a re-run starts that append over). Duplicate ids, within the input and against DEST's rows, are
found with on-disk hash buckets (see idcheck.py), so memory follows the batch size, not the row count.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .atomic import make_dirs
from .config import DTYPES, ConfigError, StoreConfig, auto_chunk_rows, canonical_dtype
from .errors import UserError
from .idcheck import ID_HASH
from .ingest_job import IngestJob, IngestSummary
from .lock import WriterLock
from .npy_io import NpySource
from .objio import RemotePath, is_url, location
from .objlock import LOCK_NAME, ObjectLock
from .parquet_io import ParquetSource
from .pickle_io import PickleSource
from .sources import Source

__all__ = ["DEFAULT_BATCH_ROWS", "FORMATS", "NONFINITE", "IngestSummary", "ingest", "job_key", "open_source"]

FORMATS = ("reference-pkl", "npy", "parquet")
NONFINITE = ("error", "skip", "zero")
DEFAULT_BATCH_ROWS = 65536
_SRC_TO_STORE_DTYPE = {"f2": "float16", "f4": "float32", "f8": "float32"}


def open_source(
    fmt: str,
    src: str | os.PathLike[str],
    modality: str | None = None,
    *,
    id_column: str | None = None,
    embedding_column: str | None = None,
) -> Source:
    """The reader for `--format`; the flags that do not apply to it are refused by name."""
    if fmt == "reference-pkl":
        for flag, value in (("--id-column", id_column), ("--embedding-column", embedding_column)):
            if value is not None:
                raise UserError(f"{flag} does not apply to --format reference-pkl (ids are the 'id' key)")
        return PickleSource(src, modality)
    if fmt == "npy":
        if embedding_column is not None:
            raise UserError("--embedding-column does not apply to --format npy")
        return NpySource(src, modality, id_column=id_column)
    if fmt == "parquet":
        return ParquetSource(src, modality, id_column=id_column, embedding_column=embedding_column)
    raise UserError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")


def job_key(source: Source, options: dict[str, Any]) -> str:
    """A hash of the input listing (names, sizes, mtimes) and the options that shape the result."""
    listing = []
    for p in source.listing:
        st = p.stat()
        listing.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    doc = json.dumps({"listing": listing, "options": options}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:32]


def _small_input_chunk_rows(source: Source, store_dtype: str) -> int | None:
    """Chunks no larger than a small input needs (a 1-row store padded to a 4 MiB chunk is waste).

    None (the automatic ~4 MiB chunks) unless the input is known to hold fewer rows than that.
    """
    if not source.rows_estimate:
        return None
    auto = auto_chunk_rows(source.dim, DTYPES[store_dtype][0].itemsize)
    if source.rows_estimate >= auto:
        return None
    return 1 << max(0, (source.rows_estimate - 1).bit_length())


def _store_dtype(source: Source, dtype: str | None) -> str:
    if dtype is not None:
        try:
            return canonical_dtype(dtype)
        except ConfigError as exc:
            raise UserError(str(exc)) from None
    hint = source.layout_attrs.get("dtype_hint")
    return str(hint) if hint else _SRC_TO_STORE_DTYPE[source.src_dtype.str[1:]]


def ingest(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    fmt: str,
    modality: str | None = None,
    nonfinite: str = "error",
    dtype: str | None = None,
    codec: str = "none",
    chunk_rows: int | None = None,
    chunks_per_shard: int | None = None,
    id_column: str | None = None,
    embedding_column: str | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    commit_rows: int | None = None,
    show_progress: bool = False,
) -> IngestSummary:
    """Read `src` in format `fmt` into the feature store `dest` (created, resumed or appended to).

    dtype None keeps the input's precision (float16 stays float16; float64 becomes float32).
    nonfinite: "error" rejects a row with NaN/Inf naming its id; "skip" drops such rows; "zero"
    replaces the non-finite values by 0 (the reference's own rule). Both are counted.
    """
    if nonfinite not in NONFINITE:
        raise UserError(f"--nonfinite: {nonfinite!r} is not one of {', '.join(NONFINITE)}")
    if batch_rows <= 0:
        raise UserError(f"--batch-rows must be positive, got {batch_rows}")
    source = open_source(fmt, src, modality, id_column=id_column, embedding_column=embedding_column)
    try:
        store_dtype = _store_dtype(source, dtype)
        if chunk_rows is None:
            chunk_rows = _small_input_chunk_rows(source, store_dtype)
            if chunk_rows is not None and chunks_per_shard is None:
                chunks_per_shard = 1  # the whole input fits one chunk: one shard file, a 16-byte index
        try:
            cfg = StoreConfig(
                modality=source.modality,
                dim=source.dim,
                dtype=store_dtype,
                chunk_rows=chunk_rows,
                chunks_per_shard=chunks_per_shard,
                codec=codec,
                provenance={"ingest": {"format": fmt, "source": str(Path(src).resolve()), "files": len(source.files)}},
            )
        except ConfigError as exc:
            raise UserError(str(exc)) from None
        options = {
            "fmt": fmt,
            "config": cfg.to_json(),
            "nonfinite": nonfinite,
            "id_column": id_column,
            "embedding_column": embedding_column,
            # Resumed runs reuse the id buckets on disk, so they must hash ids the same way.
            "id_hash": ID_HASH,
        }
        key = job_key(source, options)
        remote = location(dest) if is_url(dest) else None
        local = _staging_for(remote) if isinstance(remote, RemotePath) else Path(dest)
        job = IngestJob(source, local, key, nonfinite, batch_rows, commit_rows, show_progress)
        if isinstance(remote, RemotePath) and (remote / "zarr.json").is_file():
            raise UserError(f"{remote}: DEST already exists; appending to a store on object storage is not supported")
        with _exclusive(local):
            if local.exists():
                summary = job.append(dtype_given=dtype is not None, dtype=store_dtype)
            else:
                summary = job.create(cfg)
        if isinstance(remote, RemotePath):
            upload_store(local, remote)
            shutil.rmtree(local.parent, ignore_errors=True)
            summary.dest = str(remote)
        return summary
    finally:
        source.close()


def _staging_for(remote: RemotePath) -> Path:
    """Where an ingest into `remote` builds the store first: a local folder named by the URL, so a
    re-run after a kill resumes the build (or only the upload) instead of starting over."""
    root = Path(os.environ.get("REVISION_STAGING_DIR") or Path(tempfile.gettempdir()) / "revision-staging")
    digest = hashlib.sha256(str(remote).encode()).hexdigest()[:16]
    return root / digest / remote.name


def upload_store(local: Path, remote: RemotePath) -> None:
    """Copy a finished local store to object storage, one whole object per file, the group's zarr.json
    last: until that PUT the URL holds no store, so a kill mid-upload leaves nothing a reader opens,
    and a re-run uploads again from the start."""
    with ObjectLock.acquire(remote, f"{remote}: store"):
        if (remote / "zarr.json").is_file():
            raise UserError(f"{remote}: DEST already exists (created by another process meanwhile)")
        for leftover in remote.files():  # a killed upload's objects: overwritten or orphaned otherwise
            if leftover.name != LOCK_NAME:
                leftover.unlink(missing_ok=True)
        files = sorted(f for f in local.rglob("*") if f.is_file() and not f.name.startswith("."))
        top = local / "zarr.json"
        for f in [f for f in files if f != top] + [top]:
            remote_path = remote
            for part in f.relative_to(local).parts:
                remote_path = remote_path / part
            remote_path.put(f.read_bytes())


@contextmanager
def _exclusive(dest: Path) -> Iterator[None]:
    """One ingest per DEST at a time: a second one would write into the same staging or store.

    The lock is on the staging directory (`.<name>.ingest` beside DEST, where a new store is built),
    taken before anything is read or removed; the job removes that directory only while holding it.
    """
    staging = dest.parent / f".{dest.name}.ingest"
    make_dirs(dest.parent)
    staging.mkdir(exist_ok=True)
    try:
        lock = WriterLock.acquire(staging, f"{dest}: another ingest into this DEST is running;")
    except FileNotFoundError:
        raise UserError(f"{dest}: another ingest into this DEST finished or gave up meanwhile; re-run") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            staging.rmdir()  # only when empty: a lock-only directory (appends, finished jobs)
        lock.release()
