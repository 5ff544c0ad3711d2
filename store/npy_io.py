"""`.npy` vectors: one file, or clip-retrieval's layout of numbered files with row-aligned parquet.

Vectors must be float16, float32 or float64 (either byte order); float128, complex, object,
structured and datetime files are refused by name. clip-retrieval writes `img_emb/img_emb_{N}.npy`
(and `text_emb/text_emb_{N}.npy`) with `metadata/metadata_{N}.parquet`, N = 0, 1, … (ordered by
number, not by name). Vectors are read with positioned reads of a block of rows at a time, so neither
a whole file nor its page cache counts against the ingest's memory; ids come from the metadata's
`id` column, else `image_path`, else the global row number.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import UserError
from .parquet_io import (
    batch_ids,
    check_id_type,
    column_values,
    iter_slices,
    layout_of,
    open_parquet,
    pick_id_column,
    schema_columns,
)
from .sources import Batch, Source, check_row_count, require_modality

LAYOUT_PREFIX = {"image": "img", "text": "text"}


class NpyFile:
    """Rows of a 2-D `.npy` file, read by positioned reads into fresh arrays."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with open(path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                self.offset = fh.tell()
        except FileNotFoundError:
            raise UserError(f"{path}: no such file") from None
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable .npy file ({exc})") from None
        if len(shape) != 2:
            raise UserError(f"{path}: expected a 2-D float array (rows, dim), found {dtype} {shape}")
        _check_vector_dtype(path, dtype)
        self.rows, self.dim = int(shape[0]), int(shape[1])
        self.dtype = dtype
        self.fortran = bool(fortran)
        need = self.offset + self.rows * self.dim * dtype.itemsize
        if path.stat().st_size < need:
            raise UserError(f"{path}: truncated .npy file ({path.stat().st_size} bytes, the header promises {need})")

    def read(self, start: int, stop: int) -> np.ndarray:
        if self.fortran:  # rare; a row block of a column-major file is strided, so go through a map
            mm = np.load(self.path, mmap_mode="r")
            return np.ascontiguousarray(mm[start:stop])
        out = np.empty((stop - start, self.dim), dtype=self.dtype)
        row_bytes = self.dim * self.dtype.itemsize
        fd = os.open(self.path, os.O_RDONLY)
        try:
            got = os.preadv(fd, [memoryview(out.reshape(-1).view(np.uint8))], self.offset + start * row_bytes)  # type: ignore[arg-type]
        finally:
            os.close(fd)
        if got != out.nbytes:
            raise UserError(f"{self.path}: truncated while reading rows {start}..{stop}")
        return out


def _check_vector_dtype(path: Path, dtype: np.dtype[Any]) -> None:
    """float16/32/64 in either byte order are read (big-endian rows are converted); all else is refused."""
    if dtype.kind == "f" and dtype.itemsize in (2, 4, 8):
        return
    if dtype.kind == "f":
        why = f"{dtype.itemsize * 8}-bit floats (long double), which the store cannot hold; convert to float64"
    elif dtype.kind == "c":
        why = "complex numbers; embeddings are real: save the real part (or split the two halves)"
    elif dtype.hasobject:
        why = "Python objects (a pickled object array), which are never loaded"
    elif dtype.fields is not None or dtype.subdtype is not None:
        why = "a structured or sub-array dtype; save the vectors as a plain (rows, dim) float array"
    else:
        why = f"{dtype.name} values, not floats"
    raise UserError(f"{path}: dtype {dtype.str!r} holds {why} (supported: float16, float32, float64)")


def _numbered(folder: Path, stem: str, suffix: str) -> list[tuple[int, Path]]:
    pattern = re.compile(rf"^{re.escape(stem)}_(\d+){re.escape(suffix)}$")
    found = [(int(m.group(1)), f) for f in folder.iterdir() if (m := pattern.match(f.name))] if folder.is_dir() else []
    return sorted(found)


