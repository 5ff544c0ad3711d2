"""The reference implementation's pickle layout: read safely, write exactly.

A reference pickle is a `list` of `dict`s such as `{"id": str, "caption": str, "embed": float16
vector}`. Pickles can run arbitrary code when loaded, so they are read with the restricted unpickler
of `pickle_safe` (numpy arrays and plain values only; see there for what it refuses and how).
Writing uses protocol 4, the reference's own, so a record list written here loads back as equal
dicts with the same key order, value types and vector bytes.

Reading the layout (`PickleSource`): ids follow the rule of every format (`sources.id_string`: str
and np.str_ as they are, int and numpy integers in decimal). Metadata kinds are inferred from every
record of the first file (`sources.infer_column_kind`: a column with a None, a mix of types or an
int beyond int64 is "json"); later files must fit those kinds. Vectors may be float16, float32 or
float64 (not float128); the widest dtype of the first file sets the store's dtype, which is fixed
when the store is created, so a later record whose values that dtype cannot hold exactly is rounded
with a PrecisionWarning naming its file and item (`--dtype float32` keeps them).
"""

from __future__ import annotations

import os
import pickle
import re
import reprlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_bytes
from .errors import UserError
from .pickle_load import load_pickle_restricted
from .pickle_safe import ALLOWED_GLOBALS, RefusedGlobal, RestrictedUnpickler
from .sources import (
    Batch,
    NotJson,
    Source,
    id_string,
    infer_column_kind,
    require_modality,
    to_json_value,
    value_fits,
)

__all__ = [
    "ALLOWED_GLOBALS",
    "PROTOCOL",
    "PickleSource",
    "PrecisionWarning",
    "RefusedGlobal",
    "RestrictedUnpickler",
    "list_reference_pickles",
    "load_pickle_restricted",
    "load_reference_pickle",
    "reference_file_names",
    "write_reference_pickle",
]

#: Protocol of the reference's pickles (Python's default since 3.8).
PROTOCOL = 4

_REFERENCE_NAME = re.compile(r"^(text|image)_embeds_(\d+)\.pkl$")
#: Vector dtypes the store can take (by item size); float128 (long double) is refused by name.
_VECTOR_ITEMSIZES = (2, 4, 8)


class PrecisionWarning(UserWarning):
    """Vectors of a later input file are wider than the store's dtype, fixed by the first file."""


