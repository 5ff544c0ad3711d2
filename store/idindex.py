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
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from revision.store.npyio import NpyWriter

HashFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(bytes (n, W) uint8 zero-padded, lengths (n,) int64) → (n,) uint64."""

DEFAULT_HASH = "fmix64-words-v1"
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SEED = np.uint64(0x5EED_1D5_0F_F5E7)


def _fmix64(h: np.ndarray) -> np.ndarray:
    # MurmurHash3's 64-bit finaliser: a bijection with full avalanche; uint64 products wrap.
    h = h ^ (h >> np.uint64(33))
    h = h * _M1
    h = h ^ (h >> np.uint64(33))
    h = h * _M2
    return h ^ (h >> np.uint64(33))


def hash_id_bytes(mat: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """The default id hash: (n, W) uint8 zero-padded UTF-8 bytes + (n,) byte lengths → (n,) uint64.

    Depends only on each id's own bytes and length (not on W), so blocks and queries padded to
    different widths hash alike.
    """
    n, width = mat.shape
    words_n = -(-width // 8)
    if words_n * 8 != width:
        mat = np.pad(mat, ((0, 0), (0, words_n * 8 - width)))
    words = np.ascontiguousarray(mat).view(np.dtype("<u8")).reshape(n, words_n)
    lens64 = lens.astype(np.uint64)
    with np.errstate(over="ignore"):
        h = (lens64 * _GOLDEN) ^ _SEED
        for k in range(words_n):
            mixed = _fmix64((h ^ words[:, k]) * _GOLDEN)
            # Only words that hold bytes of this id count; padding words beyond its length do not.
            h = np.where(lens64 > np.uint64(8 * k), mixed, h)
        return _fmix64(h)


def encode_ids(ids: Sequence[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pack string ids as a zero-padded UTF-8 byte matrix.

    Returns (mat (n, W) uint8, lens (n,) int64 byte lengths, exact (n,) bool). `exact` is False for
    an id with trailing NUL characters, which numpy's fixed-width strings cannot represent; such
    ids are rejected when building and never match when looking up.
    """
    n = len(ids)
    if n == 0:
        return np.zeros((0, 1), np.uint8), np.zeros(0, np.int64), np.zeros(0, bool)
    uni = np.asarray(ids, dtype=object).astype(str) if not _is_unicode_array(ids) else np.asarray(ids)
    enc = np.strings.encode(uni, "utf-8")
    mat = enc.view(np.uint8).reshape(n, enc.dtype.itemsize)
    lens = np.strings.str_len(enc).astype(np.int64)
    if isinstance(ids, np.ndarray) and ids.dtype.kind == "U":
        exact = np.ones(n, bool)  # already fixed-width: nothing more was lost here
    else:
        char_lens = np.fromiter((len(s) if isinstance(s, str) else len(str(s)) for s in ids), np.int64, n)
        exact = char_lens == np.strings.str_len(uni)
    return mat, lens, exact


def _is_unicode_array(ids: Sequence[str] | np.ndarray) -> bool:
    return isinstance(ids, np.ndarray) and ids.dtype.kind == "U"


