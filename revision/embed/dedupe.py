"""Duplicate-id detection over billions of ids in bounded memory.

Each id is hashed to 64 bits. While the hashes fit in `mem_items`, they are sorted in memory; past
that they are partitioned by their top bits into bucket files on disk, and each bucket is sorted on
its own, so memory stays at one bucket. Equal hashes are only candidates (at 10⁹–10¹⁰ ids a 64-bit
collision is plausible): a second pass compares the actual strings of the candidates, so the answer
is exact.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

_BUCKET_BITS = 10  # 1024 buckets: 10¹⁰ ids → ~80 MB per bucket


def _hash64(ident: str) -> int:
    # Python's str hash (SipHash, 64-bit) is salted per process, which is fine: both passes of one
    # check run in one process. It is ~20x cheaper than hashlib, and this runs once per input row.
    return hash(ident) & 0xFFFF_FFFF_FFFF_FFFF


def _dups_in_sorted(h: np.ndarray) -> np.ndarray:
    if h.size < 2:
        return h[:0]
    same = h[1:] == h[:-1]
    return np.unique(h[1:][same])


class _HashSpill:
    """Hashes buffered in memory, spilled to bucket files once the buffer is full."""

    def __init__(self, mem_items: int, workdir: Path | None) -> None:
        self.mem_items = max(2, mem_items)
        self.buf = np.empty(self.mem_items, dtype=np.uint64)
        self.n = 0
        self.total = 0
        self.workdir_parent = workdir
        self.dir: Path | None = None

    def add(self, h: int) -> None:
        if self.n == self.mem_items:
            self._spill()
        self.buf[self.n] = h
        self.n += 1
        self.total += 1

    def _spill(self) -> None:
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="revision-ids-", dir=self.workdir_parent))
        values = self.buf[: self.n]
        buckets = (values >> np.uint64(64 - _BUCKET_BITS)).astype(np.int64)
        order = np.argsort(buckets, kind="stable")
        values, buckets = values[order], buckets[order]
        edges = np.searchsorted(buckets, np.arange((1 << _BUCKET_BITS) + 1))
        for b in range(1 << _BUCKET_BITS):
            lo, hi = int(edges[b]), int(edges[b + 1])
            if hi > lo:
                with open(self.dir / f"{b:04d}.u64", "ab") as fh:
                    values[lo:hi].tofile(fh)
        self.n = 0

    def candidates(self) -> set[int]:
        """Hashes seen more than once."""
        if self.dir is None:
            return {int(x) for x in _dups_in_sorted(np.sort(self.buf[: self.n]))}
        self._spill()
        found: set[int] = set()
        for f in sorted(self.dir.glob("*.u64")):
            found.update(int(x) for x in _dups_in_sorted(np.sort(np.fromfile(f, dtype=np.uint64))))
        return found

    def cleanup(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


def find_duplicate(
    ids: Callable[[], Iterable[str]], *, mem_items: int = 1 << 23, workdir: Path | None = None
) -> tuple[int, tuple[str, int, int] | None]:
    """Count the ids and find one duplicate: (count, (id, first position, second position) | None).

    `ids` is called once per pass (twice when candidates exist), and must yield the same sequence.
    Memory: `mem_items` hashes (8 bytes each), plus the candidates.
    """
    spill = _HashSpill(mem_items, workdir)
    try:
        for ident in ids():
            spill.add(_hash64(ident))
        total = spill.total
        cands = spill.candidates()
    finally:
        spill.cleanup()
    if not cands:
        return total, None
    first: dict[str, int] = {}
    for pos, ident in enumerate(ids()):
        if _hash64(ident) in cands:
            if ident in first:
                return total, (ident, first[ident], pos)
            first[ident] = pos
    return total, None
