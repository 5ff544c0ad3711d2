"""Zarr v3 sharded arrays, written and read without zarr-python's pipeline.

Each array is standard Zarr v3 (`sharding_indexed`, index at the end, index codecs bytes + crc32c),
so any Zarr v3 library reads it. We write shards ourselves because the commit protocol needs every
file replaced atomically and because zarr-python 3.1's read path tops out well below the page
cache's bandwidth; uncompressed chunks are read straight into the caller's buffer.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import weakref
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import google_crc32c
import numcodecs
import numpy as np

from .atomic import atomic_write_bytes
from .errors import DamagedStoreError
from .objio import RemotePath, read_pieces

EMPTY = np.uint64(2**64 - 1)
_VLEN = numcodecs.VLenUTF8()


def _compressor_json(codec: str, itemsize: int) -> list[dict[str, Any]]:
    if codec == "none":
        return []
    if codec == "zstd":
        return [{"name": "zstd", "configuration": {"level": 3, "checksum": False}}]
    if codec == "blosc-lz4":
        return [
            {
                "name": "blosc",
                "configuration": {
                    "typesize": itemsize,
                    "cname": "lz4",
                    "clevel": 5,
                    "shuffle": "shuffle",
                    "blocksize": 256 * 1024,
                },
            }
        ]
    raise ValueError(f"unknown codec {codec!r}")


@dataclass(frozen=True)
class ArraySpec:
    """Geometry and encoding of one sharded array: rows are chunked and sharded; columns are not."""

    path: Path | RemotePath
    row_shape: tuple[int, ...]  # () for 1-D arrays, (D,) for the vectors
    dtype: np.dtype[Any] | None  # None: variable-length UTF-8 strings
    zarr_dtype: str
    chunk_rows: int
    chunks_per_shard: int
    codec: str

    @property
    def shard_rows(self) -> int:
        return self.chunk_rows * self.chunks_per_shard

    @property
    def is_string(self) -> bool:
        return self.dtype is None

    @property
    def row_bytes(self) -> int:
        assert self.dtype is not None
        return int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    @cached_property
    def _compressor(self) -> Any:
        if self.codec == "none":
            return None
        if self.codec == "zstd":
            return numcodecs.Zstd(level=3)
        return numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE, blocksize=256 * 1024)

    def metadata(self, rows: int, attributes: dict[str, Any] | None = None) -> dict[str, Any]:
        """The array's zarr.json document for `rows` committed rows."""
        if self.is_string:
            inner: list[dict[str, Any]] = [{"name": "vlen-utf8", "configuration": {}}]
            inner += _compressor_json("zstd", 1)
            fill: Any = ""
        else:
            assert self.dtype is not None
            inner = [{"name": "bytes", "configuration": {"endian": "little"}}]
            inner += _compressor_json(self.codec, self.dtype.itemsize)
            fill = False if self.dtype.kind == "b" else 0
        tail = list(self.row_shape)
        return {
            "zarr_format": 3,
            "node_type": "array",
            "shape": [rows, *tail],
            "data_type": self.zarr_dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [self.shard_rows, *tail]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": fill,
            "codecs": [
                {
                    "name": "sharding_indexed",
                    "configuration": {
                        "chunk_shape": [self.chunk_rows, *tail],
                        "codecs": inner,
                        "index_codecs": [
                            {"name": "bytes", "configuration": {"endian": "little"}},
                            {"name": "crc32c"},
                        ],
                        "index_location": "end",
                    },
                }
            ],
            "attributes": attributes or {},
            "storage_transformers": [],
        }

    def write_metadata(
        self, rows: int, attributes: dict[str, Any] | None = None, *, durable: bool | None = None
    ) -> None:
        doc = json.dumps(self.metadata(rows, attributes), indent=2).encode()
        atomic_write_bytes(self.path / "zarr.json", doc, durable=durable)

    def shard_path(self, shard: int) -> Path | RemotePath:
        suffix = "/0" * len(self.row_shape)
        return self.path / f"c/{shard}{suffix}"

    # -- encoding ---------------------------------------------------------------------------
    def encode_chunk(self, rows: np.ndarray | list[Any]) -> bytes:
        """Encode one chunk; `rows` may be short (the last chunk) and is padded with the fill value."""
        n = len(rows)
        if self.is_string:
            full = np.empty(self.chunk_rows, dtype=object)
            full[:n] = rows
            full[n:] = ""
            return bytes(numcodecs.Zstd(level=3).encode(_VLEN.encode(full)))
        if n < self.chunk_rows:
            padded = np.zeros((self.chunk_rows, *self.row_shape), dtype=self.dtype)
            padded[:n] = rows
            rows = padded
        data = np.ascontiguousarray(rows, dtype=self.dtype)
        if self._compressor is None:
            return data.tobytes()
        return bytes(self._compressor.encode(data))

    def decode_chunk(self, raw: bytes | memoryview) -> np.ndarray:
        if self.is_string:
            return np.asarray(_VLEN.decode(numcodecs.Zstd().decode(raw)), dtype=object)
        assert self.dtype is not None
        buf = raw if self._compressor is None else self._compressor.decode(raw)
        return np.frombuffer(buf, dtype=self.dtype).reshape(self.chunk_rows, *self.row_shape)

    def write_shard(self, shard: int, chunks: list[bytes], *, durable: bool | None = None) -> None:
        """Write a shard file holding `chunks` (the first len(chunks) chunks; the rest are empty)."""
        index = np.full((self.chunks_per_shard, 2), EMPTY, dtype="<u8")
        offset = 0
        for j, chunk in enumerate(chunks):
            index[j] = (offset, len(chunk))
            offset += len(chunk)
        index_bytes = index.tobytes()
        crc = google_crc32c.value(index_bytes).to_bytes(4, "little")
        atomic_write_bytes(self.shard_path(shard), [*chunks, index_bytes, crc], durable=durable)


