"""StoreSet: several feature stores read as one, in a fixed order, without copying a byte.

A set is named by
- a glob (`'text-*.zarr'`): the matching stores, sorted by name;
- a directory holding the parts of one store, `partNNN-of-MMM.zarr` (what a distributed `align`
  writes) or `<prefix>.partNNN-of-MMM.zarr` of a single prefix;
- the path a one-process run would have written (`out/text.zarr`) when it is missing and its
  parts `out/text.partNNN-of-MMM.zarr` are there (what `revision embed` writes under torchrun).

The same three work on object storage (`s3://bucket/emb/text-*.zarr`, `s3://bucket/aligned/`,
`s3://bucket/emb/text.zarr`): a directory is a prefix (one listing), a glob is expanded by listings
of its fixed head, and a candidate is a store when its zarr.json object exists.

Rows are numbered across the parts in order; blocks and chunks are cut at part boundaries, so a
pass over a set reads each part exactly as it would read that part alone. Parts must agree on dim,
dtype, modality and metadata columns, and ids must be unique across the parts: the ids are checked
with the on-disk hash buckets of idcheck.py (memory bounded by its budget, not by the row count).
`open_readable` is what every command that reads a store calls: a store path gives a FeatureStore,
anything naming several stores gives a StoreSet.
"""

from __future__ import annotations

import glob
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from .config import StoreConfig
from .featurestore import FeatureStore, StoreError
from .idcheck import DuplicateIds, IdBuckets, pack_src, unpack_src
from .objio import RemotePath, is_url, location

PART_NAME = re.compile(r"^(?:(?P<prefix>.+)\.)?part(?P<index>\d+)-of-(?P<count>\d+)\.zarr$")
_GLOB_CHARS = frozenset("*?[")


def part_name(rank: int, world: int, prefix: str = "") -> str:
    """The file name of part `rank` of `world`: `[prefix.]partRRR-of-WWW.zarr`."""
    head = f"{prefix}." if prefix else ""
    return f"{head}part{rank:03d}-of-{world:03d}.zarr"


#: A local path or an object-storage location (the same few methods; see objio.RemotePath).
AnyPath: TypeAlias = "Path | RemotePath"


def _is_store(p: AnyPath) -> bool:
    return (p / "zarr.json").is_file()


def _part_path(sample: AnyPath, index: int, count: str) -> AnyPath:
    """Part `index` of a set whose part `sample` exists: the same prefix and number width."""
    m = PART_NAME.match(sample.name)
    assert m is not None
    head = f"{m['prefix']}." if m["prefix"] else ""
    return sample.with_name(f"{head}part{index:0{len(m['index'])}d}-of-{count}.zarr")


def _numbered(spec: str, candidates: list[AnyPath]) -> list[AnyPath]:
    """`candidates` (part-named stores of one prefix) in part order, or an error naming what is missing."""
    found: dict[int, AnyPath] = {}
    counts = set()
    for c in candidates:
        m = PART_NAME.match(c.name)
        assert m is not None
        counts.add(int(m["count"]))
        found[int(m["index"])] = c
    if len(counts) != 1:
        raise StoreError(f"{spec}: parts of different runs ({', '.join(f'of {n}' for n in sorted(counts))}); "
                         "remove the stale ones")  # fmt: skip
    (count,) = counts
    stray = sorted(k for k in found if k >= count)
    if stray:
        raise StoreError(f"{spec}: {found[stray[0]]} is numbered past the {count} parts of its name")
    missing = [k for k in range(count) if k not in found]
    if missing:
        sample = next(iter(found.values()))
        count_text = PART_NAME.match(sample.name)["count"]  # type: ignore[index]
        expected = _part_path(sample, missing[0], count_text)
        raise StoreError(f"{spec}: part {missing[0]} of {count} is missing (no store at {expected})")
    return [found[k] for k in range(count)]


