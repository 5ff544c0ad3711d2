"""What an ingest reads: input formats as a common `Source` of row batches.

Every input format (reference pickles, clip-retrieval npy + parquet, parquet) is a list of input
files read in a fixed order; each file yields batches of rows with their ids and metadata, and can
be entered at any item, which is what lets an interrupted ingest resume mid-file. The layout (dim,
metadata columns and their kinds) is fixed from the first file before any row is written.

Rules shared by every format:
- Ids (`id_string`): a string is the id, an integer is spelled in decimal, anything else is refused.
- Metadata kinds (`infer_column_kind`): str, int64, float64 or bool when every value of the column
  has that type; "json" otherwise, which keeps None, ints beyond int64, mixed types, lists, dicts,
  NaN/±Inf and bytes (as `{BYTES_TAG: base64}`) exactly. Pickles infer from every record of the first
  file; parquet from the Arrow type (a column that may hold nulls is "json").
"""

from __future__ import annotations

import base64
import reprlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass
class Batch:
    """Consecutive rows of one input file (items without a vector already left out)."""

    file_index: int
    vectors: np.ndarray
    """(n, D) floating point, in the source's dtype."""
    ids: list[str]
    metadata: dict[str, Any]
    """column → n values (a list, or a numpy array for numeric kinds)."""
    items: np.ndarray
    """(n,) int64: each row's item (record / row number) within its file, for messages."""
    skipped_none: int
    """Items in this batch's span that had no vector (`embed` None / a null embedding)."""
    next_item: int
    """The item to resume from once this batch is committed."""

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Source(ABC):
    """An ordered list of input files of one format, with a fixed row layout."""

    fmt: str
    path: Path
    files: list[Path]
    """The files that hold the rows, in read order."""
    modality: str
    dim: int
    src_dtype: np.dtype[Any]
    metadata_columns: dict[str, str]
    """Metadata column → kind ("str" | "int64" | "float64" | "bool" | "json"), in record order."""
    id_source: str
    """Where ids come from, for the summary: a key/column name, or "row number"."""
    listing: list[Path] = field(default_factory=list)
    """Every file whose content the result depends on (the job key hashes their names and sizes)."""
    layout_attrs: dict[str, Any] = field(default_factory=dict)
    """What export needs to restore the input layout (e.g. the reference's dict key order)."""
    rows_estimate: int | None = None
    """About how many rows the input holds, when that is cheap to know (sizes a small store's chunks)."""

    @abstractmethod
    def batches(self, file_index: int, start_item: int, batch_rows: int) -> Iterator[Batch]:
        """Rows of file `file_index` from item `start_item` on, at most `batch_rows` per batch."""

    @abstractmethod
    def id_at(self, file_index: int, item: int) -> str:
        """The id of one item (used only to confirm a suspected duplicate)."""

    def place(self, file_index: int, item: int) -> str:
        """Where an item lives, for error messages: file and item/row number."""
        return f"{self.files[file_index]} {self.item_word} {item}"

    item_word = "row"

    def close(self) -> None:  # noqa: B027 - most sources hold nothing open
        """Release whatever the source caches."""


#: How a bytes value is kept in a "json" column: JSON has no bytes, so `{BYTES_TAG: base64 text}`.
#: Exports to pickles turn such values back into bytes; the store and JSON exports keep the tag.
BYTES_TAG = "__bytes_base64__"
#: JSON values nested deeper, or expanding to more nodes (shared sub-lists count each time they
#: appear), are refused: they would recurse without bound or take exponential time to write.
MAX_JSON_DEPTH = 100
MAX_JSON_NODES = 1_000_000


class NotJson(ValueError):
    """A metadata value that a "json" column cannot hold and give back unchanged; the message says why."""


def id_string(value: Any) -> str | None:
    """The one id rule of every format: a string is the id; an integer is spelled in decimal; else None.

    str and `np.str_` are taken as they are; int and numpy integers (not bool) become `str(int(v))`,
    so the pickle id 7, the parquet int64 id 7 and the string "7" are the same id (and collide as
    duplicates). Floats, bytes, None and everything else are not ids.
    """
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    return None


def infer_kind(value: Any) -> str:
    """The metadata kind that keeps one Python value's type through a round trip."""
    return infer_column_kind([value])


