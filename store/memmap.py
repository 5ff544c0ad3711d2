"""Export a feature store as a memory-mappable training view: raw `.npy` vectors plus an id index.

Zarr decodes a whole chunk to serve one row, so random-row training reads a raw row-major copy.
The export directory holds:

- `vectors.npy`   (N, D) in the store's storage dtype (bfloat16 kept as its uint16 bits);
                  `np.load(path / "vectors.npy", mmap_mode="r")` works.
- the id files of `revision.store.idindex` (UTF-8 ids + offsets, sorted 64-bit hash index).
- `header.json`   rows, dim, dtype, storage dtype, the id hash, collision counts, the source store
                  and its alignment stats (if any). Written last; its presence marks a complete export.

Written in one streaming pass over the store (memory bounded by one read block plus one sort run),
into a work directory beside `dest` that is renamed to `dest` at the end. After each block the work
directory records a checkpoint, so an interrupted export resumes instead of starting over.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from revision.store import faults
from revision.store.atomic import atomic_write_bytes, make_dirs, replace_dir, resolve_durable, write_error
from revision.store.featurestore import FeatureStore, StoreError
from revision.store.idindex import DEFAULT_HASH, HashFn, IdIndexBuilder, hash_id_bytes
from revision.store.lock import WriterLock
from revision.store.npyio import NpyWriter

FORMAT = "revision-memmap"
FORMAT_VERSION = 1
HEADER_NAME = "header.json"
PROGRESS_NAME = "progress.json"
LOCK_NAME = ".lock"  # the lock file of older versions, removed when found
VECTORS_NAME = "vectors.npy"


def export_memmap(
    store: FeatureStore,
    dest: str | Path,
    *,
    show_progress: bool = True,
    overwrite: bool = False,
    block_rows: int | None = None,
    run_rows: int = 1 << 22,
    hash_fn: HashFn = hash_id_bytes,
    hash_name: str = DEFAULT_HASH,
) -> dict[str, Any]:
    """Write the memmap training view of `store` to directory `dest`; returns the JSON header.

    An interrupted export (Ctrl-C, a killed process) resumes where it stopped when run again with the
    same store and arguments; its work directory `.<dest name>.partial` sits beside `dest`.

    block_rows: rows read from the store at a time (None: the store's default read block).
    run_rows: hashes sorted in memory at a time while building the id index (16 bytes each).
    hash_fn / hash_name: the id hash (tests inject colliding ones); readers must use the same.
    """
    dest = Path(dest)
    if (dest / HEADER_NAME).exists() and not overwrite:
        done = _finished_export_of(dest, store, hash_name)
        if done is not None:
            return done
        raise StoreError(
            f"{dest}: DEST already holds a memmap export of another store; remove it or choose another path"
        )
    if dest.exists() and not (dest / HEADER_NAME).exists() and (dest.is_file() or any(dest.iterdir())):
        raise StoreError(f"{dest}: DEST already exists and is not a memmap export; remove it or choose another path")
    try:
        return _export(store, dest, show_progress, block_rows, run_rows, hash_fn, hash_name)
    except OSError as exc:
        raise write_error(Path(exc.filename) if exc.filename else dest, exc) from None


def _finished_export_of(dest: Path, store: FeatureStore, hash_name: str) -> dict[str, Any] | None:
    """The header of `dest` if it is a complete export of exactly this store (a re-run: nothing to do)."""
    try:
        header = read_header(dest)
    except StoreError:
        return None
    src = header.get("source") or {}
    same = (
        src.get("path") == str(Path(store.path).resolve())
        and header.get("rows") == store.rows
        and header.get("dim") == store.dim
        and header.get("dtype") == store.dtype
        and header.get("id_hash") == hash_name
        and header.get("attrs") == store.attrs
    )
    return header if same else None


def _export(
    store: FeatureStore,
    dest: Path,
    show_progress: bool,
    block_rows: int | None,
    run_rows: int,
    hash_fn: HashFn,
    hash_name: str,
) -> dict[str, Any]:
    make_dirs(dest.parent)
    work = dest.parent / f".{dest.name}.partial"
    work.mkdir(exist_ok=True)
    # The lock is on the work directory itself (no lock file to unlink while held); it moves with the
    # directory when that is renamed to `dest`, and is dropped by the kernel if we are killed.
    with WriterLock.acquire(work, f"{dest}: another export to this destination is running;"):
        (work / LOCK_NAME).unlink(missing_ok=True)
        t0 = time.perf_counter()
        source = {
            "path": str(Path(store.path).resolve()),
            "rows": store.rows,
            "dim": store.dim,
            "dtype": store.dtype,
            "run_rows": run_rows,
            "id_hash": hash_name,
        }
        header = _write(store, work, source, show_progress, block_rows, run_rows, hash_fn, hash_name)
        header["export_seconds"] = round(time.perf_counter() - t0, 3)
        (work / PROGRESS_NAME).unlink(missing_ok=True)  # absent when the store has no rows
        # The header is written last (durably): its presence marks a complete export.
        atomic_write_bytes(work / HEADER_NAME, (json.dumps(header, indent=2) + "\n").encode())
        replace_dir(work, dest)
    return header


def _resume_state(work: Path, source: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint of an interrupted export of the same source, or None (then start afresh)."""
    try:
        progress = json.loads((work / PROGRESS_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return progress if progress.get("source") == source else None


def _write(
    store: FeatureStore,
    work: Path,
    source: dict[str, Any],
    show_progress: bool,
    block_rows: int | None,
    run_rows: int,
    hash_fn: HashFn,
    hash_name: str,
) -> dict[str, Any]:
    from tqdm import tqdm

    n = store.rows
    durable = resolve_durable(None)
    state = _resume_state(work, source)
    if state is None:
        for p in work.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        vectors = NpyWriter(work / VECTORS_NAME, store.np_dtype, (store.dim,))
        builder = IdIndexBuilder(work, run_rows=run_rows, hash_fn=hash_fn)
        done = 0
    else:
        done = int(state["rows"])
        vectors = builder = None
        try:
            vectors = NpyWriter(work / VECTORS_NAME, store.np_dtype, (store.dim,), resume_rows=done)
            builder = IdIndexBuilder(work, run_rows=run_rows, hash_fn=hash_fn, resume=state["ids"])
        except (OSError, ValueError):  # a damaged work directory: start over
            if vectors is not None:
                vectors.abort()
            (work / PROGRESS_NAME).unlink()
            return _write(store, work, source, show_progress, block_rows, run_rows, hash_fn, hash_name)
    try:
        if done:
            # Hashes of rows after the last spilled sort run lived only in memory: hash them again.
            builder.rehash(store.read_ids(builder.pending_from, done))
        with tqdm(total=n, initial=done, unit="row", unit_scale=True, disable=not show_progress, desc="export") as bar:
            for lo, block in store.iter_chunks(start=done, block_rows=block_rows):
                faults.point("write", work / VECTORS_NAME)
                vectors.append(block)
                builder.add(store.read_ids(lo, lo + len(block)))
                vectors.flush()
                if durable:  # the rows a checkpoint counts must be on disk before the checkpoint is
                    vectors.sync()
                checkpoint = {"source": source, "rows": lo + len(block), "ids": builder.checkpoint()}
                atomic_write_bytes(work / PROGRESS_NAME, json.dumps(checkpoint).encode(), durable=durable)
                bar.update(len(block))
        vectors.close()
        stats = builder.finish()
    except BaseException:
        vectors.abort()
        builder.abort()
        raise
    if vectors.rows != n or stats.rows != n:
        raise StoreError(f"{store.path}: read {vectors.rows} vectors and {stats.rows} ids for a store of {n} rows")
    attrs = store.attrs
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "rows": n,
        "dim": store.dim,
        "dtype": store.dtype,
        "storage_dtype": str(store.np_dtype),
        "vectors": VECTORS_NAME,
        "id_hash": hash_name,
        "id_bytes": stats.id_bytes,
        "hash_collisions": stats.hash_collisions,
        "duplicate_ids": stats.duplicate_ids,
        "source": {
            "path": source["path"],
            "rows": n,
            "modality": store.modality,
            "normalized": store.normalized,
            "encoder": getattr(store.config, "encoder", None),
        },
        "alignment": attrs.get("alignment"),
        "attrs": attrs,
    }


def read_header(path: str | Path) -> dict[str, Any]:
    """The header of a complete memmap export (StoreError if `path` is not one)."""
    p = Path(path)
    try:
        header = json.loads((p / HEADER_NAME).read_text())
    except FileNotFoundError:
        raise StoreError(f"{p}: not a memmap export (no {HEADER_NAME}; was the export interrupted?)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(f"{p / HEADER_NAME}: unreadable ({exc})") from exc
    if header.get("format") != FORMAT:
        raise StoreError(f"{p}: not a memmap export (format {header.get('format')!r})")
    if int(header.get("format_version", 0)) > FORMAT_VERSION:
        raise StoreError(f"{p}: memmap format {header['format_version']} is newer than this revision")
    return header