def _glob(spec: str) -> list[AnyPath]:
    """The paths matching a glob, sorted by name; on object storage by one listing (fsspec's glob)."""
    if not is_url(spec):
        local: list[AnyPath] = [*sorted(Path(m) for m in glob.glob(spec))]
        return local
    pattern = location(spec)
    assert isinstance(pattern, RemotePath)
    return sorted(pattern.expand(), key=str)


def find_parts(spec: str | Path) -> list[AnyPath] | None:
    """The stores `spec` names in set order, or None when `spec` is one store (or names nothing).

    The same rules locally and on object storage (`s3://bucket/emb/text-*.zarr`,
    `s3://bucket/aligned/`, `s3://bucket/emb/text.zarr` whose parts exist); there a directory is a
    prefix, and each candidate part is a store when its zarr.json object exists.
    """
    s = str(spec)
    p = location(s)
    if _is_store(p):
        return None
    if _GLOB_CHARS & set(s):
        matches = _glob(s)
        if not matches:
            raise StoreError(f"{s}: no store matches this pattern")
        for m in matches:
            if not _is_store(m):
                raise StoreError(f"{s}: {m} matches but is not a feature store")
        return matches
    if p.is_dir():  # on object storage: a prefix with objects under it
        parts = [c for c in _entries(p) if PART_NAME.match(c.name) and _is_store(c)]
        if not parts:
            return None
        prefixes = sorted({PART_NAME.match(c.name)["prefix"] or "" for c in parts})  # type: ignore[index]
        if len(prefixes) > 1:
            names = ", ".join(str(p / part_name(0, 0, x)).replace("part000-of-000", "part*") for x in prefixes)
            raise StoreError(f"{s}: holds the parts of {len(prefixes)} stores; name one ({names})")
        return _numbered(s, parts)
    if p.suffix == ".zarr" and not p.exists():
        pattern = re.compile(rf"^{re.escape(p.stem)}\.part\d+-of-\d+\.zarr$")
        siblings = [c for c in _siblings(p) if pattern.match(c.name)]
        parts = [c for c in siblings if _is_store(c)]
        return _numbered(s, parts) if parts else None
    return None


def _entries(d: AnyPath) -> list[AnyPath]:
    """What a directory holds (on object storage: the objects and prefixes one level down), by name."""
    found: list[AnyPath] = list(d.iterdir())
    return sorted(found, key=str)


def _siblings(p: AnyPath) -> list[AnyPath]:
    """Entries beside `p` whose names start with its stem and ".part", sorted by name."""
    if isinstance(p, RemotePath):
        d = p.parent
        return [c for c in _entries(d) if c.name.startswith(f"{p.stem}.part")] if d.is_dir() else []
    local: list[AnyPath] = [*sorted(p.parent.glob(f"{glob.escape(p.stem)}.part*"))]
    return local


