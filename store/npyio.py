"""Streaming writer for `.npy` files whose length is not known up front.

The export writes vectors, id bytes, offsets and the sorted hash index one block at a time. A `.npy`
header states the full shape, so the writer reserves a fixed-size header, appends raw row-major bytes
and rewrites the header with the final row count on close. The result is a plain `.npy` file:
`np.load(path, mmap_mode="r")` works, and the data starts at a 64-byte aligned offset.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

# Magic + version 1.0 + uint16 header length + the dict text, padded with spaces to this many bytes.
# 128 bytes holds any descr and a shape of up to 20-digit dimensions; 64-byte alignment is kept.
HEADER_BYTES = 128
_MAGIC = b"\x93NUMPY\x01\x00"


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A format-1.0 `.npy` header of exactly HEADER_BYTES bytes for a C-ordered array."""
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    body_len = HEADER_BYTES - len(_MAGIC) - 2
    body = text.encode("latin1")
    if len(body) + 1 > body_len:
        raise ValueError(f"npy header for dtype {dtype} shape {shape} does not fit in {HEADER_BYTES} bytes")
    return _MAGIC + struct.pack("<H", body_len) + body.ljust(body_len - 1, b" ") + b"\n"


class NpyWriter:
    """Append C-ordered blocks of rows (shape `(n, *row_shape)`) to a `.npy` file.

    `close()` writes the final header; until then the file's header claims zero rows, so a reader
    never mistakes a half-written file for a complete one.
    """

    def __init__(
        self,
        path: str | Path,
        dtype: np.dtype | str,
        row_shape: tuple[int, ...] = (),
        *,
        resume_rows: int | None = None,
    ) -> None:
        """Start a new file, or with `resume_rows` continue an unfinished one after its first
        `resume_rows` rows (anything written after them is cut off)."""
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(int(d) for d in row_shape)
        self.rows = 0
        if resume_rows is None:
            self._fh: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 - closed in close()
            self._fh.write(npy_header(self.dtype, (0, *self.row_shape)))
            return
        keep = HEADER_BYTES + resume_rows * self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        if self.path.stat().st_size < keep:
            raise ValueError(f"{self.path}: holds fewer than the {resume_rows} rows to resume after")
        self._fh = open(self.path, "r+b")  # noqa: SIM115 - closed in close()
        self._fh.truncate(keep)
        self._fh.seek(keep)
        self.rows = resume_rows

    def append(self, block: np.ndarray) -> None:
        if self._fh is None:
            raise ValueError(f"{self.path}: writer is closed")
        arr = np.ascontiguousarray(block, dtype=self.dtype)
        if arr.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path}: block shape {arr.shape} does not match rows of {self.row_shape}")
        self._fh.write(arr.data.cast("B"))
        self.rows += arr.shape[0]

    def flush(self) -> None:
        """Hand everything appended so far to the OS (a killed process then loses none of it)."""
        if self._fh is not None:
            self._fh.flush()

    def sync(self) -> None:
        """Make everything appended so far durable (a power cut then loses none of it)."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self, *, fsync: bool = True) -> None:
        """Write the final header (with the row count) and close; idempotent."""
        if self._fh is None:
            return
        fh, self._fh = self._fh, None
        try:
            fh.flush()
            fh.seek(0)
            fh.write(npy_header(self.dtype, (self.rows, *self.row_shape)))
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        finally:
            fh.close()

    def abort(self) -> None:
        """Close without writing the final header (used on errors; the file is then garbage)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
