"""Parquet: an embedding list column plus id and metadata columns, read by row groups and batches.

Also the Arrow side shared with the clip-retrieval npy layout (whose metadata is parquet): column
kinds, conversion of record batches to ids and metadata, and writing store rows back to Arrow. Files
written by `revision export` carry their column kinds, modality and dtype in the schema metadata, so
they come back as the same store.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import UserError
from .sources import Batch, NotJson, Source, id_string, require_modality, to_json_value

KINDS_KEY = b"revision.kinds"
LAYOUT_KEY = b"revision.layout"
EMBEDDING_NAMES = ("embedding", "embed", "emb", "vector", "embeddings")
_ARROW_FLOAT: dict[pa.DataType, np.dtype[Any]] = {
    pa.float16(): np.dtype("<f2"),
    pa.float32(): np.dtype("<f4"),
    pa.float64(): np.dtype("<f8"),
}
_KIND_TYPES = {
    "str": pa.string(),
    "json": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
}


def natural_key(path: Path) -> list[Any]:
    """Sort key comparing digit runs as numbers: part_2 before part_10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


@dataclass(frozen=True)
class ParquetMeta:
    """A parquet file's footer (schema, row groups, statistics), read without keeping the file open.

    Thousands of input files must not mean thousands of open descriptors: files are opened only
    while their rows are being read.
    """

    path: Path
    metadata: pq.FileMetaData
    schema_arrow: pa.Schema


def open_parquet(path: Path) -> ParquetMeta:
    try:
        md = pq.read_metadata(path)
        return ParquetMeta(path, md, md.schema.to_arrow_schema())
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"{path}: unreadable parquet file ({exc})") from None


@dataclass(frozen=True)
class Column:
    """A metadata column: its kind in the store, and whether the parquet holds it as JSON text."""

    name: str
    kind: str
    json_text: bool = False
    store_name: str | None = None
    """The store's name for it when an export renamed it (see `export.exported_names`)."""

    @property
    def key(self) -> str:
        return self.store_name or self.name


def schema_columns(files: list[ParquetMeta], paths: list[Path], skip: Sequence[str]) -> list[Column]:
    """The metadata columns of row-aligned parquet files that must all share one schema.

    A column's kind follows its Arrow type (string → str, integers → int64, floats → float64,
    bool → bool, anything else → json); a column with nulls (or no statistics to rule them out)
    becomes json so None survives. Kinds recorded by `revision export` take precedence.
    """
    # An empty file may carry null-typed columns (nothing to infer from), so only its names must agree.
    ref = next((k for k, pf in enumerate(files) if pf.metadata.num_rows), 0)
    first = files[ref].schema_arrow
    for pf, path in zip(files, paths, strict=True):
        same = pf.schema_arrow.equals(first, check_metadata=False) if pf.metadata.num_rows else True
        if not same or pf.schema_arrow.names != first.names:
            raise UserError(f"{path}: its columns {pf.schema_arrow} differ from {paths[ref]}'s {first}")
    recorded = json.loads((first.metadata or {}).get(KINDS_KEY, b"{}"))
    renamed = layout_of(files[ref]).get("renamed", {})
    cols: list[Column] = []
    for fld in first:
        if fld.name in skip:
            continue
        if fld.name in recorded:
            kind = recorded[fld.name]
            cols.append(Column(fld.name, kind, json_text=kind == "json", store_name=renamed.get(fld.name)))
            continue
        kind = _arrow_kind(fld.type)
        if kind != "json" and _may_have_nulls(files, fld.name):
            kind = "json"
        cols.append(Column(fld.name, kind))
    return cols


def _arrow_kind(t: pa.DataType) -> str:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "str"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t) and not (pa.types.is_uint64(t)):
        return "int64"
    if pa.types.is_floating(t):
        return "float64"
    return "json"


def _may_have_nulls(files: list[ParquetMeta], name: str) -> bool:
    for pf in files:
        md = pf.metadata
        if not md.num_rows:
            continue
        leaf = next((j for j in range(md.num_columns) if md.schema.column(j).path == name), None)
        if leaf is None:
            return True
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            stats = rg.column(leaf).statistics
            if rg.num_rows and (stats is None or not stats.has_null_count or stats.null_count):
                return True
    return False


