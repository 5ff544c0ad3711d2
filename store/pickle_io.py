"""The reference implementation's pickle layout: read safely, write exactly.

A reference pickle is a `list` of `dict`s such as `{"id": str, "caption": str, "embed": float16
vector}`. Pickles can run arbitrary code when loaded, so they are read with an unpickler that admits
only the globals this layout needs (numpy array, dtype and scalar reconstruction); anything else is
refused before it is called. Writing uses protocol 4, the reference's own, so a record list written
here loads back as equal dicts with the same key order, value types and vector bytes.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_bytes
from .errors import UserError
from .sources import Batch, Source, infer_kind, require_modality, value_fits

#: The globals a list of dicts of str/numbers/numpy arrays needs, across numpy 1.x (`numpy.core`) and
#: 2.x (`numpy._core`) and pickle protocols 2 (bytes via `_codecs.encode`) to 5 (`_frombuffer`).
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
        ("builtins", "bytearray"),
    }
)

#: Protocol of the reference's pickles (Python's default since 3.8).
PROTOCOL = 4

_REFERENCE_NAME = re.compile(r"^(text|image)_embeds_(\d+)\.pkl$")


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module = module
        self.name = name


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose `find_class` resolves only `ALLOWED_GLOBALS`; nothing else can be called."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise RefusedGlobal(module, name)
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not part of the reference layout")


def load_pickle_restricted(path: str | os.PathLike[str]) -> Any:
    """Unpickle `path` with the restricted unpickler. Errors become a UserError naming the file."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            obj = RestrictedUnpickler(fh).load()
    except RefusedGlobal as exc:
        raise UserError(
            f"{p}: refused to load: the pickle asks for {exc.module}.{exc.name}, which the reference layout "
            "never needs (a pickle can run code on load; only numpy arrays and plain values are allowed)"
        ) from None
    except FileNotFoundError:
        raise UserError(f"{p}: no such file") from None
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise UserError(f"{p}: truncated or unreadable pickle ({type(exc).__name__}: {exc})") from None
    except MemoryError:
        raise UserError(f"{p}: corrupt pickle (asks for more memory than there is)") from None
    return obj


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

    The layout is fixed by the first record that has a vector: its key order, its `embed` length
    and dtype, and the type of each other value (each key other than `id` and `embed` becomes a
    metadata column). Every later record must match, or the ingest stops naming the file and item.
    """

    item_word = "item"

    def __init__(self, src: str | os.PathLike[str], modality: str | None = None) -> None:
        files, found = list_reference_pickles(src, modality)
        self._cache: tuple[int, list[dict[str, Any]]] | None = None
        first = self._first_record(files)
        if first is None:
            raise UserError(f"{src}: empty input: no record has an embedding")
        keys = list(first)
        for needed in ("id", "embed"):
            if needed not in keys:
                raise UserError(f"{files[0]}: wrong item layout: records have no {needed!r} key (keys {keys})")
        embed = first["embed"]
        if not isinstance(embed, np.ndarray) or embed.ndim != 1 or embed.dtype.kind != "f" or embed.size == 0:
            raise UserError(f"{files[0]}: wrong item layout: 'embed' must be a 1-D float numpy vector")
        columns = {k: infer_kind(v) for k, v in first.items() if k not in ("id", "embed")}
        super().__init__(
            fmt="reference-pkl",
            path=Path(src),
            files=files,
            modality=require_modality(Path(src), found),
            dim=int(embed.shape[0]),
            src_dtype=embed.dtype,
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

    def _first_record(self, files: list[Path]) -> dict[str, Any] | None:
        self.files = files
        for i in range(len(files)):
            for j, rec in enumerate(self._load(i)):
                if "embed" not in rec:
                    raise UserError(f"{files[i]}: item {j}: wrong item layout: records have no 'embed' key")
                if rec["embed"] is not None:
                    return rec
        return None

    def close(self) -> None:
        self._cache = None

    def _check(self, file_index: int, item: int, rec: dict[str, Any]) -> None:
        where = f"{self.files[file_index]}: item {item}"
        if tuple(rec) != self._keys:
            raise UserError(
                f"{where}: wrong item layout: keys {list(rec)} differ from the first record's {list(self._keys)}"
            )
        if type(rec["id"]) is not str:
            raise UserError(f"{where}: wrong item layout: 'id' is a {type(rec['id']).__name__}, not a str")
        embed = rec["embed"]
        if not isinstance(embed, np.ndarray) or embed.dtype.kind != "f" or embed.ndim != 1:
            raise UserError(f"{where} (id {rec['id']!r}): wrong item layout: 'embed' is not a 1-D float numpy vector")
        if embed.shape[0] != self.dim:
            raise UserError(
                f"{where} (id {rec['id']!r}): dimension mismatch: embed has {embed.shape[0]} values, "
                f"but {self.files[0].name} has {self.dim}"
            )
        for name, kind in self.metadata_columns.items():
            if not value_fits(kind, rec[name]):
                raise UserError(
                    f"{where} (id {rec['id']!r}): wrong item layout: {name!r} is {rec[name]!r} "
                    f"({type(rec[name]).__name__}), but earlier records have {kind} values"
                )

    def batches(self, file_index: int, start_item: int, batch_rows: int) -> Iterator[Batch]:
        records = self._load(file_index)
        pos = start_item
        while pos < len(records):
            stop = min(len(records), pos + batch_rows)
            kept: list[int] = []
            for i in range(pos, stop):
                rec = records[i]
                if isinstance(rec, dict) and "embed" in rec and rec["embed"] is None and tuple(rec) == self._keys:
                    continue
                self._check(file_index, i, rec)
                kept.append(i)
            chosen = [records[i] for i in kept]
            vectors = np.stack([r["embed"] for r in chosen]) if chosen else np.empty((0, self.dim), self.src_dtype)
            yield Batch(
                file_index=file_index,
                vectors=vectors,
                ids=[r["id"] for r in chosen],
                metadata={name: [r[name] for r in chosen] for name in self.metadata_columns},
                items=np.asarray(kept, dtype=np.int64),
                skipped_none=(stop - pos) - len(kept),
                next_item=stop,
            )
            pos = stop

    def id_at(self, file_index: int, item: int) -> str:
        return str(self._load(file_index)[item]["id"])
