"""Export a feature store to the reference pickles, clip-retrieval npy + parquet, or one parquet file.

Each export is the inverse of the matching ingest: ids, metadata (with its kinds and, for pickles,
the records' key order) and vector bytes come back exactly, so store → files → store is the
identity. Everything is written under a temporary name next to DEST and renamed into place at the
end; an existing DEST is never touched.

Column names: every metadata column is exported. One whose name is taken by the format's own fields
(`id` and `embed` in pickles, `id` and `embedding` in npy/parquet) is renamed `meta_<name>` (then
`meta_<name>_2`, `_3`, … if that is taken too). npy/parquet record the renaming in the schema
metadata, so their ingest restores the store's names; a pickle has nowhere to record it, so its
ingest keeps `meta_<name>`. Values: "json" columns holding bytes (`{BYTES_TAG: base64}` in the store)
become bytes again in pickles; npy/parquet keep the JSON text.

Memory: one output file's rows for pickles (the format needs the whole list at once), one read
block for npy and parquet.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import UserError
from .featurestore import FeatureStore, StoreError, to_torch
from .npy_io import LAYOUT_PREFIX, write_npy_header
from .parquet_io import arrow_schema, metadata_table, vector_array
from .pickle_io import reference_file_names, write_reference_pickle
from .sources import from_json_value

EXPORT_FORMATS = ("reference-pkl", "npy", "parquet", "memmap")
DEFAULT_ROWS_PER_FILE = {"reference-pkl": 200_000, "npy": 1_000_000}


@dataclass
class ExportSummary:
    dest: str
    fmt: str
    rows: int
    files: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return f"exported {self.rows} rows to {self.dest} ({self.fmt}, {self.files} file(s))"


def export(
    store_path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    fmt: str,
    rows_per_file: int | None = None,
    block_rows: int | None = None,
    show_progress: bool = False,
) -> ExportSummary | dict[str, Any]:
    """Write the store at `store_path` to `dest` in format `fmt` (see EXPORT_FORMATS)."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"--format: {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    try:
        st = FeatureStore.open(store_path)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    out = Path(dest)
    if fmt == "memmap":
        from .memmap import export_memmap  # the training view lives with the memmap reader

        # export_memmap checks DEST itself: a finished export of the same store is a no-op (a re-run
        # after a failure past its last step), anything else there is refused.
        try:
            return export_memmap(st, out, show_progress=show_progress)
        finally:
            st.close()
    if out.exists():
        raise UserError(f"{out}: DEST already exists; remove it or choose another path")
    limit = rows_per_file or DEFAULT_ROWS_PER_FILE.get(fmt, 0)
    if fmt != "parquet" and limit <= 0:
        raise UserError(f"--rows-per-file must be positive, got {rows_per_file}")
    tmp = out.with_name(f".{out.name}.export-{os.getpid()}")
    _remove(tmp)
    try:
        if fmt == "reference-pkl":
            files = _export_pickles(st, tmp, limit)
        elif fmt == "npy":
            files = _export_npy(st, tmp, limit, block_rows)
        else:
            files = _export_parquet(st, tmp, block_rows)
        os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise
    finally:
        st.close()
    return ExportSummary(dest=str(out), fmt=fmt, rows=st.rows, files=files)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _ranges(rows: int, per_file: int) -> list[tuple[int, int]]:
    return [(lo, min(rows, lo + per_file)) for lo in range(0, rows, per_file)]


def _vectors_out(st: FeatureStore, block: np.ndarray) -> np.ndarray:
    """Vectors as numpy can hold them: bfloat16 (stored as uint16 bits) widens exactly to float32."""
    if st.dtype == "bfloat16":
        return to_torch(block, st.dtype).float().numpy()
    return block


def _metadata(st: FeatureStore, lo: int, hi: int) -> dict[str, Any]:
    """Metadata of rows [lo, hi) as Python values (str, int, float, bool, JSON values)."""
    out: dict[str, Any] = {}
    for name in st.metadata_columns:
        values = st.read_metadata(name, lo, hi)
        out[name] = values.tolist() if isinstance(values, np.ndarray) else values
    return out


PICKLE_FIELDS = ("id", "embed")
TABLE_FIELDS = ("id", "embedding")


def exported_names(columns: list[str], reserved: tuple[str, ...]) -> dict[str, str]:
    """Store column → exported name: a column named like one of `reserved` becomes `meta_<name>`,
    then `meta_<name>_2`, `_3`, … until the name is free (of columns and reserved names alike)."""
    taken = set(columns) | set(reserved)
    names: dict[str, str] = {}
    for col in columns:
        if col not in reserved:
            names[col] = col
            continue
        candidate, k = f"meta_{col}", 2
        while candidate in taken:
            candidate, k = f"meta_{col}_{k}", k + 1
        taken.add(candidate)
        names[col] = candidate
    return names


def record_keys(st: FeatureStore) -> list[str]:
    """Key order of exported records: the ingested pickles' own, else id, metadata…, embed."""
    keys = st.attrs.get("ingest", {}).get("record_keys")
    expected = {"id", "embed", *st.metadata_columns}
    if isinstance(keys, list) and set(keys) == expected and len(keys) == len(expected):
        return [str(k) for k in keys]
    names = exported_names(list(st.metadata_columns), PICKLE_FIELDS)
    return ["id", *names.values(), "embed"]


def _export_pickles(st: FeatureStore, tmp: Path, per_file: int) -> int:
    tmp.mkdir(parents=True)
    keys = record_keys(st)
    column_of = {v: k for k, v in exported_names(list(st.metadata_columns), PICKLE_FIELDS).items()}
    json_columns = [c for c, kind in st.metadata_columns.items() if kind == "json"]
    ranges = _ranges(st.rows, per_file)
    for name, (lo, hi) in zip(reference_file_names(st.modality, len(ranges)), ranges, strict=True):
        vectors = _vectors_out(st, st.read(lo, hi))
        ids = st.read_ids(lo, hi).tolist()
        meta = _metadata(st, lo, hi)
        for c in json_columns:
            meta[c] = [from_json_value(v) for v in meta[c]]
        by_key = {k: meta[column_of.get(k, k)] for k in keys if k not in PICKLE_FIELDS}
        records = []
        for i in range(hi - lo):
            # A fresh array per record, as the reference pickles it (not a view into one block).
            rec = {k: ids[i] if k == "id" else vectors[i].copy() if k == "embed" else by_key[k][i] for k in keys}
            records.append(rec)
        write_reference_pickle(tmp / name, records)
        del records, vectors, meta
    return len(ranges)


def _blocks(st: FeatureStore, lo: int, hi: int, block_rows: int | None) -> Iterator[tuple[int, int, np.ndarray]]:
    for start, block in st.iter_chunks(lo, hi, block_rows=block_rows):
        yield start, start + len(block), _vectors_out(st, block)


def _schema(st: FeatureStore) -> tuple[pa.Schema, dict[str, str]]:
    """The Arrow schema of exported rows, and store column → exported column name."""
    dtype = np.dtype("<f4") if st.dtype == "bfloat16" else st.np_dtype
    names = exported_names(list(st.metadata_columns), TABLE_FIELDS)
    layout: dict[str, Any] = {"modality": st.modality, "dtype": st.dtype}
    renamed = {new: old for old, new in names.items() if new != old}
    if renamed:
        layout["renamed"] = renamed
    columns = {names[c]: kind for c, kind in st.metadata_columns.items()}
    return arrow_schema(columns, dtype, st.dim, layout), names


def _table_arrays(st: FeatureStore, a: int, b: int, schema: pa.Schema, names: dict[str, str]) -> dict[str, pa.Array]:
    meta = {names[c]: v for c, v in _metadata(st, a, b).items()}
    columns = {names[c]: kind for c, kind in st.metadata_columns.items()}
    return metadata_table(st.read_ids(a, b).tolist(), meta, columns, schema)


def _export_npy(st: FeatureStore, tmp: Path, per_file: int, block_rows: int | None) -> int:
    prefix = LAYOUT_PREFIX[st.modality]
    (tmp / f"{prefix}_emb").mkdir(parents=True)
    (tmp / "metadata").mkdir()
    schema, names = _schema(st)
    meta_schema = pa.schema([f for f in schema if f.name != "embedding"], metadata=schema.metadata)
    dtype = np.dtype("<f4") if st.dtype == "bfloat16" else st.np_dtype
    ranges = _ranges(st.rows, per_file)
    for n, (lo, hi) in enumerate(ranges):
        npy_path = tmp / f"{prefix}_emb" / f"{prefix}_emb_{n}.npy"
        with (
            open(npy_path, "wb") as fh,
            pq.ParquetWriter(tmp / "metadata" / f"metadata_{n}.parquet", meta_schema) as writer,
        ):
            write_npy_header(fh, dtype, (hi - lo, st.dim))
            for a, b, block in _blocks(st, lo, hi, block_rows):
                fh.write(np.ascontiguousarray(block, dtype=dtype).tobytes())
                writer.write_table(pa.table(_table_arrays(st, a, b, schema, names), schema=meta_schema))
    return len(ranges)


def _export_parquet(st: FeatureStore, tmp: Path, block_rows: int | None) -> int:
    schema, names = _schema(st)
    with pq.ParquetWriter(tmp, schema) as writer:
        for a, b, block in _blocks(st, 0, st.rows, block_rows):
            arrays = _table_arrays(st, a, b, schema, names)
            arrays["embedding"] = vector_array(block, st.dim)
            writer.write_table(pa.table(arrays, schema=schema))
    return 1