def infer_column_kind(values: Iterable[Any]) -> str:
    """The kind for a column holding `values`: the narrowest that gives every value back with its type.

    All str → "str", all bool → "bool", all int within int64 → "int64", all float (NaN and ±Inf
    included) → "float64". Anything else is "json": a column with a None (null), an int beyond int64,
    mixed types (1 and 1.5 stay an int and a float), lists, dicts, bytes (see BYTES_TAG), or no value.
    """
    found: str | None = None
    for v in values:
        t = type(v)
        if t is str:
            kind = "str"
        elif t is bool:
            kind = "bool"
        elif t is int and _INT64_MIN <= v <= _INT64_MAX:
            kind = "int64"
        elif t is float:
            kind = "float64"
        else:
            return "json"
        if found is None:
            found = kind
        elif found != kind:
            return "json"
    return found or "json"


def value_fits(kind: str, value: Any) -> bool:
    """Whether `value` can be stored in a column of `kind` and read back with the same type."""
    t = type(value)
    if kind == "str":
        return t is str
    if kind == "bool":
        return t is bool
    if kind == "int64":
        return t is int and _INT64_MIN <= value <= _INT64_MAX
    if kind == "float64":
        return t is float
    try:
        to_json_value(value)
    except NotJson:
        return False
    return True


def to_json_value(value: Any) -> Any:
    """`value` as the store's "json" kind holds it: bytes become `{BYTES_TAG: base64}`, the rest is kept.

    None, bool, int (any size), float (NaN and ±Inf too: written as Python's JSON NaN/Infinity), str,
    bytes, lists and str-keyed dicts of them. Tuples, sets and other types would come back as something
    else and raise NotJson, as do cycles and values past MAX_JSON_DEPTH / MAX_JSON_NODES. Iterative:
    no input can exhaust the C stack.
    """
    t = type(value)
    if value is None or t in (bool, int, float, str):
        return value
    if t is bytes:
        return {BYTES_TAG: base64.b64encode(value).decode("ascii")}
    if t not in (list, dict):
        raise NotJson(f"a {t.__name__} has no JSON form that reads back as a {t.__name__}")
    out: list[Any] | dict[str, Any] = [] if t is list else {}
    stack: list[tuple[Any, Any, int]] = [(value, out, 1)]
    nodes = 1
    while stack:
        src, dst, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise NotJson(f"nested deeper than {MAX_JSON_DEPTH} levels (or it contains itself)")
        items = src.items() if type(src) is dict else enumerate(src)
        for k, v in items:
            if type(src) is dict and type(k) is not str:
                raise NotJson(f"a dict key {reprlib.repr(k)} is not a str")
            nodes += 1
            if nodes > MAX_JSON_NODES:
                raise NotJson(f"more than {MAX_JSON_NODES} values in one field")
            tv = type(v)
            if v is None or tv in (bool, int, float, str):
                conv: Any = v
            elif tv is bytes:
                conv = {BYTES_TAG: base64.b64encode(v).decode("ascii")}
            elif tv in (list, dict):
                conv = [] if tv is list else {}
                stack.append((v, conv, depth + 1))
            else:
                raise NotJson(f"a {tv.__name__} inside has no JSON form that reads back as a {tv.__name__}")
            if type(dst) is list:
                dst.append(conv)
            else:
                dst[k] = conv
    return out


def from_json_value(value: Any) -> Any:
    """The inverse of `to_json_value` for values read from a store: bytes tags become bytes again."""
    t = type(value)
    if t is dict and len(value) == 1 and type(value.get(BYTES_TAG)) is str:
        return base64.b64decode(value[BYTES_TAG])
    if t not in (list, dict):
        return value
    stack = [value]
    while stack:
        obj = stack.pop()
        items = list(obj.items()) if type(obj) is dict else list(enumerate(obj))
        for k, v in items:
            if type(v) is dict and len(v) == 1 and type(v.get(BYTES_TAG)) is str:
                obj[k] = base64.b64decode(v[BYTES_TAG])
            elif type(v) in (list, dict):
                stack.append(v)
    return value


def check_row_count(path: Path, expected: int, got: int, other: Path) -> None:
    if expected != got:
        raise UserError(f"{path}: {got} rows, but {other} has {expected}; the two must be row-aligned")


def require_modality(path: Path, modality: str | None) -> str:
    if modality is None:
        raise UserError(f"{path}: cannot tell whether the rows are text or image; pass --modality text|image")
    if modality not in ("text", "image"):
        raise UserError(f"--modality: {modality!r} is not one of text, image")
    return modality
