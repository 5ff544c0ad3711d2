"""The ingest job itself: staging and resume for a new store, one-commit appends, the row loop.

`revision.store.ingest.ingest` validates the arguments, opens the source and computes the job key;
this module does the work (see ingest.py's docstring for the guarantees).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import StoreConfig
from .errors import UserError
from .featurestore import FeatureStore, StoreError
from .idcheck import FROM_DEST, DuplicateIds, IdBuckets, pack_src, unpack_src
from .sources import Batch, Source


@dataclass
class IngestSummary:
    """What an ingest did. `mode`: "new", "resumed", "append" or "noop" (already done)."""

    dest: str
    fmt: str
    mode: str
    modality: str
    dim: int
    dtype: str
    files: int
    rows_added: int
    rows_total: int
    skipped_none: int
    nonfinite: int
    nonfinite_policy: str
    id_source: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if self.mode == "noop":
            return f"{self.dest}: this ingest already finished ({self.rows_total} rows); nothing to do"
        verb = {"new": "created", "resumed": "created (resumed)", "append": "appended to"}[self.mode]
        extra = []
        if self.skipped_none:
            extra.append(f"{self.skipped_none} items without a vector skipped")
        if self.nonfinite:
            done = "skipped" if self.nonfinite_policy == "skip" else "zeroed"
            extra.append(f"{self.nonfinite} rows with NaN/Inf {done}")
        tail = f"; {', '.join(extra)}" if extra else ""
        return (
            f"{verb} {self.dest}: +{self.rows_added} rows ({self.rows_total} total), {self.modality}, "
            f"dim {self.dim}, {self.dtype}, from {self.files} {self.fmt} file(s), ids from {self.id_source}{tail}"
        )


@dataclass
class JobState:
    file: int = 0
    item: int = 0
    rows_added: int = 0
    skipped_none: int = 0
    nonfinite: int = 0

    def progress(self, key: str, *, done: bool = False) -> dict[str, Any]:
        return {"job": "ingest", "key": key, "done": done, **asdict(self)}

    @classmethod
    def from_progress(cls, prog: dict[str, Any]) -> JobState:
        return cls(**{k: int(prog[k]) for k in ("file", "item", "rows_added", "skipped_none", "nonfinite")})


class IngestJob:
    def __init__(
        self,
        source: Source,
        dest: Path,
        key: str,
        nonfinite: str,
        batch_rows: int,
        commit_rows: int | None,
        show_progress: bool,
    ) -> None:
        self.source = source
        self.dest = dest
        self.key = key
        self.nonfinite = nonfinite
        self.batch_rows = batch_rows
        self.commit_rows = commit_rows
        self.show_progress = show_progress
        self.staging = dest.parent / f".{dest.name}.ingest"

    def _summary(self, mode: str, st: FeatureStore, state: JobState) -> IngestSummary:
        return IngestSummary(
            dest=str(self.dest),
            fmt=self.source.fmt,
            mode=mode,
            modality=st.modality,
            dim=st.dim,
            dtype=st.dtype,
            files=len(self.source.files),
            rows_added=state.rows_added,
            rows_total=st.rows,
            skipped_none=state.skipped_none,
            nonfinite=state.nonfinite,
            nonfinite_policy=self.nonfinite,
            id_source=self.source.id_source,
        )

    def _attrs(self) -> dict[str, Any]:
        return {"ingest": {"format": self.source.fmt, "id_source": self.source.id_source, **self.source.layout_attrs}}

    # -- a new store, built in staging ------------------------------------------------------------
    def create(self, cfg: StoreConfig) -> IngestSummary:
        store_dir, ids_dir = self.staging / "store", self.staging / "ids"
        st: FeatureStore | None = None
        if store_dir.exists():
            try:
                st = FeatureStore.open(store_dir, mode="a")
            except StoreError:
                st = None
            prog = st.progress if st is not None else None
            if st is None or not prog or prog.get("key") != self.key:
                if st is not None:
                    st.close()
                st = None
        if st is None:  # fresh start; any staging left by a different job is ours to discard
            _clear_dir(self.staging)  # emptied, not replaced: the ingest lock is on this directory
            st = FeatureStore.create(store_dir, cfg, metadata_columns=self.source.metadata_columns, attrs=self._attrs())
            state, mode = JobState(), "new"
            st.commit(progress=state.progress(self.key))
        else:
            assert st.progress is not None
            state, mode = JobState.from_progress(st.progress), "resumed"
        buckets = IdBuckets(ids_dir)
        try:
            if not (st.progress or {}).get("done"):
                buckets.truncate(st.rows)
                self._copy(st, buckets, state, intermediate=True)
                self._check_duplicates(st, buckets)
                if state.rows_added == 0:
                    raise UserError(f"{self.source.path}: empty input: no rows left to ingest")
                st.commit(progress=state.progress(self.key, done=True))
        except (UserError, StoreError):
            st.close()
            # Bad input is deterministic: keeping the staging would only resume into the same error.
            shutil.rmtree(self.staging, ignore_errors=True)
            raise
        summary = self._summary(mode, st, state)
        st.close()
        os.rename(store_dir, self.dest)
        shutil.rmtree(self.staging, ignore_errors=True)
        return summary

    # -- appending to an existing store -----------------------------------------------------------
    def append(self, *, dtype_given: bool, dtype: str) -> IngestSummary:
        try:
            st = FeatureStore.open(self.dest)
        except StoreError as exc:
            raise UserError(f"{self.dest}: DEST exists but is not a feature store ({exc})") from None
        prog = st.progress or {}
        if prog.get("job") == "ingest" and prog.get("key") == self.key and prog.get("done"):
            shutil.rmtree(self.staging, ignore_errors=True)  # a finished run's leftovers, if killed late
            return self._summary("noop", st, JobState.from_progress(prog))
        self._check_compatible(st, dtype_given, dtype)
        st.close()
        st = FeatureStore.open(self.dest, mode="a")
        buckets = IdBuckets(self.dest.parent / f".{self.dest.name}.ingest-ids")
        buckets.remove()
        buckets = IdBuckets(buckets.root)
        state = JobState()
        try:
            for lo, ids in st.iter_ids():
                buckets.add(ids, lo, np.full(len(ids), FROM_DEST, dtype=np.int64))
            self._copy(st, buckets, state, intermediate=False)
            self._check_duplicates(st, buckets)
            if state.rows_added == 0:
                raise UserError(f"{self.source.path}: empty input: no rows left to ingest")
            st.commit(progress=state.progress(self.key, done=True))
            return self._summary("append", st, state)
        except DuplicateIds as exc:
            raise self._duplicate_error(st, exc) from None
        finally:
            st.close()  # without a commit, DEST keeps exactly its old rows
            buckets.remove()

    def _check_compatible(self, st: FeatureStore, dtype_given: bool, dtype: str) -> None:
        src, where = self.source, f"{self.dest}: DEST"
        if st.modality != src.modality:
            raise UserError(f"{where} holds {st.modality} rows; the input is {src.modality} (--modality)")
        if st.dim != src.dim:
            raise UserError(f"{where} has dim {st.dim}; the input's vectors have {src.dim} values")
        if dtype_given and st.dtype != dtype:
            raise UserError(f"{where} stores {st.dtype}; --dtype {dtype} cannot apply to an existing store")
        if st.metadata_columns != src.metadata_columns:
            raise UserError(f"{where} has metadata columns {st.metadata_columns}; the input has {src.metadata_columns}")
        keys = st.attrs.get("ingest", {}).get("record_keys")
        new_keys = src.layout_attrs.get("record_keys")
        if keys and new_keys and keys != new_keys:
            raise UserError(f"{where} records have keys {keys}; the input's have {new_keys}")

    # -- the row loop -------------------------------------------------------------------------------
    def _copy(self, st: FeatureStore, buckets: IdBuckets, state: JobState, *, intermediate: bool) -> None:
        src = self.source
        # A commit rewrites the open (partial) shard; every ~4 shards keeps that under ~15% extra writes.
        commit_rows = self.commit_rows or max(4 * st.shard_rows, self.batch_rows)
        since = 0
        bar = _progress_bar(len(src.files), state.file, self.show_progress)
        for fi in range(state.file, len(src.files)):
            for batch in src.batches(fi, state.item if fi == state.file else 0, self.batch_rows):
                vectors, ids, meta, items = self._finite(batch, st, state)
                first_row = st.rows + st.pending_rows
                try:
                    buckets.add(ids, first_row, pack_src(fi, items))
                except DuplicateIds as exc:
                    raise self._duplicate_error(st, exc) from None
                st.append(vectors, ids, meta)
                state.rows_added += len(ids)
                state.skipped_none += batch.skipped_none
                state.file, state.item = fi, batch.next_item
                since += len(ids)
                if intermediate and since >= commit_rows:
                    st.commit(progress=state.progress(self.key))
                    since = 0
            state.file, state.item = fi + 1, 0
            if intermediate:
                st.commit(progress=state.progress(self.key))
                since = 0
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()

    def _finite(
        self, batch: Batch, st: FeatureStore, state: JobState
    ) -> tuple[Any, list[str], dict[str, Any], np.ndarray]:
        """Apply --nonfinite to a batch; returns what to append (vectors in a dtype the store takes)."""
        x = batch.vectors
        # Check what will be stored: a float32 value past 65504 becomes Inf in a float16 store.
        with np.errstate(over="ignore"):
            conv = x.astype(np.float32 if st.dtype == "bfloat16" else st.np_dtype, copy=False)
        if st.dtype == "bfloat16" and not conv.flags.writeable:
            conv = conv.copy()  # the store converts through torch, which wants writable arrays
        ok = np.isfinite(conv).all(axis=1)
        if ok.all():
            return conv, batch.ids, batch.metadata, batch.items
        bad = np.flatnonzero(~ok)
        if self.nonfinite == "error":
            k = int(bad[0])
            why = "" if not np.isfinite(x[k]).all() else f" after conversion to {st.dtype} (overflow)"
            raise UserError(
                f"{self.source.place(batch.file_index, int(batch.items[k]))} (id {batch.ids[k]!r}): "
                f"non-finite values (NaN/Inf){why}; --nonfinite skip|zero drops or zeroes such rows"
            )
        state.nonfinite += int(bad.size)
        if self.nonfinite == "zero":
            conv = np.where(np.isfinite(conv), conv, 0).astype(conv.dtype)
            return conv, batch.ids, batch.metadata, batch.items
        keep = np.flatnonzero(ok)
        meta = {k: (v[keep] if isinstance(v, np.ndarray) else [v[i] for i in keep]) for k, v in batch.metadata.items()}
        return conv[keep], [batch.ids[i] for i in keep], meta, batch.items[keep]

    # -- duplicates --------------------------------------------------------------------------------
    def _place(self, st: FeatureStore, row: int, src: int) -> str:
        if src == FROM_DEST:
            return f"{self.dest} row {row}"
        return self.source.place(*unpack_src(src))

    def _id_of(self, st: FeatureStore, row: int, src: int) -> str:
        if src == FROM_DEST:
            return str(st.read_ids(row, row + 1)[0])
        return self.source.id_at(*unpack_src(src))

    def _check_duplicates(self, st: FeatureStore, buckets: IdBuckets) -> None:
        try:
            buckets.check(lambda row, src: self._id_of(st, row, src))
        except DuplicateIds as exc:
            raise self._duplicate_error(st, exc) from None

    def _duplicate_error(self, st: FeatureStore, exc: DuplicateIds) -> UserError:
        return UserError(
            f"duplicate id {exc.ident!r}: {self._place(st, *exc.first)} and {self._place(st, *exc.second)} "
            "(ids must be unique)"
        )


def _progress_bar(total: int, done: int, show: bool) -> Any:
    if not show or os.environ.get("REVISION_NO_PROGRESS"):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="file", desc="ingest", file=sys.stderr)


def _clear_dir(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for entry in d.iterdir():
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