class NpySource(Source):
    """A single `.npy` file (rows are numbered) or a clip-retrieval output directory."""

    def __init__(
        self, src: str | os.PathLike[str], modality: str | None = None, *, id_column: str | None = None
    ) -> None:
        path = Path(src)
        meta_paths: list[Path | None]
        if path.is_file():
            vec_paths, meta_paths = [path], [None]
        elif path.is_dir():
            found = {m: _numbered(path / f"{p}_emb", f"{p}_emb", ".npy") for m, p in LAYOUT_PREFIX.items()}
            present = [m for m, files in found.items() if files]
            if not present:
                raise UserError(f"{path}: empty input: no img_emb/img_emb_N.npy or text_emb/text_emb_N.npy")
            if modality is None and len(present) > 1:
                raise UserError(f"{path}: holds both img_emb and text_emb; pick one with --modality")
            modality = modality or present[0]
            if modality not in found or not found.get(modality):
                raise UserError(f"{path}: --modality {modality}: no {LAYOUT_PREFIX.get(modality, modality)}_emb files")
            numbered = found[modality]
            vec_paths = [f for _, f in numbered]
            meta_dir = path / "metadata"
            meta_paths = (
                [meta_dir / f"metadata_{n}.parquet" for n, _ in numbered]
                if meta_dir.is_dir()
                else [None] * len(numbered)
            )
            for mp in meta_paths:
                if mp is not None and not mp.is_file():
                    raise UserError(f"{mp}: missing (every embedding file needs its row-aligned metadata file)")
        else:
            raise UserError(f"{path}: no such file or directory")
        self._npys = [NpyFile(p) for p in vec_paths]
        dim = self._npys[0].dim
        for f in self._npys[1:]:
            if f.dim != dim:
                raise UserError(f"{f.path}: dimension mismatch: {f.dim} columns, but {vec_paths[0].name} has {dim}")
        self._offsets = np.cumsum([0] + [f.rows for f in self._npys])
        if self._offsets[-1] == 0:
            raise UserError(f"{path}: empty input: no rows")
        self._pfs = [open_parquet(m) for m in meta_paths if m is not None]
        self._id_column: str | None = None
        self._columns = []
        layout: dict[str, Any] = {}
        if self._pfs:
            mps = [m for m in meta_paths if m is not None]
            for f, pf, mp in zip(self._npys, self._pfs, mps, strict=True):
                check_row_count(mp, f.rows, pf.metadata.num_rows, f.path)
            names = self._pfs[0].schema_arrow.names
            self._id_column = pick_id_column(names, id_column, mps[0])
            check_id_type(self._pfs[0].schema_arrow, self._id_column, mps[0])
            self._columns = schema_columns(self._pfs, mps, ["id"] if self._id_column == "id" else [])
            layout = layout_of(self._pfs[0])
        elif id_column is not None:
            raise UserError(f"--id-column {id_column!r}: {path} has no metadata parquet to take ids from")
        super().__init__(
            rows_estimate=int(self._offsets[-1]),
            fmt="npy",
            path=path,
            files=vec_paths,
            modality=require_modality(path, modality or layout.get("modality")),
            dim=dim,
            src_dtype=self._npys[0].dtype,
            metadata_columns={c.key: c.kind for c in self._columns},
            id_source=self._id_column or "row number",
            listing=vec_paths + [m for m in meta_paths if m is not None],
            layout_attrs={"dtype_hint": layout["dtype"]} if "dtype" in layout else {},
        )

    def batches(self, file_index: int, start_item: int, batch_rows: int) -> Iterator[Batch]:
        npy = self._npys[file_index]
        base = int(self._offsets[file_index])
        if not self._pfs:
            for lo in range(start_item, npy.rows, batch_rows):
                hi = min(npy.rows, lo + batch_rows)
                ids = [str(base + r) for r in range(lo, hi)]
                yield Batch(file_index, npy.read(lo, hi), ids, {}, np.arange(lo, hi, dtype=np.int64), 0, hi)
            return
        cols = [c.name for c in self._columns]
        if self._id_column and self._id_column not in cols:
            cols.append(self._id_column)
        for first, batch in iter_slices(self._pfs[file_index], start_item, batch_rows, cols or [self._id_column or ""]):
            hi = first + batch.num_rows
            where = (npy.path, first)
            ids = batch_ids(batch, self._id_column, base + first, where)
            meta = {c.key: column_values(batch, c, where) for c in self._columns}
            yield Batch(file_index, npy.read(first, hi), ids, meta, np.arange(first, hi, dtype=np.int64), 0, hi)

    def id_at(self, file_index: int, item: int) -> str:
        if self._id_column is None:
            return str(int(self._offsets[file_index]) + item)
        for first, batch in iter_slices(self._pfs[file_index], item, 1, [self._id_column]):
            return batch_ids(batch, self._id_column, first, (Path(), 0))[0]
        raise IndexError(item)


def write_npy_header(fh: BinaryIO, dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
    """Write a `.npy` header for a C-ordered array; the caller then writes the rows' bytes."""
    np.lib.format.write_array_header_2_0(
        fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    )