def _jsonable(v: Any) -> Any:
    """A value of an Arrow column without a plain kind as the "json" kind holds it.

    JSON values stay as they are (NaN and ±Inf included), bytes become `{BYTES_TAG: base64}`, and
    types JSON lacks (timestamps, decimals, …) their text; map entries become [key, value] lists.
    """
    try:
        return to_json_value(v)
    except NotJson:
        return json.loads(json.dumps(v, default=_as_json))


def _as_json(v: Any) -> Any:
    return to_json_value(v) if type(v) is bytes else str(v)


def column_values(batch: pa.RecordBatch, col: Column, where: tuple[Path, int]) -> Any:
    """One metadata column of a record batch as values for FeatureStore.append."""
    arr = batch.column(col.name)
    if col.kind != "json" and arr.null_count:
        row = int(np.flatnonzero(~arr.is_valid().to_numpy(zero_copy_only=False))[0])
        raise UserError(f"{where[0]}: row {where[1] + row}: column {col.name!r} is null, but its kind is {col.kind}")
    if col.kind == "str":
        return arr.to_numpy(zero_copy_only=False)
    if col.kind == "int64":
        return arr.cast(pa.int64()).to_numpy()
    if col.kind == "float64":
        return arr.cast(pa.float64()).to_numpy()
    if col.kind == "bool":
        return arr.to_numpy(zero_copy_only=False).astype(bool)
    values = arr.to_pylist()
    if not col.json_text:
        return [_jsonable(v) for v in values]
    out = []
    for row, v in enumerate(values):
        try:
            out.append(None if v is None else json.loads(v))
        except (ValueError, RecursionError) as exc:
            why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            where_row = f"{where[0]}: row {where[1] + row}"
            raise UserError(f"{where_row}: column {col.name!r} is not valid JSON ({why})") from None
    return out


def batch_ids(batch: pa.RecordBatch, id_column: str | None, first_row: int, where: tuple[Path, int]) -> list[str]:
    """Ids from `id_column` by the rule of every format (`sources.id_string`), or global row numbers."""
    if id_column is None:
        return [str(r) for r in range(first_row, first_row + batch.num_rows)]
    arr = batch.column(id_column)
    if arr.null_count:
        row = int(np.flatnonzero(~arr.is_valid().to_numpy(zero_copy_only=False))[0])
        raise UserError(f"{where[0]}: row {where[1] + row}: id column {id_column!r} is null")
    values = arr.to_pylist()
    ids = [id_string(v) for v in values]
    if None in ids:
        row = ids.index(None)
        raise UserError(
            f"{where[0]}: row {where[1] + row}: id {values[row]!r} in column {id_column!r} is not a str or an int"
        )
    return ids  # type: ignore[return-value]


def check_id_type(schema: pa.Schema, id_column: str | None, path: Path) -> None:
    """Refuse an id column whose Arrow type can hold no str or int (floats, bytes, dates, lists, …)."""
    if id_column is None:
        return
    t = schema.field(id_column).type
    if pa.types.is_dictionary(t):
        t = t.value_type
    # A null type is what an empty file holds: it has no ids to judge.
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t) or pa.types.is_null(t)):
        raise UserError(f"{path}: id column {id_column!r} is {t}; ids must be strings or integers (--id-column)")