def hash_ids(ids: Sequence[str] | np.ndarray, hash_fn: HashFn = hash_id_bytes) -> np.ndarray:
    mat, lens, _ = encode_ids(ids)
    return hash_fn(mat, lens)


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
        tmp_dir: str | Path | None = None,
    ) -> None:
        if run_rows < 1 or merge_fanin < 2:
            raise ValueError(f"run_rows must be >= 1 (got {run_rows}) and merge_fanin >= 2 (got {merge_fanin})")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_rows = run_rows
        self.merge_fanin = merge_fanin
        self.hash_fn = hash_fn
        self._tmp = Path(tempfile.mkdtemp(prefix="idindex-runs-", dir=tmp_dir or self.dir))
        self._bytes = NpyWriter(self.dir / "ids_bytes.npy", np.uint8)
        self._offsets = NpyWriter(self.dir / "ids_offsets.npy", np.int64)
        self._offsets.append(np.zeros(1, np.int64))
        self._total_bytes = 0
        self.rows = 0
        self._buf_hash: list[np.ndarray] = []
        self._buf_rows = 0
        self._runs: list[Path] = []

    def add(self, ids: Sequence[str] | np.ndarray) -> None:
        """Append the next block of ids (rows self.rows .. self.rows + len(ids))."""
        mat, lens, exact = encode_ids(ids)
        if not exact.all():
            bad = int(np.flatnonzero(~exact)[0])
            raise ValueError(f"id at row {self.rows + bad} ends with a NUL character, which is not supported")
        n = len(lens)
        if n == 0:
            return
        width = mat.shape[1]
        self._bytes.append(mat[np.arange(width) < lens[:, None]])
        self._offsets.append(self._total_bytes + np.cumsum(lens))
        self._total_bytes += int(lens.sum())
        hashes = np.asarray(self.hash_fn(mat, lens), dtype=np.uint64)
        if hashes.shape != (n,):
            raise ValueError(f"hash function returned shape {hashes.shape} for {n} ids")
        # Split so each run holds at most run_rows entries.
        pos = 0
        while pos < n:
            take = min(n - pos, self.run_rows - self._buf_rows)
            self._buf_hash.append(hashes[pos : pos + take])
            self._buf_rows += take
            pos += take
            if self._buf_rows == self.run_rows:
                self._spill()
        self.rows += n

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
        """Merge the runs into the final sorted index, check collisions, remove temporaries."""
        try:
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
            return IndexStats(self.rows, self._total_bytes, collisions, duplicates)
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def abort(self) -> None:
        self._bytes.abort()
        self._offsets.abort()
        shutil.rmtree(self._tmp, ignore_errors=True)

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
        for r in runs:
            if r.parent == self._tmp:
                Path(f"{r}.hash.npy").unlink()
                Path(f"{r}.row.npy").unlink()
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

    def lookup(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Rows of the given ids, int64 (n,); -1 where an id is absent. A repeated id gives its first row."""
        mat, lens, exact = encode_ids(ids)
        n = len(lens)
        out = np.full(n, -1, np.int64)
        if n == 0 or len(self.hashes) == 0:
            return out
        qh = np.asarray(self.hash_fn(mat, lens), dtype=np.uint64)
        pos = np.searchsorted(self.hashes, qh, side="left")
        cand = np.minimum(pos, len(self.hashes) - 1)
        hit = (pos < len(self.hashes)) & (np.asarray(self.hashes[cand]) == qh) & exact
        row = np.asarray(self.rows[cand])
        match = hit & self._bytes_equal(row, mat, lens)
        out[match] = row[match]
        # Rare: the first entry with this hash is a different id; walk the rest of the equal run.
        for i in np.flatnonzero(hit & ~match):
            want = bytes(mat[i, : lens[i]])
            j = int(pos[i]) + 1
            while j < len(self.hashes) and self.hashes[j] == qh[i]:
                r = int(self.rows[j])
                if self.id_bytes_of(r) == want:
                    out[i] = r
                    break
                j += 1
        return out

    def _bytes_equal(self, rows: np.ndarray, mat: np.ndarray, lens: np.ndarray) -> np.ndarray:
        starts = np.asarray(self.offsets[rows])
        stored_lens = np.asarray(self.offsets[rows + 1]) - starts
        width = mat.shape[1]
        cols = np.arange(width)
        idx = np.minimum(starts[:, None] + cols, max(0, len(self.id_bytes) - 1))
        stored = np.asarray(self.id_bytes[idx]) if len(self.id_bytes) else np.zeros_like(mat)
        in_id = cols < lens[:, None]
        same = ((stored == mat) | ~in_id).all(axis=1)
        return same & (stored_lens == lens)
