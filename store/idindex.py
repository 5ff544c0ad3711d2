"""On-disk id → row index: the ids as UTF-8 bytes plus offsets, and a sorted 64-bit hash index.

Files in a directory (all plain `.npy`, memory-mapped by readers, so opening costs nothing per row):

- `ids_bytes.npy`   uint8 (total_bytes,)  the UTF-8 ids, concatenated in row order
- `ids_offsets.npy` int64 (N + 1,)        id k is `ids_bytes[offsets[k]:offsets[k + 1]]`
- `id_hash.npy`     uint64 (N,)           hashes, sorted ascending
- `id_row.npy`      int64 (N,)            the row of each sorted hash (ties ordered by row)

Building is bounded-memory for any N: hashes are buffered in runs of at most `run_rows` entries,
each run is sorted and spilled to a temporary file, and the runs are k-way merged in blocks.
Lookups hash the queried ids, binary-search the sorted hashes and then compare the stored id bytes,
so equal hashes (collisions) resolve to the right row and an absent id is never mistaken for a
present one. Hashing is vectorised over a block: ids are packed into a zero-padded byte matrix and
mixed eight bytes at a time.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from revision.store.idhash import (
    DEFAULT_HASH,
    EncodedIds,
    HashFn,
    encode_ids,
    hash_encoded,
    hash_id_bytes,
    hash_ids,
)
from revision.store.npyio import NpyWriter

__all__ = [
    "DEFAULT_HASH",
    "EncodedIds",
    "HashFn",
    "IdIndex",
    "IdIndexBuilder",
    "IndexStats",
    "encode_ids",
    "hash_encoded",
    "hash_id_bytes",
    "hash_ids",
]


@dataclass(frozen=True)
class IndexStats:
    """What building found: equal hashes of different ids (resolved) and repeated ids."""

    rows: int
    id_bytes: int
    hash_collisions: int
    duplicate_ids: int


class IdIndexBuilder:
    """Write the id files of an index directory from blocks of ids given in row order."""

    def __init__(
        self,
        directory: str | Path,
        *,
        run_rows: int = 1 << 22,
        merge_fanin: int = 64,
        hash_fn: HashFn = hash_id_bytes,
        resume: dict[str, int] | None = None,
    ) -> None:
        """`resume`: a `checkpoint()` of an interrupted build in the same directory; the builder then
        continues after its rows (call `rehash` with the ids of rows `pending_from` .. `rows` first)."""
        if run_rows < 1 or merge_fanin < 2:
            raise ValueError(f"run_rows must be >= 1 (got {run_rows}) and merge_fanin >= 2 (got {merge_fanin})")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_rows = run_rows
        self.merge_fanin = merge_fanin
        self.hash_fn = hash_fn
        self._tmp = self.dir / "idindex-runs"
        self._buf_hash: list[np.ndarray] = []
        self._buf_rows = 0
        if resume is None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp.mkdir()
            self._bytes = NpyWriter(self.dir / "ids_bytes.npy", np.uint8)
            self._offsets = NpyWriter(self.dir / "ids_offsets.npy", np.int64)
            self._offsets.append(np.zeros(1, np.int64))
            self._total_bytes = 0
            self.rows = 0
            self._runs: list[Path] = []
            return
        self.rows, self._total_bytes, n_runs = int(resume["rows"]), int(resume["id_bytes"]), int(resume["runs"])
        self._runs = [self._tmp / f"run{k:06d}" for k in range(n_runs)]
        keep = {f"{r.name}{suffix}" for r in self._runs for suffix in (".hash.npy", ".row.npy")}
        missing = keep - {p.name for p in self._tmp.iterdir()}
        if missing:
            raise ValueError(f"{self._tmp}: cannot resume, sort runs missing: {sorted(missing)[:3]}")
        for p in self._tmp.iterdir():
            if p.name not in keep:  # spilled after the checkpoint: its rows are re-hashed instead
                p.unlink()
        self._bytes = NpyWriter(self.dir / "ids_bytes.npy", np.uint8, resume_rows=self._total_bytes)
        self._offsets = NpyWriter(self.dir / "ids_offsets.npy", np.int64, resume_rows=self.rows + 1)

    @property
    def pending_from(self) -> int:
        """First row whose hash is not in a spilled run (after a resume: re-hash from here to `rows`)."""
        return len(self._runs) * self.run_rows + self._buf_rows

    def rehash(self, ids: Sequence[str] | np.ndarray) -> None:
        """After a resume: the ids of rows pending_from .. rows, whose hashes were only in memory."""
        if self.pending_from + len(ids) != self.rows:
            raise ValueError(f"rehash needs the ids of rows {self.pending_from}..{self.rows}, got {len(ids)}")
        self._buffer(hash_encoded(encode_ids(ids), self.hash_fn))

    def checkpoint(self) -> dict[str, int]:
        """Flush what was added; returns the state to pass as `resume` after an interruption."""
        self._bytes.flush()
        self._offsets.flush()
        return {"rows": self.rows, "id_bytes": self._total_bytes, "runs": len(self._runs)}

    def add(self, ids: Sequence[str] | np.ndarray) -> None:
        """Append the next block of ids (rows self.rows .. self.rows + len(ids))."""
        enc = encode_ids(ids)
        lens = enc.lens
        n = len(lens)
        if n == 0:
            return
        self._bytes.append(enc.flat)
        self._offsets.append(self._total_bytes + np.cumsum(lens))
        self._total_bytes += int(enc.flat.size)
        self.rows += n
        self._buffer(hash_encoded(enc, self.hash_fn))

    def _buffer(self, hashes: np.ndarray) -> None:
        # Split so each run holds at most run_rows entries.
        pos, n = 0, hashes.size
        while pos < n:
            take = min(n - pos, self.run_rows - self._buf_rows)
            self._buf_hash.append(hashes[pos : pos + take])
            self._buf_rows += take
            pos += take
            if self._buf_rows == self.run_rows:
                self._spill()

    def _spill(self) -> None:
        if not self._buf_rows:
            return
        hashes = np.concatenate(self._buf_hash)
        # Every run but the last is exactly run_rows long, so run k starts at row k * run_rows.
        first_row = len(self._runs) * self.run_rows
        order = np.argsort(hashes, kind="stable")
        path = self._tmp / f"run{len(self._runs):06d}"
        np.save(f"{path}.hash.npy", hashes[order])
        np.save(f"{path}.row.npy", order.astype(np.int64) + first_row)
        self._runs.append(path)
        self._buf_hash = []
        self._buf_rows = 0

    def finish(self, *, block_rows: int = 1 << 20) -> IndexStats:
        """Merge the runs into the final sorted index, check collisions, remove the sort runs.

        The spilled runs are removed only once the index is complete, so an interrupted finish
        can be resumed from the last checkpoint.
        """
        self._spill()
        self._bytes.close()
        self._offsets.close()
        runs = self._runs
        level = 0
        while len(runs) > self.merge_fanin:
            runs = [
                self._merge(runs[i : i + self.merge_fanin], self._tmp / f"m{level}-{i:06d}", block_rows)
                for i in range(0, len(runs), self.merge_fanin)
            ]
            level += 1
        final = self._merge(runs, self.dir / "id", block_rows)
        for suffix in (".hash.npy", ".row.npy"):
            Path(f"{final}{suffix}").replace(self.dir / f"id_{suffix.split('.')[1]}.npy")
        collisions, duplicates = _count_collisions(self.dir, block_rows)
        shutil.rmtree(self._tmp, ignore_errors=True)
        return IndexStats(self.rows, self._total_bytes, collisions, duplicates)

    def abort(self) -> None:
        """Stop without finishing; the files and sort runs stay for a resume (or for removal)."""
        self._bytes.abort()
        self._offsets.abort()

    def _merge(self, runs: list[Path], out: Path, block_rows: int) -> Path:
        """K-way merge of sorted (hash, row) runs, holding about `block_rows` entries in memory."""
        hashes = [np.load(f"{r}.hash.npy", mmap_mode="r") for r in runs]
        rows = [np.load(f"{r}.row.npy", mmap_mode="r") for r in runs]
        per_run = max(1024, block_rows // max(1, len(runs)))
        pos = [0] * len(runs)
        with NpyWriter(f"{out}.hash.npy", np.uint64) as wh, NpyWriter(f"{out}.row.npy", np.int64) as wr:
            while True:
                live = [k for k in range(len(runs)) if pos[k] < len(hashes[k])]
                if not live:
                    break
                # Everything at or below the smallest "last buffered hash" of the live runs can be
                # emitted now: no unread entry of any run is smaller than it.
                ends = {k: min(pos[k] + per_run, len(hashes[k])) for k in live}
                limit = min(hashes[k][ends[k] - 1] for k in live)
                parts_h, parts_r = [], []
                for k in live:  # run order = row order, so a stable sort keeps ties ordered by row
                    cut = pos[k] + int(np.searchsorted(hashes[k][pos[k] : ends[k]], limit, side="right"))
                    parts_h.append(np.asarray(hashes[k][pos[k] : cut]))
                    parts_r.append(np.asarray(rows[k][pos[k] : cut]))
                    pos[k] = cut
                h = np.concatenate(parts_h)
                r = np.concatenate(parts_r)
                order = np.argsort(h, kind="stable")
                wh.append(h[order])
                wr.append(r[order])
        del hashes, rows
        for run in runs:
            if run.name.startswith("m"):  # an intermediate merge; the spilled runs stay until the end
                Path(f"{run}.hash.npy").unlink()
                Path(f"{run}.row.npy").unlink()
        return out


def _count_collisions(directory: Path, block_rows: int) -> tuple[int, int]:
    """Scan the sorted hashes for runs of equal values; tell different ids apart from repeated ones.

    Returns (hash_collisions, duplicate_ids): per run of k entries holding u distinct ids,
    u - 1 collisions and k - u duplicates.
    """
    index = IdIndex.open(directory)
    n = len(index.hashes)
    pairs: list[np.ndarray] = []
    for start in range(0, max(0, n - 1), block_rows):
        stop = min(n, start + block_rows + 1)  # one entry of overlap to see pairs across blocks
        h = np.asarray(index.hashes[start:stop])
        pairs.append(np.flatnonzero(h[1:] == h[:-1]) + start)
    first = np.concatenate(pairs) if pairs else np.zeros(0, np.int64)
    collisions = duplicates = 0
    if first.size == 0:
        return 0, 0
    # Consecutive pair positions belong to one run of equal hashes.
    for run in np.split(first, np.flatnonzero(np.diff(first) != 1) + 1):
        members = range(int(run[0]), int(run[-1]) + 2)
        distinct = len({index.id_bytes_of(int(index.rows[i])) for i in members})
        collisions += distinct - 1
        duplicates += len(members) - distinct
    return collisions, duplicates


class IdIndex:
    """Read side: memory-mapped id files; vectorised `lookup(ids) -> rows` (-1 where absent)."""

    def __init__(self, directory: Path, hash_fn: HashFn = hash_id_bytes) -> None:
        self.dir = directory
        self.hash_fn = hash_fn
        self.hashes: np.ndarray = np.load(directory / "id_hash.npy", mmap_mode="r")
        self.rows: np.ndarray = np.load(directory / "id_row.npy", mmap_mode="r")
        self.id_bytes: np.ndarray = np.load(directory / "ids_bytes.npy", mmap_mode="r")
        self.offsets: np.ndarray = np.load(directory / "ids_offsets.npy", mmap_mode="r")
        if len(self.hashes) != len(self.rows) or len(self.offsets) != len(self.hashes) + 1:
            raise ValueError(f"{directory}: id index files disagree on the number of rows")
        # Plain ndarray views of the maps: same memory, without np.memmap's per-operation overhead.
        self._hashes = np.asarray(self.hashes)
        self._rows = np.asarray(self.rows)
        self._id_bytes = np.asarray(self.id_bytes)
        self._offsets = np.asarray(self.offsets)

    @classmethod
    def open(cls, directory: str | Path, hash_fn: HashFn = hash_id_bytes) -> IdIndex:
        return cls(Path(directory), hash_fn)

    def __len__(self) -> int:
        return len(self.hashes)

    def id_bytes_of(self, row: int) -> bytes:
        return bytes(self.id_bytes[int(self.offsets[row]) : int(self.offsets[row + 1])])

    def ids(self, rows: np.ndarray | Sequence[int]) -> list[str]:
        """The id strings of the given rows."""
        return [self.id_bytes_of(int(r)).decode("utf-8") for r in np.asarray(rows).ravel()]

    def lookup(self, ids: Sequence[str] | np.ndarray, *, max_bytes: int = 1 << 25) -> np.ndarray:
        """Rows of the given ids, int64 (n,); -1 where an id is absent. A repeated id gives its first row."""
        enc = encode_ids(ids)
        out = np.full(enc.lens.size, -1, np.int64)
        if self._hashes.size:
            for part, lo, hi in enc.slices(max_bytes):
                out[lo:hi] = self._lookup(part)
        return out

    def _lookup(self, enc: EncodedIds) -> np.ndarray:
        out = np.full(enc.lens.size, -1, np.int64)
        total = self._hashes.size
        mat = enc.padded()
        qh = np.asarray(self.hash_fn(mat, enc.lens), dtype=np.uint64)
        pos = np.searchsorted(self._hashes, qh, side="left")
        cand = np.minimum(pos, total - 1)
        hit = self._hashes[cand] == qh
        hit &= pos < total
        row = self._rows[cand]
        match = hit & self._bytes_equal(row, mat, enc.lens)
        out[match] = row[match]
        # Rare: the first entry with this hash is a different id; walk the rest of the equal run.
        for i in np.flatnonzero(hit & ~match):
            want = bytes(mat[i, : enc.lens[i]])
            j = int(pos[i]) + 1
            while j < total and self._hashes[j] == qh[i]:
                r = int(self._rows[j])
                if self.id_bytes_of(r) == want:
                    out[i] = r
                    break
                j += 1
        return out

    def _bytes_equal(self, rows: np.ndarray, mat: np.ndarray, lens: np.ndarray) -> np.ndarray:
        starts = self._offsets[rows]
        same = (self._offsets[rows + 1] - starts) == lens
        if self._id_bytes.size == 0:
            return same
        stored = EncodedIds(self._id_bytes, starts, lens).padded()
        if stored.shape[1] < mat.shape[1]:  # only when every compared id is empty
            return same
        return same & (stored[:, : mat.shape[1]] == mat).all(axis=1)