class ShardReader:
    """Reads chunks of one sharded array with positioned reads; caches shard indexes and file handles.

    On object storage (a RemotePath) the same reads are ranged GETs, a block's several in flight.
    """

    def __init__(
        self, spec: ArraySpec, index_cache: dict[int, np.ndarray] | None = None, *, rows: int | None = None
    ) -> None:
        self.spec = spec
        # The committed row count, when known, gives the exact size of each shard object of an
        # uncompressed array, so a remote read can fetch a whole shard, index included, in one go.
        self.rows = rows
        self.remote = isinstance(spec.path, RemotePath)
        # Readers of one committed state may share their indexes (on object storage each costs two requests).
        self._index: dict[int, np.ndarray] = {} if index_cache is None else index_cache
        self._owns_index = index_cache is None
        self._fds: dict[int, int] = {}
        self._mapped: tuple[int, mmap.mmap] | None = None  # the shard `view` maps, one at a time
        # A reader dropped without close() (an exception, a forgotten store) still gives its files back.
        self._finalizer = weakref.finalize(self, _close_fds, self._fds)

    def close(self) -> None:
        _close_fds(self._fds)
        if self._owns_index:
            self._index.clear()
        # Views handed out keep their mapping alive; the reader only lets go of it.
        self._mapped = None

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            if len(self._fds) >= 64:  # keep the number of open files bounded on huge stores
                old = next(iter(self._fds))
                os.close(self._fds.pop(old))
                self._index.pop(old, None)
            path = self.spec.shard_path(shard)
            assert isinstance(path, Path)  # object storage reads ranges, never file handles
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise DamagedStoreError(f"{path}: shard file is missing (the store is damaged)") from None
            self._fds[shard] = fd
        return fd

    def _remote_shard(self, shard: int) -> RemotePath:
        path = self.spec.shard_path(shard)
        assert isinstance(path, RemotePath)
        return path

    def _tail(self, shard: int, n: int) -> bytes:
        """The last `n` bytes of the shard (its index and checksum), b"" when it is shorter."""
        if self.remote:
            obj = self._remote_shard(shard)
            try:
                tail = obj.read_tail(n)
            except FileNotFoundError:
                raise DamagedStoreError(f"{obj}: shard object is missing (the store is damaged)") from None
            return bytes(tail) if len(tail) == n else b""
        fd = self._fd(shard)
        size = os.fstat(fd).st_size
        return os.pread(fd, n, size - n) if size >= n else b""

    def index(self, shard: int) -> np.ndarray:
        idx = self._index.get(shard)
        if idx is None:
            if len(self._index) >= 4096:  # bounded on huge stores (object storage keeps no fds to bound it)
                self._index.pop(next(iter(self._index)))
            idx = _parse_index(self._tail(shard, self.spec.chunks_per_shard * 16 + 4), self.spec.chunks_per_shard)
            if idx is None:
                raise DamagedStoreError(
                    f"{self.spec.shard_path(shard)}: shard index is corrupt or the file is truncated "
                    "(the store is damaged)"
                )
            self._index[shard] = idx
        return idx

    def chunk_bytes(self, chunk: int) -> bytes:
        shard, j = divmod(chunk, self.spec.chunks_per_shard)
        off, nbytes = self.index(shard)[j]
        if off == EMPTY:
            raise DamagedStoreError(f"{self.spec.shard_path(shard)}: chunk {j} is missing (the store is damaged)")
        if self.remote:
            data = self._remote_shard(shard).read_range(int(off), int(off + nbytes))
        else:
            data = os.pread(self._fd(shard), int(nbytes), int(off))
        if len(data) != nbytes:
            raise DamagedStoreError(f"{self.spec.shard_path(shard)}: chunk {j} is truncated (the store is damaged)")
        return data

    def read_chunk(self, chunk: int) -> np.ndarray:
        return self.spec.decode_chunk(self.chunk_bytes(chunk))

    def view(self, start: int, stop: int) -> np.ndarray | None:
        """Rows [start, stop) as a read-only array over the memory-mapped shard file, or None when that
        is not possible (compressed or string arrays, rows in more than one shard).

        No copy: the caller reads the page cache directly (a copying read costs a second memory
        sweep, as much as a fused pass's arithmetic). Shard files are only ever replaced by rename,
        never rewritten in place, so a view never changes under its reader.
        """
        spec = self.spec
        if spec.codec != "none" or spec.is_string or stop <= start or self.remote:
            return None
        shard = start // spec.shard_rows
        if (stop - 1) // spec.shard_rows != shard:
            return None
        chunk, lo = divmod(start, spec.chunk_rows)
        j = chunk - shard * spec.chunks_per_shard
        off = int(self.index(shard)[j][0])
        if off == int(EMPTY):
            raise DamagedStoreError(f"{spec.shard_path(shard)}: chunk {j} is missing (the store is damaged)")
        mapped = self._map(shard)
        begin = off + lo * spec.row_bytes
        nbytes = (stop - start) * spec.row_bytes
        if begin + nbytes > len(mapped):
            raise DamagedStoreError(
                f"{spec.shard_path(shard)}: short shard ({len(mapped)} bytes, rows need {begin + nbytes})"
            )
        # No madvise(WILLNEED): on cached pages it cost 0.1 s per 2.5 GB here, and page faults on a
        # mapping already trigger the kernel's read-ahead when the pages are not cached.
        assert spec.dtype is not None
        flat = np.frombuffer(mapped, dtype=spec.dtype, count=nbytes // spec.dtype.itemsize, offset=begin)
        return flat.reshape(stop - start, *spec.row_shape)

    def _map(self, shard: int) -> mmap.mmap:
        if self._mapped is not None and self._mapped[0] == shard:
            return self._mapped[1]
        fd = self._fd(shard)
        mapped = mmap.mmap(fd, os.fstat(fd).st_size, access=mmap.ACCESS_READ)
        self._mapped = (shard, mapped)
        return mapped

    def read_into(self, out: np.ndarray, start: int, stop: int) -> None:
        """Fill `out` (stop - start rows) with rows [start, stop). Uncompressed runs go straight in."""
        if self.remote:
            self._read_into_remote(out, start, stop)
            return
        spec = self.spec
        pos = start
        while pos < stop:
            chunk, lo = divmod(pos, spec.chunk_rows)
            hi = min(spec.chunk_rows, lo + (stop - pos))
            if spec.codec == "none" and not spec.is_string:
                # Chunks of one shard lie back to back: read the whole run in one pread.
                shard, j = divmod(chunk, spec.chunks_per_shard)
                last = min(stop, (shard + 1) * spec.shard_rows)
                off = int(self.index(shard)[j][0])
                if off == int(EMPTY):
                    raise DamagedStoreError(f"{spec.shard_path(shard)}: chunk {j} is missing (the store is damaged)")
                nbytes = (last - pos) * spec.row_bytes
                view = out[pos - start : last - start].reshape(-1).view(np.uint8).data
                got = os.preadv(self._fd(shard), [view], off + lo * spec.row_bytes)
                if got != nbytes:
                    raise DamagedStoreError(f"{spec.shard_path(shard)}: short read ({got} of {nbytes} bytes)")
                pos = last
                continue
            rows = self.read_chunk(chunk)
            out[pos - start : pos - start + hi - lo] = rows[lo:hi]
            pos += hi - lo

    def _read_into_remote(self, out: np.ndarray, start: int, stop: int) -> None:
        """`read_into` on object storage: per shard, one span of bytes covering the block's chunks,
        fetched as concurrent ranged GETs (the spans of all shards of the block together), then
        decoded. A shard read whole whose index is not cached yet is fetched whole, index included
        (its exact size is known for uncompressed arrays), saving the index's own request."""
        spec = self.spec
        plans: list[tuple[int, int, int, int]] = []  # (shard, first row, last row, span start)
        requests: list[tuple[RemotePath, int, int]] = []
        whole: list[bool] = []
        pos = start
        while pos < stop:
            shard = pos // spec.shard_rows
            last = min(stop, (shard + 1) * spec.shard_rows)
            size = self._whole_size(shard, pos, last)
            if size is not None:
                requests.append((self._remote_shard(shard), 0, size))
                plans.append((shard, pos, last, 0))
                whole.append(True)
            else:
                lo, hi = self._span(shard, pos // spec.chunk_rows, (last - 1) // spec.chunk_rows)
                requests.append((self._remote_shard(shard), lo, hi))
                plans.append((shard, pos, last, lo))
                whole.append(False)
            pos = last
        try:
            fetched = read_pieces(requests)
        except FileNotFoundError:
            raise DamagedStoreError(f"{spec.path}: a shard object is missing (the store is damaged)") from None
        for (shard, first, last, base), (_, lo, hi), pieces, is_whole in zip(
            plans, requests, fetched, whole, strict=True
        ):
            if sum(len(p) for p in pieces) != hi - lo:
                if not is_whole:
                    raise DamagedStoreError(f"{spec.shard_path(shard)}: short read (the store is damaged)")
                pieces = []
            if is_whole:
                n = spec.chunks_per_shard * 16 + 4
                tail = np.empty(n, np.uint8)
                if pieces:
                    _copy_span(pieces, 0, hi - n, hi, tail)
                idx = _parse_index(tail.tobytes(), spec.chunks_per_shard) if pieces else None
                if idx is None or int(idx[idx[:, 0] != EMPTY].sum(axis=1).max(initial=0)) > hi - n:
                    # The object is not the size the commit implies (a writer replaced it since): fall
                    # back to reading its own index, then the span it names.
                    self._read_into_remote_indexed(out, start, shard, first, last)
                    continue
                self._index[shard] = idx
            self._fill(out, start, shard, first, last, pieces, base)

    def _read_into_remote_indexed(self, out: np.ndarray, start: int, shard: int, first: int, last: int) -> None:
        spec = self.spec
        lo, hi = self._span(shard, first // spec.chunk_rows, (last - 1) // spec.chunk_rows)
        pieces = read_pieces([(self._remote_shard(shard), lo, hi)])[0]
        if sum(len(p) for p in pieces) != hi - lo:
            raise DamagedStoreError(f"{spec.shard_path(shard)}: short read (the store is damaged)")
        self._fill(out, start, shard, first, last, pieces, lo)

    def _whole_size(self, shard: int, first: int, last: int) -> int | None:
        """The exact object size of `shard` when [first, last) is all of its rows, the array is
        uncompressed and the shard's index is not cached; else None."""
        spec = self.spec
        if self.rows is None or spec.codec != "none" or spec.is_string or shard in self._index:
            return None
        shard_lo = shard * spec.shard_rows
        shard_hi = min(self.rows, shard_lo + spec.shard_rows)
        if first != shard_lo or last != shard_hi:
            return None
        chunks = -(-(shard_hi - shard_lo) // spec.chunk_rows)
        return chunks * spec.chunk_rows * spec.row_bytes + spec.chunks_per_shard * 16 + 4

    def _span(self, shard: int, c0: int, c1: int) -> tuple[int, int]:
        """Bytes [lo, hi) of the shard object holding chunks c0..c1 (global chunk numbers)."""
        idx = self.index(shard)
        j0, j1 = c0 - shard * self.spec.chunks_per_shard, c1 - shard * self.spec.chunks_per_shard
        part = idx[j0 : j1 + 1]
        if (part[:, 0] == EMPTY).any():
            j = j0 + int(np.flatnonzero(part[:, 0] == EMPTY)[0])
            raise DamagedStoreError(f"{self.spec.shard_path(shard)}: chunk {j} is missing (the store is damaged)")
        return int(part[:, 0].min()), int((part[:, 0] + part[:, 1]).max())

    def _fill(
        self, out: np.ndarray, start: int, shard: int, first: int, last: int, pieces: list[Any], base: int
    ) -> None:
        """Rows [first, last) of `shard` into `out` from the fetched `pieces` (which begin at byte `base`)."""
        spec = self.spec
        idx = self.index(shard)
        pos = first
        while pos < last:
            chunk, lo = divmod(pos, spec.chunk_rows)
            j = chunk - shard * spec.chunks_per_shard
            off, nbytes = int(idx[j][0]), int(idx[j][1])
            if spec.codec == "none" and not spec.is_string:
                # Uncompressed chunks are read straight into the caller's rows: one copy.
                end = min(last, (chunk + 1) * spec.chunk_rows)
                if nbytes != spec.chunk_rows * spec.row_bytes:
                    raise DamagedStoreError(
                        f"{spec.shard_path(shard)}: chunk {j} has {nbytes} bytes (the store is damaged)"
                    )
                a = off + lo * spec.row_bytes
                target = out[pos - start : end - start].reshape(-1).view(np.uint8)
                _copy_span(pieces, base, a, a + (end - pos) * spec.row_bytes, target)
            else:
                end = min(last, (chunk + 1) * spec.chunk_rows)
                raw = np.empty(nbytes, np.uint8)
                _copy_span(pieces, base, off, off + nbytes, raw)
                out[pos - start : end - start] = spec.decode_chunk(raw.data)[lo : lo + end - pos]
            pos = end


def _parse_index(tail: bytes, chunks_per_shard: int) -> np.ndarray | None:
    """The shard index from a shard's last bytes, or None when they are not a valid index."""
    n = chunks_per_shard * 16
    if len(tail) != n + 4 or google_crc32c.value(tail[:n]) != int.from_bytes(tail[n:], "little"):
        return None
    return np.frombuffer(tail[:n], dtype="<u8").reshape(-1, 2)


def _copy_span(pieces: list[Any], base: int, a: int, b: int, dst: np.ndarray) -> None:
    """Copy bytes [a, b) of consecutive `pieces` (the first starting at byte `base`) into `dst` (uint8)."""
    pos = base
    for piece in pieces:
        n = len(piece)
        lo, hi = max(a, pos), min(b, pos + n)
        if lo < hi:
            dst[lo - a : hi - a] = np.frombuffer(piece, dtype=np.uint8, count=hi - lo, offset=lo - pos)
        pos += n
        if pos >= b:
            break


def _close_fds(fds: dict[int, int]) -> None:
    for fd in fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()
