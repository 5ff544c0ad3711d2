"""What diagnose reads: feature stores (or in-memory arrays), as unit float32 rows, streamed or sampled.

A `VectorSource` is the small part of the FeatureStore contract that diagnostics need; a store
opened from disk satisfies it, and `ArraySource` lets the same code run on a NumPy matrix
(handy in notebooks, and the form the tests use for closed-form checks).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from revision import dist
from revision.errors import UserError

# The reference leaves rows shorter than this unscaled (a zero row stays zero).
_TINY_NORM = 1e-10
# Squared norms in this range are safe for x * (1/sqrt(ss)) in float32: no overflow, no subnormals.
_FAST_SS_LOW = 1e-19
_FAST_SS_HIGH = 1e36


@runtime_checkable
class VectorSource(Protocol):
    """The read side of a FeatureStore that diagnostics use."""

    @property
    def rows(self) -> int: ...

    @property
    def dim(self) -> int: ...

    @property
    def dtype(self) -> str: ...

    def block_ranges(
        self, start: int = 0, stop: int | None = None, block_rows: int | None = None
    ) -> list[tuple[int, int]]: ...

    def iter_chunks(
        self, start: int = 0, stop: int | None = None, block_rows: int | None = None, prefetch: int = 2
    ) -> Iterator[tuple[int, np.ndarray]]: ...

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray: ...

    def read_rows(self, indices: np.ndarray) -> np.ndarray: ...

    def read_ids(self, start: int = 0, stop: int | None = None) -> np.ndarray: ...

    def iter_ids(self, block_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]: ...


@dataclass
class ArraySource:
    """An in-memory matrix (n, dim) with optional string ids, read like a store."""

    vectors: np.ndarray
    ids: Sequence[str] | np.ndarray | None = None
    block: int = 4096

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2:
            raise UserError(f"array input must be 2-D (rows, dim), got shape {self.vectors.shape}")
        if self.ids is not None and len(self.ids) != len(self.vectors):
            raise UserError(f"array input has {len(self.vectors)} rows but {len(self.ids)} ids")

    @property
    def rows(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def dtype(self) -> str:
        return str(self.vectors.dtype)

    def block_ranges(
        self, start: int = 0, stop: int | None = None, block_rows: int | None = None
    ) -> list[tuple[int, int]]:
        """[lo, hi) ranges covering [start, stop), cut at multiples of the block size (as a store's
        are cut at multiples of its block), so a range starting on a cut is read the same way."""
        stop = self.rows if stop is None else stop
        step = block_rows or self.block
        cuts = [start, *range((start // step + 1) * step, stop, step), stop]
        return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]

    def iter_chunks(
        self, start: int = 0, stop: int | None = None, block_rows: int | None = None, prefetch: int = 2
    ) -> Iterator[tuple[int, np.ndarray]]:
        for lo, hi in self.block_ranges(start, stop, block_rows):
            yield lo, self.vectors[lo:hi]

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self.vectors[start:stop]

    def read_rows(self, indices: np.ndarray) -> np.ndarray:
        return self.vectors[np.asarray(indices, dtype=np.int64)]

    def read_ids(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = self.rows if stop is None else stop
        if self.ids is None:
            return np.asarray([str(i) for i in range(start, stop)], dtype=object)
        return np.asarray(self.ids[start:stop], dtype=object)

    def iter_ids(self, block_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        for lo, hi in self.block_ranges(0, None, block_rows):
            yield lo, self.read_ids(lo, hi)


def open_source(spec: str | Path | VectorSource | np.ndarray, *, flag: str) -> VectorSource:
    """A path to a FeatureStore, an already-open store, or an array → a VectorSource.

    `flag` names the CLI flag (or argument) the input came from, for error messages.
    """
    if isinstance(spec, np.ndarray):
        return ArraySource(spec)
    if isinstance(spec, str | Path):
        path = Path(spec)
        if not path.exists():
            raise UserError(f"{flag} {path}: no such store")
        from revision.store import FeatureStore

        try:
            return FeatureStore.open(path)  # type: ignore[no-any-return]
        except UserError:
            raise
        except Exception as exc:  # the store's own error types vary; name the path either way
            raise UserError(f"{flag} {path}: cannot open as a feature store ({exc})") from exc
    if isinstance(spec, VectorSource):
        return spec
    raise UserError(f"{flag}: expected a store path, an open store or an array, got {type(spec).__name__}")


def as_float32(block: np.ndarray, dtype: str) -> np.ndarray:
    """A stored block as float32; bf16 stores hand out the raw bits as uint16."""
    if dtype == "bfloat16" or (block.dtype == np.uint16 and dtype != "uint16"):
        return (block.astype(np.uint32) << 16).view(np.float32)
    return np.asarray(block, dtype=np.float32)


def unit_rows(block: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """Rows as float32 unit vectors, by the reference's rule.

    NaN/±Inf become 0; rows are divided by their max-abs first (overflow-safe); rows whose norm
    is below 1e-10 are left unscaled, so a zero row stays zero. Ordinary rows take one fast
    multiply by 1/‖x‖; only the exceptional ones go through the careful rule.
    """
    x = np.array(as_float32(block, dtype), dtype=np.float32, copy=True)
    if x.size == 0:
        return x
    ss = np.einsum("ij,ij->i", x, x)
    # NaN fails both comparisons, so rows with non-finite values land in `bad` too.
    ok = (ss >= _FAST_SS_LOW) & (ss <= _FAST_SS_HIGH)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        x *= np.where(ok, 1.0 / np.sqrt(ss), np.float32(1.0)).astype(np.float32)[:, None]
    bad = np.flatnonzero(~ok)
    if bad.size:
        x[bad] = _careful_unit_rows(x[bad])
    return x


def _careful_unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.where(np.isfinite(x), x, np.float32(0.0)).astype(np.float32, copy=False)
    peak = np.abs(x).max(axis=1, keepdims=True)
    scaled = x / np.where(peak > 0, peak, np.float32(1.0))
    scaled_norm = np.linalg.norm(scaled, axis=1, keepdims=True)
    keep = scaled_norm * peak.astype(np.float64) < _TINY_NORM  # float64: near-max floats must not overflow
    return np.where(keep, x, scaled / np.where(keep, np.float32(1.0), scaled_norm)).astype(np.float32)


def sample_indices(rows: int, n: int, seed: int) -> np.ndarray:
    """`n` distinct row indices out of `rows`, sorted, the same for the same (rows, n, seed)."""
    if n >= rows:
        return np.arange(rows, dtype=np.int64)
    rng = np.random.default_rng(seed)
    # Rejection into a set keeps memory O(n) whatever `rows` is (a permutation would be O(rows)).
    picked: set[int] = set()
    while len(picked) < n:
        draw = rng.integers(0, rows, size=2 * (n - len(picked)) + 16)
        for v in draw.tolist():
            if len(picked) == n:
                break
            picked.add(v)
    return np.sort(np.fromiter(picked, dtype=np.int64, count=n))


def read_unit_rows(src: VectorSource, indices: np.ndarray) -> np.ndarray:
    """The given rows (sorted indices) as unit float32 rows."""
    return unit_rows(src.read_rows(indices), src.dtype)


def rank_segments(src: VectorSource, block_rows: int | None, partial_bytes: int) -> list[tuple[int, int]]:
    """This rank's segments of a pass over `src` whose per-segment result takes `partial_bytes`:
    a contiguous run of the segments the store's blocks are cut into (all of them in one process)."""
    blocks = src.block_ranges(0, None, block_rows)
    return dist.share(dist.segments(blocks, dist.max_segments(partial_bytes)))


def gather_unit_rows(src: VectorSource, indices: np.ndarray, block_rows: int | None = None) -> np.ndarray | None:
    """Unit rows at sorted `indices`, read by the ranks that own them, all of them on rank 0.

    Each rank reads the indices inside its run of segments of `src` (the runs are contiguous and
    in rank order), and rank 0 joins the pieces in rank order: the rows in index order, the same
    bytes as `read_unit_rows` in one process (rows are normalised one by one). None on other ranks.
    """
    if not dist.world().distributed:
        return read_unit_rows(src, indices)
    lo, hi = dist.span(rank_segments(src, block_rows, 8 * src.dim))
    a, b = np.searchsorted(indices, [lo, hi])
    pieces = dist.gather_to_root(read_unit_rows(src, indices[a:b]))
    return None if pieces is None else np.concatenate(pieces)


def describe(src: VectorSource, name: str) -> dict[str, Any]:
    """A few facts about an input, for the report."""
    return {"name": name, "rows": src.rows, "dim": src.dim, "dtype": src.dtype}
