"""FeatureView: the read side of a memmap export (`revision.store.memmap`), for training loaders.

Opening reads the small JSON header and maps the files: nothing is read per row, so start-up time
does not depend on N. Lookups by id go through the sorted hash index. Rows are gathered from the page
cache with one positioned read per row by default: on Linux a touched page of a mapping is charged
to the process's RSS (in whole large folios on recent kernels, so random rows soon "use" the whole
file), while positioned reads keep the resident set at the batch. The memory-mapped gather
(`read_mode="mmap"`) is faster and suits sequential scans. A view pickles as its path only and opens
the files again in each process: each DataLoader worker shares the same page-cache pages, never a
copy of the matrix.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import torch

from revision.store import StoreError
from revision.store.idindex import DEFAULT_HASH, HashFn, IdIndex, hash_id_bytes
from revision.store.memmap import read_header
from revision.train.errors import DataError

READ_MODES = ("pread", "mmap")
_TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class _Mapped:
    """The per-process mapping: the vectors matrix over an mmap, and the id index."""

    def __init__(self, path: Path, header: dict[str, Any], hash_fn: HashFn) -> None:
        vec_path = path / header["vectors"]
        with open(vec_path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(fh)
            offset = fh.tell()
            expected = (int(header["rows"]), int(header["dim"]))
            if tuple(shape) != expected or fortran or str(dtype) != header["storage_dtype"]:
                raise DataError(f"{vec_path}: holds {dtype} {shape}, header says {header['storage_dtype']} {expected}")
            size = os.fstat(fh.fileno()).st_size
            if size < offset + dtype.itemsize * shape[0] * shape[1]:
                raise DataError(f"{vec_path}: truncated ({size} bytes)")
            # An empty file cannot be mapped; a zero-row view needs no mapping.
            self.mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if shape[0] else None
        self.fd = os.open(vec_path, os.O_RDONLY)
        self.data_offset = offset
        self.row_bytes = dtype.itemsize * shape[1]
        if self.mm is None:
            self.vectors = np.zeros(shape, dtype)
        else:
            self.vectors = np.ndarray(shape, dtype=dtype, buffer=self.mm, offset=offset)
        self.index = IdIndex.open(path, hash_fn)

    def __del__(self) -> None:
        fd = getattr(self, "fd", -1)
        if fd >= 0:
            os.close(fd)

    def pread_rows(self, idx: np.ndarray, out: np.ndarray) -> None:
        """Gather rows with positioned reads: nothing is mapped, so the resident set stays at `out`."""
        rb = self.row_bytes
        n = idx.size
        if n == 0 or rb == 0:
            return
        buf = out.data.cast("B")
        if n > 1 and int(idx[-1]) - int(idx[0]) == n - 1 and bool((np.diff(idx) == 1).all()):
            self._pread_exact(buf, self.data_offset + int(idx[0]) * rb)  # one contiguous range
            return
        offsets = (idx * rb + self.data_offset).tolist()
        views = [buf[k : k + rb] for k in range(0, n * rb, rb)]
        # map() runs the loop in C: one preadv per row, no Python bytecode between the syscalls.
        got = list(map(os.preadv, repeat(self.fd, n), zip(views), offsets))
        if got.count(rb) != n:
            k = next(k for k, g in enumerate(got) if g != rb)
            raise DataError(f"short read of row {int(idx[k])} (file truncated?)")

    def _pread_exact(self, buf: memoryview, offset: int) -> None:
        done = 0
        while done < len(buf):
            got = os.preadv(self.fd, (buf[done:],), offset + done)
            if got <= 0:
                raise DataError(f"short read at byte {offset + done} (file truncated?)")
            done += got


class FeatureView:
    """Random access to the rows of a memmap export by row number or by id."""

    def __init__(self, path: str | Path, *, hash_fn: HashFn | None = None, read_mode: str = "pread") -> None:
        if read_mode not in READ_MODES:
            raise ValueError(f"read_mode must be one of {READ_MODES}, got {read_mode!r}")
        self.read_mode = read_mode
        self.path = Path(path)
        try:
            self.header = read_header(self.path)
        except StoreError as exc:
            raise DataError(str(exc)) from exc
        if hash_fn is None and self.header.get("id_hash") != DEFAULT_HASH:
            raise DataError(
                f"{self.path}: ids hashed with {self.header.get('id_hash')!r}; pass that hash_fn to open it"
            )
        self._hash_fn = hash_fn or hash_id_bytes
        self._mapped: _Mapped | None = None
        self._pid = -1

    @classmethod
    def open(cls, path: str | Path, *, hash_fn: HashFn | None = None, read_mode: str = "pread") -> FeatureView:
        """Open an export. read_mode "pread": rows are gathered with positioned reads (the resident set
        stays at the batch); "mmap": gathered from the memory map (zero syscalls, but every touched
        page of the file then counts in this process's RSS, as shared page cache)."""
        return cls(path, hash_fn=hash_fn, read_mode=read_mode)

    # Pickle as the path: a worker process maps the files itself instead of receiving the matrix.
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "header": self.header, "hash_fn": self._hash_fn, "read_mode": self.read_mode}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.read_mode = state["read_mode"]
        self.path = state["path"]
        self.header = state["header"]
        self._hash_fn = state["hash_fn"]
        self._mapped = None
        self._pid = -1

    def _m(self) -> _Mapped:
        # A forked worker inherits the parent's mapping; map again so each process owns its own.
        if self._mapped is None or self._pid != os.getpid():
            self._mapped = _Mapped(self.path, self.header, self._hash_fn)
            self._pid = os.getpid()
        return self._mapped

    @property
    def num_rows(self) -> int:
        return int(self.header["rows"])

    def __len__(self) -> int:
        return self.num_rows

    @property
    def dim(self) -> int:
        return int(self.header["dim"])

    @property
    def dtype(self) -> str:
        """ "float16" | "bfloat16" | "float32" (bfloat16 rows are stored as their uint16 bits)."""
        return str(self.header["dtype"])

    @property
    def torch_dtype(self) -> torch.dtype:
        return _TORCH_DTYPES[self.dtype]

    @property
    def alignment(self) -> dict[str, Any] | None:
        """The source store's fitted alignment attributes, if it had any."""
        return self.header.get("alignment")

    @property
    def vectors(self) -> np.ndarray:
        """The whole (N, D) matrix in the storage dtype, memory-mapped (read-only)."""
        return self._m().vectors

    @property
    def index(self) -> IdIndex:
        return self._m().index

    def read(self, indices: Sequence[int] | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows at `indices` (any order, repeats allowed) as an (n, D) array of the storage dtype."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1:
            raise IndexError(f"{self.path}: row indices must be one-dimensional, got shape {idx.shape}")
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self.num_rows):
            raise IndexError(f"{self.path}: row index out of [0, {self.num_rows})")
        m = self._m()
        if self.read_mode == "mmap":
            return np.take(m.vectors, idx, axis=0, out=out)
        if out is None:
            out = np.empty((idx.size, self.dim), m.vectors.dtype)
        elif out.shape != (idx.size, self.dim) or out.dtype != m.vectors.dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous ({idx.size}, {self.dim}) {m.vectors.dtype} array")
        m.pread_rows(idx, out)
        return out

    def rows(self, indices: Sequence[int] | np.ndarray, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Rows at `indices` as an (n, D) tensor: the stored dtype (bfloat16 included), or `dtype`."""
        t = torch.from_numpy(self.read(indices))
        if self.dtype == "bfloat16":
            t = t.view(torch.bfloat16)
        return t if dtype is None or t.dtype == dtype else t.to(dtype)

    def lookup(self, ids: Sequence[str] | np.ndarray, *, missing: str = "raise") -> np.ndarray:
        """Rows of `ids`, int64 (n,). missing="raise": DataError naming the first absent id;
        missing="ignore": -1 where absent."""
        if missing not in ("raise", "ignore"):
            raise ValueError(f"missing must be 'raise' or 'ignore', got {missing!r}")
        rows = self.index.lookup(ids)
        if missing == "raise" and rows.size and rows.min() < 0:
            absent = np.flatnonzero(rows < 0)
            raise DataError(
                f"{self.path}: {absent.size} of {rows.size} ids not in the view, e.g. {ids[int(absent[0])]!r}"
            )
        return rows

    def embeds(self, ids: Sequence[str] | np.ndarray, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """ids → (n, D) tensor of `dtype` (absent ids raise DataError)."""
        return self.rows(self.lookup(ids), dtype=dtype)

    def ids(self, rows: Sequence[int] | np.ndarray) -> list[str]:
        return self.index.ids(rows)

    def release(self) -> None:
        """Drop this process's mapped pages from its resident set; the OS page cache keeps them, so
        the next access is a cheap re-map (a minor fault), not a disk read."""
        m = self._mapped
        if m is not None and m.mm is not None and self._pid == os.getpid():
            m.mm.madvise(mmap.MADV_DONTNEED)
