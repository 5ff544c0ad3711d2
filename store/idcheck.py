"""Duplicate-id detection for ingest, in memory bounded by a budget rather than by the row count.

Each row contributes a 24-byte record (64-bit id hash, store row, where it came from) to one of 256
bucket files chosen by the hash's top byte. Buckets are append-only and in row order, so a resumed
ingest truncates them to the committed rows. At the end each bucket is sorted on its own (a bucket
over the memory budget is split further by the next hash bits, on disk), equal hashes are found
next to each other, and a suspected duplicate is confirmed by comparing the id strings, so a hash
collision never rejects good input.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .idindex import DEFAULT_HASH, hash_ids

#: Names the id hash; a resumed ingest must use the one its bucket files were written with.
ID_HASH = DEFAULT_HASH
RECORD = np.dtype([("h", "<u8"), ("row", "<i8"), ("src", "<i8")])
#: `src` packs (file index, item) of an input row as file << ITEM_BITS | item; rows already in the
#: destination store have src = -1.
ITEM_BITS = 40
FROM_DEST = -1
_FANOUT_BITS = 8
_SPLIT_BITS = 4
DEFAULT_BUDGET_BYTES = 256 << 20

IdOf = Callable[[int, int], str]
"""(row, src) → the id string of that row, to confirm a suspected duplicate."""


def pack_src(file_index: int, items: np.ndarray) -> np.ndarray:
    return (np.int64(file_index) << np.int64(ITEM_BITS)) | items.astype(np.int64)


def unpack_src(src: int) -> tuple[int, int]:
    return src >> ITEM_BITS, src & ((1 << ITEM_BITS) - 1)


class DuplicateIds(Exception):
    """Two rows share an id: their records (row, src) and the id."""

    def __init__(self, ident: str, first: tuple[int, int], second: tuple[int, int]) -> None:
        super().__init__(ident)
        self.ident = ident
        self.first = first
        self.second = second


class IdBuckets:
    """The on-disk hash records of every row an ingest has seen (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _bucket(self, b: int) -> Path:
        return self.root / f"b{b:03d}.bin"

    def add(self, ids: Sequence[str] | np.ndarray, first_row: int, src: np.ndarray) -> None:
        """Record a block of rows `first_row, first_row + 1, …`; a duplicate inside it is raised now."""
        if not len(ids):
            return
        recs = np.empty(len(ids), dtype=RECORD)
        recs["h"] = hash_ids(list(ids))
        recs["row"] = np.arange(first_row, first_row + len(ids), dtype=np.int64)
        recs["src"] = src
        _raise_first_duplicate(recs, lambda row, _src: ids[row - first_row])
        bucket = (recs["h"] >> np.uint64(64 - _FANOUT_BITS)).astype(np.int64)
        order = np.argsort(bucket, kind="stable")  # stable: each bucket stays in row order
        recs, bucket = recs[order], bucket[order]
        starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
        ends = np.r_[starts[1:], len(bucket)]
        for lo, hi in zip(starts, ends, strict=True):
            with open(self._bucket(int(bucket[lo])), "ab") as fh:
                fh.write(recs[lo:hi].tobytes())

    def truncate(self, rows: int) -> None:
        """Forget records of rows >= `rows` (written after the last commit of a crashed run)."""
        for path in sorted(self.root.glob("b*.bin")):
            size = path.stat().st_size
            n = size // RECORD.itemsize
            if n == 0:
                if size:
                    os.truncate(path, 0)
                continue
            recs = np.memmap(path, dtype=RECORD, mode="r", shape=(n,))
            keep = int(np.searchsorted(recs["row"], rows, side="left"))
            del recs
            os.truncate(path, keep * RECORD.itemsize)

    def check(self, id_of: IdOf, *, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        """Raise DuplicateIds for the first confirmed duplicate (by bucket); memory ≤ ~3× budget."""
        for path in sorted(self.root.glob("b*.bin")):
            _check_file(path, _FANOUT_BITS, id_of, budget_bytes)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _check_file(path: Path, used_bits: int, id_of: IdOf, budget: int) -> None:
    size = path.stat().st_size
    if size <= budget or used_bits + _SPLIT_BITS > 64:
        _raise_first_duplicate(np.fromfile(path, dtype=RECORD), id_of)
        return
    # Too big to sort in memory: split by the next hash bits, streaming, and check each part.
    parts = [path.with_name(f"{path.stem}.{k:x}.bin") for k in range(1 << _SPLIT_BITS)]
    handles = [open(p, "wb") for p in parts]  # noqa: SIM115 - closed just below
    try:
        src = np.memmap(path, dtype=RECORD, mode="r")
        step = max(1, budget // RECORD.itemsize)
        shift = np.uint64(64 - used_bits - _SPLIT_BITS)
        mask = np.uint64((1 << _SPLIT_BITS) - 1)
        for lo in range(0, len(src), step):
            block = np.array(src[lo : lo + step])
            sub = ((block["h"] >> shift) & mask).astype(np.int64)
            for k in range(1 << _SPLIT_BITS):
                handles[k].write(block[sub == k].tobytes())
        del src
    finally:
        for fh in handles:
            fh.close()
    try:
        for part in parts:
            _check_file(part, used_bits + _SPLIT_BITS, id_of, budget)
    finally:
        for part in parts:
            part.unlink(missing_ok=True)


def _raise_first_duplicate(recs: np.ndarray, id_of: IdOf) -> None:
    """Find equal hashes (sorted by hash, then row); confirm by the strings; raise on the first real pair."""
    if len(recs) < 2:
        return
    order = np.lexsort((recs["row"], recs["h"]))
    h = recs["h"][order]
    same = np.flatnonzero(h[1:] == h[:-1])
    run_starts = same[np.r_[True, np.diff(same) > 1]] if same.size else same
    for start in run_starts:
        stop = int(start) + 1
        while stop < len(h) and h[stop] == h[start]:
            stop += 1
        members = [recs[m] for m in order[start:stop]]
        names = [id_of(int(r["row"]), int(r["src"])) for r in members]
        for j in range(1, len(members)):
            for i in range(j):
                if names[i] == names[j]:
                    a, b = members[i], members[j]
                    raise DuplicateIds(names[j], (int(a["row"]), int(a["src"])), (int(b["row"]), int(b["src"])))
