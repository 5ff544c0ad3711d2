"""Id hashing and UTF-8 packing for the id index: vectorised over blocks of ids.

Ids are encoded exactly as UTF-8 (NUL characters included), packed into a zero-padded byte matrix
and hashed eight bytes at a time with numpy, so a block of ids costs a few array operations instead
of a Python call per id. The hash is not cryptographic: the index resolves equal hashes by comparing
the ids themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

HashFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(bytes (n, W) uint8 zero-padded, lengths (n,) int64) → (n,) uint64."""

DEFAULT_HASH = "mulxs64-words-v1"
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SEED = np.uint64(0x5EED1D50FF5E7)
_S32 = np.uint64(32)
_S33 = np.uint64(33)


def _fmix64(h: np.ndarray) -> np.ndarray:
    # MurmurHash3's 64-bit finaliser: a bijection with full avalanche; uint64 products wrap.
    h = h ^ (h >> _S33)
    h = h * _M1
    h = h ^ (h >> _S33)
    h = h * _M2
    return h ^ (h >> _S33)


def hash_id_bytes(mat: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """The default id hash: (n, W) uint8 zero-padded UTF-8 bytes + (n,) byte lengths → (n,) uint64.

    Eight bytes at a time: xor, multiply, xor-shift; then a full avalanche at the end. Depends only
    on each id's own bytes and length (not on W), so blocks and queries padded to different widths
    hash alike. Not cryptographic: equal hashes are resolved by comparing the ids themselves.
    """
    n, width = mat.shape
    words_n = -(-width // 8)
    if words_n * 8 != width:
        wide = np.zeros((n, words_n * 8), np.uint8)
        wide[:, :width] = mat
        mat = wide
    words = np.ascontiguousarray(mat).view(np.dtype("<u8")).reshape(n, words_n)
    lens64 = lens.astype(np.uint64)
    # Words every id of the block has in full need no mask (the common case: ids of one pattern).
    all_have = int(lens.min()) // 8 if n else 0
    with np.errstate(over="ignore"):
        h = (lens64 * _GOLDEN) ^ _SEED
        for k in range(words_n):
            mixed = (h ^ words[:, k]) * _GOLDEN
            mixed ^= mixed >> _S32
            # Only words that hold bytes of this id count; padding words beyond its length do not.
            h = mixed if k < all_have else np.where(lens64 > np.uint64(8 * k), mixed, h)
        return _fmix64(h)


@dataclass(frozen=True)
class EncodedIds:
    """A block of ids as UTF-8: the concatenated bytes, each id's start and byte length."""

    flat: np.ndarray
    """uint8 (total,): the ids' bytes, concatenated."""
    starts: np.ndarray
    """int64 (n,)."""
    lens: np.ndarray
    """int64 (n,)."""

    def padded(self) -> np.ndarray:
        """(n, W) uint8: id i's bytes in row i, zero-padded to the longest id rounded up to 8 bytes."""
        width = max(8, -(-int(self.lens.max()) // 8) * 8) if self.lens.size else 8
        cols = np.arange(width)
        if self.flat.size == 0:
            return np.zeros((self.lens.size, width), np.uint8)
        mat = self.flat[np.minimum(self.starts[:, None] + cols, self.flat.size - 1)]
        mat[cols >= self.lens[:, None]] = 0
        return mat

    def slices(self, max_bytes: int = 1 << 25) -> Iterator[tuple[EncodedIds, int, int]]:
        """(part, lo, hi): consecutive parts whose padded matrix stays under about `max_bytes`."""
        n = self.lens.size
        lo = 0
        while lo < n:
            count = min(n - lo, 1 << 16)
            while count > 1 and count * max(1, int(self.lens[lo : lo + count].max())) > max_bytes:
                count //= 2
            yield EncodedIds(self.flat, self.starts[lo : lo + count], self.lens[lo : lo + count]), lo, lo + count
            lo += count


def encode_ids(ids: Sequence[str] | np.ndarray) -> EncodedIds:
    """Encode ids as UTF-8 (exactly: embedded or trailing NUL characters are kept)."""
    try:
        parts = [s.encode("utf-8") for s in ids]
    except AttributeError:
        parts = [(s if isinstance(s, str) else str(s)).encode("utf-8") for s in ids]
    lens = np.fromiter(map(len, parts), np.int64, len(parts))
    starts = np.zeros(len(parts), np.int64)
    if len(parts) > 1:
        np.cumsum(lens[:-1], out=starts[1:])
    return EncodedIds(np.frombuffer(b"".join(parts), np.uint8), starts, lens)


def hash_encoded(enc: EncodedIds, hash_fn: HashFn = hash_id_bytes, *, max_bytes: int = 1 << 25) -> np.ndarray:
    """Hashes of encoded ids, in slices whose padded byte matrix stays under about `max_bytes`
    (one very long id shrinks the slices around it instead of blowing up the whole block)."""
    out = np.empty(enc.lens.size, np.uint64)
    for part, lo, hi in enc.slices(max_bytes):
        got = np.asarray(hash_fn(part.padded(), part.lens), dtype=np.uint64)
        if got.shape != (hi - lo,):
            raise ValueError(f"hash function returned shape {got.shape} for {hi - lo} ids")
        out[lo:hi] = got
    return out


def hash_ids(ids: Sequence[str] | np.ndarray, hash_fn: HashFn = hash_id_bytes) -> np.ndarray:
    return hash_encoded(encode_ids(ids), hash_fn)
