"""What an ingest reads: input formats as a common `Source` of row batches.

Every input format (reference pickles, clip-retrieval npy + parquet, parquet) is a list of input
files read in a fixed order; each file yields batches of rows with their ids and metadata, and can
be entered at any item, which is what lets an interrupted ingest resume mid-file. The layout (dim,
metadata columns and their kinds) is fixed from the first file before any row is written.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
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


def infer_kind(value: Any) -> str:
    """The metadata kind that keeps a Python value's type through a round trip."""
    t = type(value)
    if t is str:
        return "str"
    if t is bool:
        return "bool"
    if t is int:
        return "int64"
    if t is float:
        return "float64"
    return "json"


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
    return _json_safe(value)


def _json_safe(value: Any) -> bool:
    """JSON values that load back equal: None, bool, int, finite float, str, lists, str-keyed dicts."""
    t = type(value)
    if value is None or t in (bool, int, str):
        return True
    if t is float:
        return math.isfinite(value)
    if t is list:
        return all(_json_safe(v) for v in value)
    if t is dict:
        return all(type(k) is str and _json_safe(v) for k, v in value.items())
    return False


def check_row_count(path: Path, expected: int, got: int, other: Path) -> None:
    if expected != got:
        raise UserError(f"{path}: {got} rows, but {other} has {expected}; the two must be row-aligned")


def require_modality(path: Path, modality: str | None) -> str:
    if modality is None:
        raise UserError(f"{path}: cannot tell whether the rows are text or image; pass --modality text|image")
    if modality not in ("text", "image"):
        raise UserError(f"--modality: {modality!r} is not one of text, image")
    return modality