def iter_slices(
    pf: ParquetMeta, start: int, batch_rows: int, columns: list[str]
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Record batches (first row, batch) from row `start` on, starting at the row group that holds it."""
    md = pf.metadata
    bounds = np.cumsum([0] + [md.row_group(g).num_rows for g in range(md.num_row_groups)])
    if start >= bounds[-1]:
        return
    group = int(np.searchsorted(bounds, start, side="right") - 1)
    skip = start - int(bounds[group])
    pos = start
    groups = list(range(group, md.num_row_groups))
    with pq.ParquetFile(pf.path, metadata=md) as reader:
        for batch in reader.iter_batches(batch_size=batch_rows, row_groups=groups, columns=columns, use_threads=False):
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                continue
            if skip:
                batch = batch.slice(skip)
                skip = 0
            yield pos, batch
            pos += batch.num_rows


def embedding_matrix(arr: pa.Array, dim: int, where: tuple[Path, int]) -> tuple[np.ndarray, np.ndarray]:
    """(valid (n,) bool, vectors (n_valid, dim)) from a list column; a null vector is not valid."""
    valid = arr.is_valid().to_numpy(zero_copy_only=False) if arr.null_count else np.ones(len(arr), bool)
    if arr.null_count:
        arr = arr.filter(pa.array(valid))
    if not pa.types.is_fixed_size_list(arr.type):
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(lengths != dim)
        if bad.size:
            row = int(np.flatnonzero(valid)[bad[0]])
            raise UserError(
                f"{where[0]}: row {where[1] + row}: dimension mismatch: "
                f"a vector of {lengths[bad[0]]} values, expected {dim}"
            )
    flat = arr.flatten().to_numpy(zero_copy_only=False)
    return valid, flat.reshape(-1, dim)


def vector_type(t: pa.DataType, path: Path, name: str) -> tuple[np.dtype[Any], int | None]:
    """(numpy dtype, fixed size or None) of an embedding list column."""
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        raise UserError(f"{path}: --embedding-column {name!r} is a {t}, not a list of floats")
    if t.value_type not in _ARROW_FLOAT:
        raise UserError(f"{path}: --embedding-column {name!r} holds {t.value_type}, not float16/32/64")
    size: int | None = t.list_size if pa.types.is_fixed_size_list(t) else None
    return _ARROW_FLOAT[t.value_type], size


def pick_id_column(names: Sequence[str], id_column: str | None, path: Path) -> str | None:
    """The id column: --id-column if given, else `id`, else `image_path`, else None (row numbers)."""
    if id_column is not None:
        if id_column not in names:
            raise UserError(f"{path}: --id-column {id_column!r} is not a column (columns: {list(names)})")
        return id_column
    for name in ("id", "image_path"):
        if name in names:
            return name
    return None


def layout_of(pf: ParquetMeta) -> dict[str, Any]:
    """What `revision export` recorded about the store (modality, dtype), or {}."""
    return dict(json.loads((pf.schema_arrow.metadata or {}).get(LAYOUT_KEY, b"{}")))


class ParquetSource(Source):
    """A parquet file or a directory of them (natural name order), one row per vector."""

    def __init__(
        self,
        src: str | os.PathLike[str],
        modality: str | None = None,
        *,
        id_column: str | None = None,
        embedding_column: str | None = None,
    ) -> None:
        path = Path(src)
        if path.is_dir():
            files = sorted((f for f in path.iterdir() if f.suffix == ".parquet" and f.is_file()), key=natural_key)
        elif path.is_file():
            files = [path]
        else:
            raise UserError(f"{path}: no such file or directory")
        if not files:
            raise UserError(f"{path}: empty input: no *.parquet files")
        self._pfs = [open_parquet(f) for f in files]
        schema = self._pfs[0].schema_arrow
        emb = embedding_column or next((n for n in EMBEDDING_NAMES if n in schema.names), None)
        if emb is None:
            lists = [f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)]
            if len(lists) != 1:
                raise UserError(
                    f"{files[0]}: which column holds the vectors? pass --embedding-column (columns {schema.names})"
                )
            emb = lists[0]
        if emb not in schema.names:
            raise UserError(f"{files[0]}: --embedding-column {emb!r} is not a column (columns: {schema.names})")
        dtype, dim = vector_type(schema.field(emb).type, files[0], emb)
        if dim is None:
            dim = self._first_length(emb, path)
        self._id_column = pick_id_column(schema.names, id_column, files[0])
        check_id_type(schema, self._id_column, files[0])
        skip = [emb] + ([self._id_column] if self._id_column == "id" else [])
        self._columns = schema_columns(self._pfs, files, skip)
        layout = layout_of(self._pfs[0])
        self._emb = emb
        self._offsets = np.cumsum([0] + [pf.metadata.num_rows for pf in self._pfs])
        if self._offsets[-1] == 0:
            raise UserError(f"{path}: empty input: no rows")
        super().__init__(
            rows_estimate=sum(int(pf.metadata.num_rows) for pf in self._pfs),
            fmt="parquet",
            path=path,
            files=files,
            modality=require_modality(path, modality or layout.get("modality")),
            dim=dim,
            src_dtype=dtype,
            metadata_columns={c.key: c.kind for c in self._columns},
            id_source=self._id_column or "row number",
            listing=list(files),
            layout_attrs={"dtype_hint": layout["dtype"]} if "dtype" in layout else {},
        )

    def _first_length(self, emb: str, path: Path) -> int:
        for pf in self._pfs:
            for _, batch in iter_slices(pf, 0, 1024, [emb]):
                lengths = pc.list_value_length(batch.column(0)).drop_null()
                if len(lengths):
                    return int(lengths[0].as_py())
        raise UserError(f"{path}: empty input: no vectors in column {emb!r}")

    def batches(self, file_index: int, start_item: int, batch_rows: int) -> Iterator[Batch]:
        pf, path = self._pfs[file_index], self.files[file_index]
        cols = [self._emb] + [c.name for c in self._columns]
        if self._id_column and self._id_column not in cols:
            cols.append(self._id_column)
        for first, batch in iter_slices(pf, start_item, batch_rows, cols):
            where = (path, first)
            valid, vectors = embedding_matrix(batch.column(self._emb), self.dim, where)
            ids = batch_ids(batch, self._id_column, int(self._offsets[file_index]) + first, where)
            meta = {c.key: column_values(batch, c, where) for c in self._columns}
            items = np.arange(first, first + batch.num_rows, dtype=np.int64)
            if not valid.all():
                keep = np.flatnonzero(valid)
                ids = [ids[k] for k in keep]
                meta = {k: _take(v, keep) for k, v in meta.items()}
                items = items[keep]
            yield Batch(file_index, vectors, ids, meta, items, int((~valid).sum()), first + batch.num_rows)

    def id_at(self, file_index: int, item: int) -> str:
        cols = [self._id_column] if self._id_column else [self._emb]
        for first, batch in iter_slices(self._pfs[file_index], item, 1, cols):
            return batch_ids(batch, self._id_column, int(self._offsets[file_index]) + first, (Path(), 0))[0]
        raise IndexError(item)


def _take(values: Any, keep: np.ndarray) -> Any:
    if isinstance(values, np.ndarray):
        return values[keep]
    return [values[k] for k in keep]


# -- writing -------------------------------------------------------------------------------------


def arrow_schema(columns: dict[str, str], vector_dtype: np.dtype[Any], dim: int, layout: dict[str, Any]) -> pa.Schema:
    """Schema of exported rows: `id`, the metadata columns, then `embedding` (fixed-size list)."""
    value = {np.dtype("<f2"): pa.float16(), np.dtype("<f4"): pa.float32()}[np.dtype(vector_dtype)]
    fields = [pa.field("id", pa.string(), nullable=False)]
    fields += [pa.field(name, _KIND_TYPES[kind]) for name, kind in columns.items()]
    fields.append(pa.field("embedding", pa.list_(value, dim)))
    meta = {KINDS_KEY: json.dumps(columns).encode(), LAYOUT_KEY: json.dumps(layout).encode()}
    return pa.schema(fields, metadata=meta)


def metadata_table(
    ids: Sequence[str], meta: dict[str, Any], columns: dict[str, str], schema: pa.Schema
) -> dict[str, pa.Array]:
    """Arrow arrays for the id and metadata columns of one block (json values as JSON text)."""
    arrays: dict[str, pa.Array] = {"id": pa.array(list(ids), pa.string())}
    for name, kind in columns.items():
        values = meta[name]
        if kind == "json":
            values = [json.dumps(v, ensure_ascii=False) for v in values]
        arrays[name] = pa.array(values, schema.field(name).type)
    return arrays


def vector_array(block: np.ndarray, dim: int) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(block).reshape(-1)), dim)