class StoreSet:
    """Feature stores read as one: the read side of FeatureStore over the concatenated rows."""

    def __init__(self, path: str | Path | RemotePath, parts: Sequence[FeatureStore]) -> None:
        if not parts:
            raise StoreError(f"{path}: a store set needs at least one part")
        self.path: AnyPath = location(path)
        self.parts = list(parts)
        first = self.parts[0]
        for part in self.parts[1:]:
            for what in ("dim", "dtype", "modality"):
                if getattr(part, what) != getattr(first, what):
                    raise StoreError(
                        f"{part.path}: {what} {getattr(part, what)} differs from {getattr(first, what)} "
                        f"of the set's first part {first.path}"
                    )
            if part.metadata_columns != first.metadata_columns:
                raise StoreError(
                    f"{part.path}: metadata columns {part.metadata_columns} differ from "
                    f"{first.metadata_columns} of the set's first part {first.path}"
                )
        self.offsets = np.cumsum([0] + [p.rows for p in self.parts]).tolist()
        self.config: StoreConfig = first.config
        self.metadata_columns: dict[str, str] = dict(first.metadata_columns)

    # -- FeatureStore's read side -------------------------------------------------------------
    @property
    def rows(self) -> int:
        return int(self.offsets[-1])

    def __len__(self) -> int:
        return self.rows

    @property
    def dim(self) -> int:
        return self.parts[0].dim

    @property
    def dtype(self) -> str:
        return self.parts[0].dtype

    @property
    def np_dtype(self) -> np.dtype[Any]:
        return self.parts[0].np_dtype

    @property
    def modality(self) -> str:
        return self.parts[0].modality

    @property
    def normalized(self) -> bool:
        return all(p.normalized for p in self.parts)

    @property
    def codec(self) -> str:
        return self.parts[0].codec

    @property
    def chunk_rows(self) -> int:
        return self.parts[0].chunk_rows

    @property
    def shard_rows(self) -> int:
        return self.parts[0].shard_rows

    @property
    def attrs(self) -> dict[str, Any]:
        """The first part's user attributes (parts of one job share them)."""
        return self.parts[0].attrs

    @property
    def progress(self) -> dict[str, Any] | None:
        return None

    def __repr__(self) -> str:
        return f"StoreSet({str(self.path)!r}, {len(self.parts)} parts, {self.modality}, rows={self.rows})"

    def __enter__(self) -> StoreSet:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for p in self.parts:
            p.close()

    def _check_range(self, start: int, stop: int | None) -> int:
        stop = self.rows if stop is None else stop
        if not 0 <= start <= stop <= self.rows:
            raise IndexError(f"{self.path}: rows [{start}, {stop}) outside [0, {self.rows})")
        return stop

    def _pieces(self, start: int, stop: int | None) -> list[tuple[int, int, int]]:
        """(part index, local start, local stop) covering global rows [start, stop), in order."""
        stop = self._check_range(start, stop)
        out = []
        for k, part in enumerate(self.parts):
            base = self.offsets[k]
            lo, hi = max(start, base), min(stop, base + part.rows)
            if lo < hi:
                out.append((k, lo - base, hi - base))
        return out

    def block_ranges(
        self, start: int = 0, stop: int | None = None, block_rows: int | None = None
    ) -> list[tuple[int, int]]:
        """Each part's own chunk-aligned ranges, in global rows (a range never spans two parts)."""
        return [
            (self.offsets[k] + a, self.offsets[k] + b)
            for k, lo, hi in self._pieces(start, stop)
            for a, b in self.parts[k].block_ranges(lo, hi, block_rows)
        ]

    def iter_chunks(
        self,
        start: int = 0,
        stop: int | None = None,
        *,
        block_rows: int | None = None,
        prefetch: int = 2,
        zero_copy: bool = False,
    ) -> Iterator[tuple[int, np.ndarray]]:
        for k, lo, hi in self._pieces(start, stop):
            base = self.offsets[k]
            chunks = self.parts[k].iter_chunks(lo, hi, block_rows=block_rows, prefetch=prefetch, zero_copy=zero_copy)
            for row0, block in chunks:
                yield base + row0, block

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        pieces = [self.parts[k].read(lo, hi) for k, lo, hi in self._pieces(start, stop)]
        return np.concatenate(pieces) if pieces else np.empty((0, self.dim), dtype=self.np_dtype)

    def read_rows(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1:
            raise IndexError("indices must be one-dimensional")
        if idx.size and (idx.min() < 0 or idx.max() >= self.rows):
            raise IndexError(f"{self.path}: row index out of [0, {self.rows})")
        out = np.empty((idx.size, self.dim), dtype=self.np_dtype)
        which = np.searchsorted(np.asarray(self.offsets[1:]), idx, side="right")
        for k in np.unique(which):
            sel = np.flatnonzero(which == k)
            out[sel] = self.parts[int(k)].read_rows(idx[sel] - self.offsets[int(k)])
        return out

    def read_ids(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        pieces = [self.parts[k].read_ids(lo, hi) for k, lo, hi in self._pieces(start, stop)]
        return np.concatenate(pieces) if pieces else np.empty(0, dtype=object)

    def iter_ids(self, block_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        for k, part in enumerate(self.parts):
            for lo, ids in part.iter_ids(block_rows):
                yield self.offsets[k] + lo, ids

    def read_metadata(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray | list[Any]:
        pieces = [self.parts[k].read_metadata(name, lo, hi) for k, lo, hi in self._pieces(start, stop)]
        if self.metadata_columns.get(name) == "json":
            return [v for piece in pieces for v in piece]
        if not pieces:
            return self.parts[0].read_metadata(name, 0, 0)
        return np.concatenate([np.asarray(p) for p in pieces])

    # -- checks and description ---------------------------------------------------------------
    def check_unique_ids(self, *, budget_bytes: int | None = None) -> None:
        """Raise a StoreError naming the id and both parts if two rows of the set share an id."""
        tmp = Path(tempfile.mkdtemp(prefix="revision-setids-"))
        try:
            buckets = IdBuckets(tmp)

            def id_of(row: int, src: int) -> str:
                k, item = unpack_src(src)
                return str(self.parts[k].read_ids(item, item + 1)[0])

            try:
                for k, part in enumerate(self.parts):
                    for lo, ids in part.iter_ids():
                        src = pack_src(k, np.arange(lo, lo + len(ids), dtype=np.int64))
                        buckets.add(ids, self.offsets[k] + lo, src)
                buckets.check(id_of, **({} if budget_bytes is None else {"budget_bytes": budget_bytes}))
            except DuplicateIds as dup:
                (ka, ra), (kb, rb) = unpack_src(dup.first[1]), unpack_src(dup.second[1])
                raise StoreError(
                    f"{self.path}: id {dup.ident!r} is in {self.parts[ka].path} (row {ra}) and in "
                    f"{self.parts[kb].path} (row {rb}); ids must be unique across the parts of a set"
                ) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def bytes_on_disk(self) -> int:
        return sum(p.bytes_on_disk() for p in self.parts)

    def info(self) -> dict[str, Any]:
        """The first part's description with the set's totals, and each part's path and rows."""
        parts = [p.info() for p in self.parts]
        vec = sum(int(i["vector_bytes_on_disk"]) for i in parts)
        logical = self.rows * self.dim * self.np_dtype.itemsize
        return {
            **parts[0],
            "path": str(self.path),
            "rows": self.rows,
            "normalized": self.normalized,
            "bytes_on_disk": sum(int(i["bytes_on_disk"]) for i in parts),
            "vector_bytes_on_disk": vec,
            "compression_ratio": (logical / vec) if vec and logical else None,
            "parts": [{"path": i["path"], "rows": i["rows"], "bytes_on_disk": i["bytes_on_disk"]} for i in parts],
        }


#: What the passes accept: one store or a set of them.
Readable: TypeAlias = "FeatureStore | StoreSet"


def open_set(spec: str | Path, parts: Sequence[str | Path | RemotePath], *, check_ids: bool = True) -> StoreSet:
    """Open `parts` read-only as one set named `spec`; every part is closed again on an error."""
    with ExitStack() as stack:
        opened = [stack.enter_context(FeatureStore.open(p)) for p in parts]
        st = StoreSet(spec, opened)
        if check_ids:
            st.check_unique_ids()
        stack.pop_all()
        return st


def open_readable(spec: str | Path, *, flag: str | None = None, check_ids: bool = True) -> Readable:
    """A store path → FeatureStore; a glob, a directory of parts or a path whose parts exist → StoreSet.

    `flag` (e.g. "--text") prefixes the error when nothing is there. `check_ids=False` skips the
    scan of every id of a set (done once per job, not by every process of a distributed one).
    """
    where = f"{flag} {spec}" if flag else str(spec)
    parts = find_parts(spec)
    if parts is None:
        p = location(spec)
        if isinstance(p, RemotePath):
            if not (p / "zarr.json").is_file():
                raise StoreError(f"{where}: no such store (no zarr.json)")
        elif not p.exists():
            raise StoreError(f"{where}: no such store")
        return FeatureStore.open(p)
    return open_set(spec, parts, check_ids=check_ids)