def load_reference_pickle(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Load one reference pickle: a list of dicts, read with the restricted unpickler."""
    obj = load_pickle_restricted(path)
    if not isinstance(obj, list):
        raise UserError(f"{path}: wrong item layout: expected a list of dicts, found a {type(obj).__name__}")
    for i, item in enumerate(obj):
        if not isinstance(item, dict):
            raise UserError(f"{path}: item {i}: wrong item layout: expected a dict, found a {type(item).__name__}")
    return obj


def write_reference_pickle(path: str | os.PathLike[str], records: list[dict[str, Any]]) -> None:
    """Write `records` as a reference pickle (protocol 4), atomically: tmp file, then os.replace."""
    atomic_write_bytes(Path(path), pickle.dumps(records, protocol=PROTOCOL))


def list_reference_pickles(src: str | os.PathLike[str], modality: str | None = None) -> tuple[list[Path], str | None]:
    """The pickles to read from `src` (a file or a directory), in the reference's order, and the modality.

    The reference reads every `*.pkl` of a directory in lexicographic name order. The modality comes
    from the names (`text_embeds_*` / `image_embeds_*`) when they agree; a directory holding both
    kinds needs `modality`, which then selects the matching files.
    """
    p = Path(src)
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted((f for f in p.iterdir() if f.suffix == ".pkl" and f.is_file()), key=lambda f: f.name)
    else:
        raise UserError(f"{p}: no such file or directory")
    if not files:
        raise UserError(f"{p}: empty input: no *.pkl files")
    kinds = {m.group(1) for f in files if (m := _REFERENCE_NAME.match(f.name))}
    if modality is None:
        if len(kinds) > 1:
            raise UserError(f"{p}: holds both text_embeds_* and image_embeds_* pickles; pick one with --modality")
        return files, (kinds.pop() if kinds else None)
    if len(kinds) > 1:
        files = [f for f in files if f.name.startswith(f"{modality}_embeds_")]
    return files, modality


def reference_file_names(modality: str, n_files: int) -> list[str]:
    """Names for `n_files` exported pickles, in the order the rows go into them.

    The reference names its files `{modality}_embeds_{k}.pkl`, k = 1, 2, … and reads a directory in
    lexicographic order, where `_10` sorts before `_2`. Handing the row blocks out in that same
    lexicographic order keeps the rows in store order for any reader that follows the reference.
    """
    names = [f"{modality}_embeds_{k}.pkl" for k in range(1, n_files + 1)]
    return sorted(names)


class PickleSource(Source):
    """A directory (or one file) of reference pickles as an ingest source.

    The layout is fixed by the first file that has a vector: the first such record's key order and
    `embed` length, the widest `embed` dtype and each other key's kind over all its records (each key
    other than `id` and `embed` becomes a metadata column). Every later record must match, or the
    ingest stops naming the file and item.
    """

    item_word = "item"

    def __init__(self, src: str | os.PathLike[str], modality: str | None = None) -> None:
        files, found = list_reference_pickles(src, modality)
        self.files = files
        self._cache: tuple[int, list[dict[str, Any]]] | None = None
        self._warned: set[int] = set()
        first_file = self._first_file_with_vectors(files)
        if first_file is None:
            raise UserError(f"{src}: empty input: no record has an embedding")
        records = self._load(first_file)
        first = next(r for r in records if r["embed"] is not None)
        keys = list(first)
        where = files[first_file]
        for needed in ("id", "embed"):
            if needed not in keys:
                raise UserError(f"{where}: wrong item layout: records have no {needed!r} key (keys {keys})")
        embed = first["embed"]
        if not isinstance(embed, np.ndarray) or embed.ndim != 1 or embed.dtype.kind != "f" or embed.size == 0:
            raise UserError(f"{where}: wrong item layout: 'embed' must be a 1-D float numpy vector")
        # Only records of the first record's layout inform the kinds; the others fail in _check later.
        alike = [(i, r) for i, r in enumerate(records) if tuple(r) == tuple(keys) and r["embed"] is not None]
        widths = set()
        for i, rec in alike:
            e = rec["embed"]
            if isinstance(e, np.ndarray) and e.dtype.kind == "f":
                if e.dtype.itemsize not in _VECTOR_ITEMSIZES:
                    raise UserError(_too_wide(f"{where}: item {i}", e.dtype))
                widths.add(e.dtype)
        src_dtype = max(widths, key=lambda d: d.itemsize)
        columns = {k: infer_column_kind(r[k] for _, r in alike) for k in keys if k not in ("id", "embed")}
        super().__init__(
            # The first file's records times the files: reference pickles are written in equal parts.
            rows_estimate=len(records) * len(files),
            fmt="reference-pkl",
            path=Path(src),
            files=files,
            modality=require_modality(Path(src), found),
            dim=int(embed.shape[0]),
            src_dtype=src_dtype,
            metadata_columns=columns,
            id_source="id",
            listing=list(files),
            layout_attrs={"record_keys": keys},
        )
        self._keys = tuple(keys)

    def _load(self, file_index: int) -> list[dict[str, Any]]:
        # One file in memory at a time: the cache is replaced, never grown.
        if self._cache is None or self._cache[0] != file_index:
            self._cache = None
            self._cache = (file_index, load_reference_pickle(self.files[file_index]))
        return self._cache[1]

    def _first_file_with_vectors(self, files: list[Path]) -> int | None:
        for i in range(len(files)):
            for j, rec in enumerate(self._load(i)):
                if "embed" not in rec:
                    raise UserError(f"{files[i]}: item {j}: wrong item layout: records have no 'embed' key")
                if rec["embed"] is not None:
                    return i
        return None

    def close(self) -> None:
        self._cache = None

    def _check(self, file_index: int, item: int, rec: dict[str, Any]) -> tuple[str, list[Any]]:
        """Validate one record; return its id and its metadata values as the store takes them."""
        where = f"{self.files[file_index]}: item {item}"
        if tuple(rec) != self._keys:
            raise UserError(
                f"{where}: wrong item layout: keys {_short(list(rec))} differ from the first record's "
                f"{list(self._keys)}"
            )
        ident = id_string(rec["id"])
        if ident is None:
            raise UserError(
                f"{where}: wrong item layout: 'id' is {_short(rec['id'])} ({type(rec['id']).__name__}); "
                "ids must be str or int"
            )
        embed = rec["embed"]
        if not isinstance(embed, np.ndarray) or embed.dtype.kind != "f" or embed.ndim != 1:
            raise UserError(f"{where} (id {ident!r}): wrong item layout: 'embed' is not a 1-D float numpy vector")
        if embed.shape[0] != self.dim:
            raise UserError(
                f"{where} (id {ident!r}): dimension mismatch: embed has {embed.shape[0]} values, "
                f"but {self.files[0].name} has {self.dim}"
            )
        if embed.dtype.itemsize > self.src_dtype.itemsize:
            self._check_precision(file_index, f"{where} (id {ident!r})", embed)
        values = []
        for name, kind in self.metadata_columns.items():
            v = rec[name]
            if kind == "json":
                try:
                    values.append(to_json_value(v))
                    continue
                except NotJson as exc:
                    why = f": {exc}"
            else:
                why = f", but the first file's records have {kind} values"
                if value_fits(kind, v):
                    values.append(v)
                    continue
            raise UserError(
                f"{where} (id {ident!r}): wrong item layout: {name!r} is {_short(v)} ({type(v).__name__}){why}"
            )
        return ident, values

    def _check_precision(self, file_index: int, where: str, embed: np.ndarray) -> None:
        if embed.dtype.itemsize not in _VECTOR_ITEMSIZES:
            raise UserError(_too_wide(where, embed.dtype))
        if file_index in self._warned:
            return
        with np.errstate(over="ignore", invalid="ignore"):
            kept = embed.astype(self.src_dtype).astype(embed.dtype)
        if not np.array_equal(kept, embed, equal_nan=True):
            self._warned.add(file_index)
            warnings.warn(
                f"{where}: {embed.dtype} values are rounded to {self.src_dtype}, the widest vectors of the "
                f"first file ({self.files[0].name}), which fixed the store's dtype (--dtype float32 keeps them)",
                PrecisionWarning,
                stacklevel=4,
            )

    def batches(self, file_index: int, start_item: int, batch_rows: int) -> Iterator[Batch]:
        records = self._load(file_index)
        pos = start_item
        while pos < len(records):
            stop = min(len(records), pos + batch_rows)
            kept: list[int] = []
            ids: list[str] = []
            meta: dict[str, list[Any]] = {name: [] for name in self.metadata_columns}
            columns = list(meta.values())
            for i in range(pos, stop):
                rec = records[i]
                if isinstance(rec, dict) and "embed" in rec and rec["embed"] is None and tuple(rec) == self._keys:
                    continue
                ident, values = self._check(file_index, i, rec)
                kept.append(i)
                ids.append(ident)
                for column, value in zip(columns, values, strict=True):
                    column.append(value)
            chosen = [records[i]["embed"] for i in kept]
            vectors = np.stack(chosen) if chosen else np.empty((0, self.dim), self.src_dtype)
            yield Batch(
                file_index=file_index,
                vectors=vectors,
                ids=ids,
                metadata=meta,
                items=np.asarray(kept, dtype=np.int64),
                skipped_none=(stop - pos) - len(kept),
                next_item=stop,
            )
            pos = stop

    def id_at(self, file_index: int, item: int) -> str:
        value = self._load(file_index)[item]["id"]
        return id_string(value) or str(value)


def _short(value: Any) -> str:
    """A bounded repr for messages: a hostile value may be huge or nested without end."""
    return reprlib.repr(value)


def _too_wide(where: str, dtype: np.dtype[Any]) -> str:
    return (
        f"{where}: 'embed' is {dtype} ({dtype.itemsize * 8}-bit floats), which the store cannot hold; "
        "convert the vectors to float64, float32 or float16"
    )
