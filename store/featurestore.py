"""FeatureStore: one modality's vectors, ids and per-row metadata in a Zarr v3 group.

Layout (standard Zarr v3, readable by any Zarr v3 library):

    <store>/zarr.json            group; attributes["revision"] is the commit record
    <store>/vectors/             (N, D) float16 | float32 | uint16 (= bfloat16 bits)
    <store>/ids/                 (N,) string
    <store>/meta/<column>/       (N,) string | int64 | float64 | bool

All arrays share one row chunking and sharding. The commit protocol: data shards are written
first (each file replaced atomically), then each array's zarr.json with the new shape, then the
group's zarr.json with the new row count — the commit point. A reader trusts the group's count; a
writer that opens a store repairs anything a crash left past it. A SIGKILL at any moment therefore
leaves the store readable at its last commit. Commits are durable by default (every file fsynced
before its rename, directories after; see atomic.py), so the same holds after a power cut.

What another Zarr v3 reader (zarr-python) sees after a crash at any point of a commit: every array
opens, and every row below an array's own shape reads back the data that was appended (shards are
always written before any shape grows, so no row inside a shape is a fill value). Between the first
array's zarr.json and the group's, array shapes may differ from each other and from the group's
committed count (`attributes.revision.rows`), which is the one to slice to; the next writer to open
the store sets every shape back to the committed count.

One writer at a time: opening for writing (`create`, `open(mode="a")`) takes an exclusive lock
(lock.py) before anything is touched, and the crash repair is done only by the lock holder, so a
second writer is refused with the holder's pid and command instead of deleting the first one's work.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import faults
from .atomic import atomic_write_bytes, fsync_dir, make_dirs, resolve_durable, write_error
from .config import DTYPES, FORMAT_VERSION, META_KINDS, StoreConfig
from .errors import UserError
from .lock import WriterLock
from .objio import RemotePath, location
from .objlock import LOCK_NAME, ObjectLock
from .readahead import read_ahead
from .shard import ArraySpec, ShardReader
from .writer import ArrayWriter, BrokenWriterError

_COLUMN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_READ_BLOCK_BYTES = 16 << 20


class StoreError(UserError):
    """A store cannot be opened, created or written as asked; the message names the path."""


def _group_doc(attributes: dict[str, Any]) -> bytes:
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attributes}, indent=2).encode()


def _as_storage(vectors: Any, dtype: str, np_dtype: np.dtype[Any]) -> np.ndarray:
    """Convert a (n, D) numpy array or torch tensor to the store's on-disk dtype."""
    if type(vectors).__module__.startswith("torch"):
        import torch

        t = vectors.detach().to("cpu")
        if dtype == "bfloat16":
            return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)
        return t.numpy().astype(np_dtype, copy=False)
    arr = np.asarray(vectors)
    if dtype == "bfloat16":
        if arr.dtype == np.uint16:  # already bf16 bits
            return arr
        import torch

        f32 = np.ascontiguousarray(arr, dtype=np.float32)
        if not f32.flags.writeable:  # torch.from_numpy warns on read-only memory (e.g. a memmap)
            f32 = f32.copy()
        t = torch.from_numpy(f32).to(torch.bfloat16)
        return t.view(torch.int16).numpy().view(np.uint16)
    return arr.astype(np_dtype, copy=False)


Location = Path | RemotePath


