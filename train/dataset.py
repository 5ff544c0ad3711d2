"""LLaVA-style dataset joined by id to a memory-mapped feature view, and the batch collate.

A sample is one annotation record (`id`, `caption`, `conversations`, ...) plus the feature row of its
id. The join is computed once at construction, in blocks: each block of records is parsed for its
ids, which are looked up in the view's hash index in one vectorised call. The result is one int64
row per record (8 bytes), never a Python object per record. Ids missing from the view raise
DataError (on_missing="error", the default) or are skipped, counted and reported ("skip").

`FeatureCollate` gathers a batch's rows from the view in one call and returns the float embeddings
(B, D) plus the text fields a LLaVA/Bunny-style trainer tokenises; an optional transform (e.g. ReAlign
with frozen stats) runs on the embeddings at collate time, inside the DataLoader worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from revision.train.annotations import AnnotationIndex
from revision.train.errors import DataError
from revision.train.view import FeatureView

_log = logging.getLogger("revision.train")

ON_MISSING = ("error", "skip")
TEXT_FIELDS = ("caption", "conversations")


@dataclass(frozen=True)
class JoinReport:
    """How the annotation records matched the feature view."""

    records: int
    """Records in the annotation file."""
    matched: int
    """Records whose id is in the view (the dataset's length)."""
    missing: int
    """Records skipped because their id is not in the view (on_missing="skip")."""
    missing_examples: tuple[str, ...]
    """Up to ten of the missing ids, in file order."""

    def summary(self) -> str:
        text = f"{self.matched:,} of {self.records:,} annotation records matched a feature row"
        if self.missing:
            text += f"; {self.missing:,} skipped (ids not in the view, e.g. {', '.join(self.missing_examples[:3])})"
        return text


def _record_id(rec: dict[str, Any], key: str, path: Path, i: int) -> str:
    value = rec.get(key)
    if value is None:
        raise DataError(f"{path}: record {i} has no {key!r} field")
    # LLaVA sets use both "000000033471" and 33471; the store holds strings.
    return value if isinstance(value, str) else str(value)


class FeatureDataset(Dataset[dict[str, Any]]):
    """Annotation records joined to feature rows by id. Item: dict with "row", "id" and the text fields."""

    def __init__(
        self,
        annotations: str | Path | AnnotationIndex,
        view: str | Path | FeatureView,
        *,
        on_missing: str = "error",
        id_key: str = "id",
        text_fields: Sequence[str] = TEXT_FIELDS,
        block_records: int = 65536,
    ) -> None:
        if on_missing not in ON_MISSING:
            raise DataError(f"--on-missing must be one of {ON_MISSING}, got {on_missing!r}")
        self.annotations = annotations if isinstance(annotations, AnnotationIndex) else AnnotationIndex(annotations)
        self.view = view if isinstance(view, FeatureView) else FeatureView.open(view)
        self.id_key = id_key
        self.text_fields = tuple(text_fields)
        rows, report = self._join(on_missing, block_records)
        self.report = report
        if report.missing:
            _log.warning("%s: %s", self.annotations.path, report.summary())
        keep = rows >= 0
        # Positions of the kept records and their rows; when nothing is skipped, positions are 0..n-1.
        self.records = np.flatnonzero(keep) if report.missing else None
        self.sample_rows = rows[keep] if report.missing else rows

    def _join(self, on_missing: str, block_records: int) -> tuple[np.ndarray, JoinReport]:
        ann, path = self.annotations, self.annotations.path
        n = len(ann)
        rows = np.empty(n, np.int64)
        examples: list[str] = []
        first = -1
        for lo in range(0, n, block_records):
            hi = min(n, lo + block_records)
            ids = [_record_id(rec, self.id_key, path, i) for i, rec in ann.iter_records(lo, hi)]
            found = self.view.lookup(ids, missing="ignore")
            absent = np.flatnonzero(found < 0)
            if absent.size and not examples:
                first = lo + int(absent[0])
            examples.extend(ids[int(k)] for k in absent[: max(0, 10 - len(examples))])
            rows[lo:hi] = found
        missing = int((rows < 0).sum())
        if missing and on_missing == "error":
            # The whole file is joined first, so one run reports how many ids are missing, not just one.
            raise DataError(
                f"{path}: record {first}: id {examples[0]!r} is not in the feature view {self.view.path}; "
                f"{missing:,} of {n:,} records have ids missing from it (e.g. {', '.join(map(repr, examples[:5]))}); "
                "use --on-missing skip to skip such records"
            )
        return rows, JoinReport(n, n - missing, missing, tuple(examples))

    def __len__(self) -> int:
        return int(self.sample_rows.size)

    def record_index(self, i: int) -> int:
        """Position in the annotation file of sample i."""
        return int(self.records[i]) if self.records is not None else int(i)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """The samples at `indices` (DataLoader's batched fetch: one call per batch)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (int(idx.min()) < -n or int(idx.max()) >= n):
            raise IndexError(f"sample index out of range for {n} samples")
        idx %= max(1, n)
        positions = self.records[idx] if self.records is not None else idx
        recs = self.annotations.records(positions)
        items = []
        path, key, fields = self.annotations.path, self.id_key, self.text_fields
        for pos, row, rec in zip(positions.tolist(), self.sample_rows[idx].tolist(), recs, strict=True):
            item: dict[str, Any] = {"row": row, "id": _record_id(rec, key, path, pos)}
            for name in fields:
                item[name] = rec.get(name)
            items.append(item)
        return items

    def row_order(self, *, block: int = 1 << 22) -> np.ndarray | None:
        """Sample positions sorted by feature row, so a sampler walking this order reads pages in file
        order; None when the samples already are in row order (the common case: no array needed)."""
        rows = self.sample_rows
        in_order = all(
            bool((np.diff(rows[lo : lo + block + 1]) >= 0).all()) for lo in range(0, max(1, rows.size - 1), block)
        )
        return None if in_order else np.argsort(rows, kind="stable")


Transform = Callable[[torch.Tensor], torch.Tensor]


class FeatureCollate:
    """Batch collate: {"embeds": (B, D) tensor, "rows": (B,) int64, "ids": [...], <text fields>: [...]}.

    embeds are gathered from the view in one call (in the worker process), converted to `dtype`,
    then passed through `transform` if given; `post` then maps the whole batch dict (e.g. adds the
    tokenised text). Picklable, so it runs inside DataLoader workers.
    """

    def __init__(
        self,
        view: FeatureView,
        *,
        dtype: torch.dtype = torch.float32,
        transform: Transform | None = None,
        post: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.view = view
        self.dtype = dtype
        self.transform = transform
        self.post = post

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        rows = np.fromiter((s["row"] for s in samples), np.int64, len(samples))
        embeds = self.view.rows(rows, dtype=self.dtype)
        if self.transform is not None:
            embeds = self.transform(embeds)
        batch: dict[str, Any] = {"embeds": embeds, "rows": torch.from_numpy(rows)}
        keys = [k for k in (samples[0] if samples else {}) if k != "row"]
        for key in keys:
            batch[key if key != "id" else "ids"] = [s.get(key) for s in samples]
        # e.g. tokenising the text fields, so that too runs in the worker processes
        return self.post(batch) if self.post is not None else batch