class FeatureStore:
    """A feature store on local disk or object storage (a URL). Create with `create`, open with `open`."""

    def __init__(self, path: Location, record: dict[str, Any], user_attrs: dict[str, Any], mode: str) -> None:
        self.path = path
        self.mode = mode
        self._record = record
        self._attrs = user_attrs
        self.config = StoreConfig(**record["config"])
        self.metadata_columns: dict[str, str] = dict(record["metadata_columns"])
        self._rows = int(record["rows"])
        self._specs = self._build_specs()
        self._readers: dict[str, ShardReader] = {}
        self._shared_index: dict[int, np.ndarray] = {}  # vectors' shard indexes, for remote block reads
        self._writers: dict[str, ArrayWriter] | None = None
        self._pending_attrs: dict[str, Any] = {}
        self._lock: WriterLock | ObjectLock | None = None
        self._broken: BaseException | None = None
        self._durable = False

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str] | RemotePath,
        config: StoreConfig,
        *,
        metadata_columns: dict[str, str] | None = None,
        attrs: dict[str, Any] | None = None,
        progress: dict[str, Any] | None = None,
        durable: bool | None = None,
    ) -> FeatureStore:
        """Create an empty store at `path` (which must not exist) and open it for appending.

        `path` may be a URL (s3://bucket/prefix/text.zarr, any fsspec URL): see objio.py.

        `progress` is recorded in the first commit, so a job killed before its own first commit can
        still recognise the store as its own and resume. The returned store holds the writer lock.
        `durable=None`: fsync commits unless REVISION_NO_FSYNC=1 (see atomic.py).
        """
        p = location(path)
        if p.exists():
            raise StoreError(f"{p}: already exists (open it with mode='a' to append or resume)")
        columns = dict(metadata_columns or {})
        for name, kind in columns.items():
            if not _COLUMN_NAME.match(name):
                raise StoreError(f"{p}: metadata column name {name!r} is not a plain name")
            if kind not in META_KINDS:
                raise StoreError(f"{p}: metadata column {name!r} has unknown kind {kind!r}")
        cfg = config.resolved()
        record = {
            "format_version": FORMAT_VERSION,
            "config": cfg.to_json(),
            "dtype": cfg.dtype,
            "rows": 0,
            "metadata_columns": list(columns.items()),
            "progress": progress,
        }
        user = dict(attrs or {})
        if "revision" in user:
            raise StoreError(f"{p}: the attribute name 'revision' is reserved")
        sync = resolve_durable(durable)
        if isinstance(p, RemotePath):
            return cls._create_remote(p, record, user, columns)
        # Build next to the destination and rename, so a crash never leaves a half-made store. The
        # lock is taken on the new directory before the rename and moves with it (flock belongs to
        # the inode), so no other writer can slip in between the rename and our open.
        tmp = p.with_name(f".{p.name}.creating-{os.getpid()}")
        make_dirs(p.parent, durable=sync)
        _remove_abandoned_creations(p)
        try:
            tmp.mkdir()
        except OSError as exc:
            raise write_error(tmp, exc) from None
        lock = WriterLock.acquire(tmp, f"{p}: store")
        try:
            store = cls(tmp, record, user, "a")
            for spec in store._specs.values():
                spec.write_metadata(0, durable=sync)
            if columns:
                atomic_write_bytes(tmp / "meta" / "zarr.json", _group_doc({}), durable=sync)
            atomic_write_bytes(tmp / "zarr.json", _group_doc({"revision": record, **user}), durable=sync)
            faults.point("rename", p)
            try:
                os.replace(tmp, p)
            except OSError as exc:
                if p.exists():
                    raise StoreError(f"{p}: already exists (created by another process meanwhile)") from None
                raise write_error(p, exc) from None
            if sync:
                try:
                    fsync_dir(p.parent)
                except OSError as exc:
                    raise write_error(p, exc) from None
        except BaseException:
            lock.release()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        lock.path = p
        return cls._open(p, "a", durable=sync, lock=lock)

    @classmethod
    def _create_remote(
        cls, p: RemotePath, record: dict[str, Any], user: dict[str, Any], columns: dict[str, str]
    ) -> FeatureStore:
        """Create on object storage: no directory to rename into place, so the group zarr.json, written
        last, is what makes the store exist; objects a killed creator left under the prefix (no
        zarr.json) are removed by the next creator once it holds the lock."""
        lock = ObjectLock.acquire(p, f"{p}: store")
        try:
            if (p / "zarr.json").is_file():
                raise StoreError(f"{p}: already exists (created by another process meanwhile)")
            for leftover in p.files():
                if leftover.name != LOCK_NAME:
                    leftover.unlink(missing_ok=True)
            store = cls(p, record, user, "a")
            for spec in store._specs.values():
                spec.write_metadata(0)
            if columns:
                atomic_write_bytes(p / "meta" / "zarr.json", _group_doc({}))
            faults.point("rename", str(p))
            atomic_write_bytes(p / "zarr.json", _group_doc({"revision": record, **user}))
        except BaseException:
            lock.release()
            raise
        return cls._open(p, "a", durable=True, lock=lock)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | RemotePath,
        mode: str = "r",
        *,
        durable: bool | None = None,
        owner_check: Callable[[FeatureStore], None] | None = None,
    ) -> FeatureStore:
        """Open an existing store read-only ("r") or for appending/resuming ("a").

        "a" takes the store's writer lock first (LockedError, naming the holder, if another process
        has it), then calls `owner_check(store)` (which raises if the store is not the caller's to
        write: nothing has been touched yet), then repairs what a crashed writer left past the last
        commit.
        """
        if mode not in ("r", "a"):
            raise StoreError(f"mode must be 'r' or 'a', got {mode!r}")
        p = location(path)
        return cls._open(p, mode, durable=resolve_durable(durable), lock=None, owner_check=owner_check)

    @classmethod
    def _open(
        cls,
        p: Location,
        mode: str,
        *,
        durable: bool,
        lock: WriterLock | ObjectLock | None,
        owner_check: Callable[[FeatureStore], None] | None = None,
    ) -> FeatureStore:
        if mode == "a" and lock is None and (p / "zarr.json").is_file():
            if isinstance(p, RemotePath):
                lock = ObjectLock.acquire(p, f"{p}: store")
            else:
                lock = WriterLock.acquire(p, f"{p}: store")
        try:
            store = cls._read(p, mode)
            if mode == "a":
                assert lock is not None
                store._lock = lock
                if owner_check is not None:
                    owner_check(store)
                store._start_writing(durable)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return store

    @classmethod
    def _read(cls, p: Location, mode: str) -> FeatureStore:
        meta = p / "zarr.json"
        if isinstance(p, Path) and not meta.is_file():
            raise StoreError(f"{p}: not a feature store (no zarr.json)")
        try:
            doc = json.loads(meta.read_text())
        except FileNotFoundError:
            raise StoreError(f"{p}: not a feature store (no zarr.json)") from None
        except (OSError, ValueError) as exc:
            raise StoreError(f"{p}: unreadable zarr.json ({exc})") from exc
        attrs = doc.get("attributes", {}) if isinstance(doc, dict) else {}
        record = attrs.get("revision") if isinstance(attrs, dict) else None
        if not isinstance(record, dict) or "config" not in record:
            raise StoreError(f"{p}: a Zarr group, but not a revision feature store")
        if record.get("format_version", 0) > FORMAT_VERSION:
            raise StoreError(f"{p}: store format {record['format_version']} is newer than this revision")
        user = {k: v for k, v in attrs.items() if k != "revision"}
        return cls(p, record, user, mode)

    def _build_specs(self) -> dict[str, ArraySpec]:
        cfg = self.config
        assert cfg.chunk_rows is not None and cfg.chunks_per_shard is not None
        geometry = {"chunk_rows": cfg.chunk_rows, "chunks_per_shard": cfg.chunks_per_shard}
        np_dtype, zarr_dtype = DTYPES[cfg.dtype]
        specs = {
            "vectors": ArraySpec(self.path / "vectors", (cfg.dim,), np_dtype, zarr_dtype, codec=cfg.codec, **geometry),
            "ids": ArraySpec(self.path / "ids", (), None, "string", codec="zstd", **geometry),
        }
        for name, kind in self.metadata_columns.items():
            dt = META_KINDS[kind]
            zdt = "string" if dt is None else ("bool" if dt.kind == "b" else str(dt.name))
            specs[f"meta/{name}"] = ArraySpec(self.path / "meta" / name, (), dt, zdt, codec="zstd", **geometry)
        return specs

    def _start_writing(self, durable: bool) -> None:
        """Repair what a crashed writer may have left past the last commit, then prepare buffers.

        Only ever called with the writer lock held: the files removed here may otherwise be another
        live writer's uncommitted work.
        """
        assert self._lock is not None and self._lock.held
        if isinstance(self.path, RemotePath):
            self._repair_remote()
            self._writers = {k: ArrayWriter(s, self._rows) for k, s in self._specs.items()}
            self._durable = True
            return
        for stale in self.path.rglob(".*.tmp-*"):  # a temporary file a killed writer never renamed
            stale.unlink(missing_ok=True)
        for spec in self._specs.values():
            doc = json.loads((spec.path / "zarr.json").read_text())
            if doc["shape"][0] != self._rows:
                spec.write_metadata(self._rows, durable=durable)
            open_shard = self._rows // spec.shard_rows
            shard_dir = spec.path / "c"
            assert isinstance(shard_dir, Path)
            if shard_dir.is_dir():
                for entry in shard_dir.iterdir():
                    if entry.name.isdigit() and int(entry.name) > open_shard:
                        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        self._writers = {k: ArrayWriter(s, self._rows, durable=durable) for k, s in self._specs.items()}
        self._durable = durable

    def _repair_remote(self) -> None:
        """`_start_writing` on object storage: shapes back to the committed count, shard objects past
        the open shard deleted (the open shard itself is rewritten whole by the next commit)."""
        assert isinstance(self.path, RemotePath)
        objects = self.path.files()
        for spec in self._specs.values():
            assert isinstance(spec.path, RemotePath)
            doc = json.loads((spec.path / "zarr.json").read_text())
            if doc["shape"][0] != self._rows:
                spec.write_metadata(self._rows)
            open_shard = self._rows // spec.shard_rows
            shard_prefix = spec.path.key + "/c/"
            for obj in objects:
                if obj.key.startswith(shard_prefix):
                    first = obj.key[len(shard_prefix) :].split("/", 1)[0]
                    if first.isdigit() and int(first) > open_shard:
                        obj.unlink(missing_ok=True)

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None and self._writers is not None:
            self.commit()
        self.close()

    def close(self) -> None:
        """Release file handles and the writer lock. Uncommitted rows are dropped (commit first to keep them)."""
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
        self._writers = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def broken(self) -> bool:
        """True once an append failed: nothing more is written; reopen the store to resume."""
        return self._broken is not None

    # -- properties ---------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        """Committed rows (what readers see)."""
        return self._rows

    def __len__(self) -> int:
        return self._rows

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def dtype(self) -> str:
        return self.config.dtype

    @property
    def np_dtype(self) -> np.dtype[Any]:
        return self.config.np_dtype

    @property
    def modality(self) -> str:
        return self.config.modality

    @property
    def normalized(self) -> bool:
        return self.config.normalized

    @property
    def codec(self) -> str:
        return self.config.codec

    @property
    def chunk_rows(self) -> int:
        assert self.config.chunk_rows is not None
        return self.config.chunk_rows

    @property
    def shard_rows(self) -> int:
        return self._specs["vectors"].shard_rows

    @property
    def attrs(self) -> dict[str, Any]:
        """User attributes (a copy), including ones set since the last commit."""
        return {**self._attrs, **self._pending_attrs}

    @property
    def progress(self) -> dict[str, Any] | None:
        """What the last commit recorded about the job that wrote it (for resuming)."""
        return self._record.get("progress")

    @property
    def pending_rows(self) -> int:
        """Rows appended since the last commit."""
        return 0 if self._writers is None else self._writers["vectors"].rows - self._rows

    def __repr__(self) -> str:
        where = str(self.path)
        return f"FeatureStore({where!r}, {self.modality}, rows={self.rows}, dim={self.dim}, {self.dtype})"

    # -- writing ------------------------------------------------------------------------------
    def _require_writer(self) -> dict[str, ArrayWriter]:
        if self._writers is None:
            raise StoreError(f"{self.path}: opened read-only or closed (use mode='a' to write)")
        if self._broken is not None:
            raise BrokenWriterError(
                f"{self.path}: an earlier write failed ({self._broken}); nothing after the last commit "
                f"({self._rows:,} rows) is kept: reopen the store to resume"
            )
        return self._writers

    def append(
        self,
        vectors: Any,
        ids: Sequence[str] | np.ndarray,
        metadata: dict[str, Sequence[Any]] | None = None,
    ) -> None:
        """Buffer rows; they become visible at the next `commit`. Memory is bounded by one shard."""
        writers = self._require_writer()
        arr = _as_storage(vectors, self.dtype, self.np_dtype)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise StoreError(f"{self.path}: vectors of shape {tuple(arr.shape)} do not fit a store of dim {self.dim}")
        n = arr.shape[0]
        id_arr = np.asarray(ids, dtype=object)
        if id_arr.shape != (n,):
            raise StoreError(f"{self.path}: {len(id_arr)} ids for {n} vectors")
        if n and not all(isinstance(i, str) for i in id_arr):
            raise StoreError(f"{self.path}: ids must be strings")
        meta = metadata or {}
        if set(meta) != set(self.metadata_columns):
            missing = sorted(set(self.metadata_columns) - set(meta))
            extra = sorted(set(meta) - set(self.metadata_columns))
            raise StoreError(
                f"{self.path}: metadata columns differ from the store's (missing {missing}, extra {extra})"
            )
        encoded: dict[str, Any] = {}
        for name, kind in self.metadata_columns.items():
            values = meta[name]
            if len(values) != n:
                raise StoreError(f"{self.path}: metadata column {name!r} has {len(values)} values for {n} rows")
            encoded[f"meta/{name}"] = _encode_column(name, kind, values, self.path)
        # Every array takes the rows or the store is broken: a failure between two arrays' appends
        # would otherwise leave them at different lengths, and a later commit would publish that.
        try:
            writers["vectors"].append(arr)
            writers["ids"].append(id_arr)
            for key, values in encoded.items():
                writers[key].append(values)
        except BaseException as exc:
            self._broken = exc
            raise

    def set_attrs(self, **attrs: Any) -> None:
        """Set user attributes; written by the next commit."""
        if "revision" in attrs:
            raise StoreError(f"{self.path}: the attribute name 'revision' is reserved")
        json.dumps(attrs)  # fail now, not at commit, on values that cannot be saved
        self._pending_attrs.update(attrs)

    def commit(self, progress: dict[str, Any] | None = None, attrs: dict[str, Any] | None = None) -> None:
        """Make every appended row, `progress` and attribute change visible, atomically."""
        writers = self._require_writer()
        if attrs:
            self.set_attrs(**attrs)
        new_rows = writers["vectors"].rows
        if any(w.rows != new_rows for w in writers.values()):  # cannot happen unless a bug broke append
            raise StoreError(f"{self.path}: arrays disagree on their row counts; nothing committed")
        # Order is the protocol: data, then shapes, then the count. A failure anywhere before the last
        # write leaves the previous commit in force, and the buffers intact, so commit can be retried.
        for writer in writers.values():
            writer.flush_partial()
        for spec in self._specs.values():
            spec.write_metadata(new_rows, durable=self._durable)
        record = {**self._record, "rows": new_rows, "progress": progress}
        user = {**self._attrs, **self._pending_attrs}
        atomic_write_bytes(self.path / "zarr.json", _group_doc({"revision": record, **user}), durable=self._durable)
        self._record, self._attrs, self._pending_attrs, self._rows = record, user, {}, new_rows
        for reader in self._readers.values():  # shard indexes may have changed
            reader.close()
        self._readers.clear()
        self._shared_index.clear()

    # -- reading ------------------------------------------------------------------------------
    def _reader(self, key: str) -> ShardReader:
        reader = self._readers.get(key)
        if reader is None:
            reader = self._readers[key] = ShardReader(self._specs[key])
        return reader

    def _check_range(self, start: int, stop: int | None) -> int:
        stop = self._rows if stop is None else stop
        if not 0 <= start <= stop <= self._rows:
            raise IndexError(f"{self.path}: rows [{start}, {stop}) outside [0, {self._rows})")
        return stop

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) as an (n, D) array of the storage dtype."""
        stop = self._check_range(start, stop)
        out = np.empty((stop - start, self.dim), dtype=self.np_dtype)
        # A private reader: read() runs concurrently on read-ahead threads. On object storage the
        # readers share the shard indexes (each costs a HEAD and a GET); they change only at a commit.
        shared = self._shared_index if isinstance(self.path, RemotePath) else None
        reader = ShardReader(self._specs["vectors"], shared, rows=self._rows)
        try:
            reader.read_into(out, start, stop)
        finally:
            reader.close()
        return out

    def block_ranges(
        self, start: int = 0, stop: int | None = None, block_rows: int | None = None
    ) -> list[tuple[int, int]]:
        """Chunk-aligned [lo, hi) ranges covering [start, stop), each about `block_rows` rows."""
        stop = self._check_range(start, stop)
        cr = self.chunk_rows
        if block_rows is None and isinstance(self.path, RemotePath):
            # On object storage a block is a whole shard: one object, fetched whole (index included)
            # as concurrent ranged GETs, with no request for a part of it.
            block_rows = self.shard_rows
        if block_rows is None:
            block_rows = max(1, _READ_BLOCK_BYTES // (cr * self.dim * self.np_dtype.itemsize)) * cr
        block_rows = max(cr, block_rows // cr * cr)
        ranges = []
        lo = start
        while lo < stop:
            hi = min(stop, (lo // block_rows + 1) * block_rows)
            ranges.append((lo, hi))
            lo = hi
        return ranges

    def iter_chunks(
        self,
        start: int = 0,
        stop: int | None = None,
        *,
        block_rows: int | None = None,
        prefetch: int = 2,
        zero_copy: bool = False,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (first_row, block) over [start, stop) in chunk-aligned blocks, read ahead on threads.

        zero_copy: blocks of uncompressed stores are read-only views of the memory-mapped shard files
        (blocks are then also cut at shard boundaries); compressed stores are read as usual. The
        caller must not write into the blocks.
        """
        ranges = self.block_ranges(start, stop, block_rows)
        if zero_copy and self.codec == "none":
            yield from self._iter_views(ranges)
            return
        for (lo, _), block in zip(ranges, read_ahead(lambda r: self.read(*r), ranges, prefetch=prefetch), strict=True):
            yield lo, block

    def _iter_views(self, ranges: list[tuple[int, int]]) -> Iterator[tuple[int, np.ndarray]]:
        spec = self._specs["vectors"]
        reader = ShardReader(spec)  # private: views outlive it, and other readers keep their own files
        try:
            for lo, hi in ranges:
                pos = lo
                while pos < hi:
                    end = min(hi, (pos // spec.shard_rows + 1) * spec.shard_rows)
                    block = reader.view(pos, end)
                    yield pos, (block if block is not None else self.read(pos, end))
                    pos = end
        finally:
            reader.close()

    def read_rows(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows at `indices` (any order, repeats allowed), reading each needed chunk once."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1:
            raise IndexError("indices must be one-dimensional")
        if idx.size and (idx.min() < 0 or idx.max() >= self._rows):
            raise IndexError(f"{self.path}: row index out of [0, {self._rows})")
        out = np.empty((idx.size, self.dim), dtype=self.np_dtype)
        reader = self._reader("vectors")
        order = np.argsort(idx, kind="stable")
        chunks = idx[order] // self.chunk_rows
        bounds = np.flatnonzero(np.diff(chunks)) + 1
        for group in np.split(order, bounds):
            if not group.size:
                continue
            chunk = int(idx[group[0]] // self.chunk_rows)
            lo = chunk * self.chunk_rows
            hi = min(self._rows, lo + self.chunk_rows)
            if self.codec == "none" and len(group) * 8 < hi - lo:
                # Few rows of an uncompressed chunk: positioned reads of just those rows.
                for g in group:
                    reader.read_into(out[g : g + 1], int(idx[g]), int(idx[g]) + 1)
                continue
            rows = reader.read_chunk(chunk) if self.codec != "none" else self.read(lo, hi)
            out[group] = rows[idx[group] - lo]
        return out

    def _read_column(self, key: str, start: int, stop: int | None) -> np.ndarray:
        stop = self._check_range(start, stop)
        spec = self._specs[key]
        reader = self._reader(key)
        parts = []
        for chunk in range(start // spec.chunk_rows, -(-stop // spec.chunk_rows)):
            lo = chunk * spec.chunk_rows
            values = reader.read_chunk(chunk)
            parts.append(values[max(start, lo) - lo : min(stop, lo + spec.chunk_rows) - lo])
        if not parts:
            return np.empty(0, dtype=object if spec.dtype is None else spec.dtype)
        return np.concatenate(parts)

    def read_ids(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Ids of rows [start, stop) as an object array of str."""
        return self._read_column("ids", start, stop)

    def iter_ids(self, block_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        for lo, hi in self.block_ranges(0, None, block_rows or 64 * self.chunk_rows):
            yield lo, self.read_ids(lo, hi)

    def read_metadata(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray | list[Any]:
        """Metadata column `name` for rows [start, stop): an array, or a list of values for "json"."""
        kind = self.metadata_columns.get(name)
        if kind is None:
            raise KeyError(f"{self.path}: no metadata column {name!r} (have {sorted(self.metadata_columns)})")
        values = self._read_column(f"meta/{name}", start, stop)
        if kind == "json":
            return [json.loads(v) for v in values]
        return values

    # -- description --------------------------------------------------------------------------
    def _sizes(self, sub: str | None = None) -> int:
        where = self.path if sub is None else self.path / sub
        if isinstance(where, RemotePath):
            return sum(size for obj, size in where.files().items() if obj.name != LOCK_NAME)
        return sum(f.stat().st_size for f in where.rglob("*") if f.is_file())

    def bytes_on_disk(self) -> int:
        return self._sizes()

    def info(self) -> dict[str, Any]:
        vec_bytes = self._sizes("vectors")
        logical = self._rows * self.dim * self.np_dtype.itemsize
        return {
            "path": str(self.path),
            "rows": self._rows,
            "dim": self.dim,
            "dtype": self.dtype,
            "modality": self.modality,
            "normalized": self.normalized,
            "encoder": self.config.encoder,
            "chunk_rows": self.chunk_rows,
            "shard_rows": self.shard_rows,
            "chunk_bytes": self.chunk_rows * self.dim * self.np_dtype.itemsize,
            "codec": self.codec,
            "metadata_columns": dict(self.metadata_columns),
            "bytes_on_disk": self.bytes_on_disk(),
            "vector_bytes_on_disk": vec_bytes,
            "compression_ratio": (logical / vec_bytes) if vec_bytes and logical else None,
            "format_version": self._record.get("format_version"),
            "attrs": self.attrs,
        }


def _remove_abandoned_creations(p: Path) -> None:
    """Remove `.<name>.creating-*` directories of creators that died (their lock is free)."""
    for d in p.parent.glob(f".{p.name}.creating-*"):
        try:
            lock = WriterLock.acquire(d, str(d))
        except (UserError, OSError):
            continue  # a live creator (or gone already): not ours to touch
        try:
            shutil.rmtree(d, ignore_errors=True)
        finally:
            lock.release()


def _encode_column(name: str, kind: str, values: Sequence[Any], path: Location) -> np.ndarray:
    if kind == "json":
        try:
            return np.asarray([json.dumps(v, ensure_ascii=False) for v in values], dtype=object)
        except TypeError as exc:
            raise StoreError(f"{path}: metadata column {name!r}: {exc}") from exc
    if kind == "str":
        arr = np.asarray(values, dtype=object)
        if len(arr) and not all(isinstance(v, str) for v in arr):
            raise StoreError(f"{path}: metadata column {name!r} (str) holds a non-string value")
        return arr
    dt = META_KINDS[kind]
    try:
        return np.asarray(values, dtype=dt)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{path}: metadata column {name!r} ({kind}): {exc}") from exc


def to_torch(block: np.ndarray, dtype: str) -> Any:
    """A zero-copy torch view of a block read from a store; bfloat16 stores give torch.bfloat16."""
    import torch

    if block.flags.writeable:
        t = torch.from_numpy(block)
    else:
        # A read-only view (zero-copy iteration): torch has no read-only tensors and warns; the
        # caller promised not to write into it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(block)
    if dtype == "bfloat16":
        return t.view(torch.bfloat16)
    return t
