"""Fast torch building blocks for the CPU path: cache-sized row tiles, in-place unit rows in fp32.

A straightforward torch version of each op sweeps the whole chunk through memory once per
elementary operation. The CPU paths here instead walk the chunk in tiles of a few hundred KiB,
convert each tile to float32 once into a reused buffer, and do every step of the op on it while
it sits in the L2 cache. Per-row results depend only on the row (never on the tile or chunk
it travels in): each step is elementwise or a reduction along the row.

Parallelism: a chunk is cut into one contiguous part per thread (torch.get_num_threads() of the
caller), each part runs on a pool thread whose torch ops are single-threaded. Letting every
small tile op fork and join the intra-op pool instead costs 3-30x on a busy machine.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from revision.kernels.unit_rule import unit_rows_ref

# fp32 bytes per tile: 2 MiB measured best among 256 KiB … 4 MiB on a 1 MiB-L2 core (fewer torch
# calls per byte outweigh the spill to L3).
TILE_BYTES = 2 * 1024 * 1024
# Rows whose norm lies in this range take the fast path x * (1/||x||): no overflow, no precision
# lost to subnormals, and the norm is well above the 1e-10 floor. Others (zero, tiny, huge or
# non-finite rows) take the reference rule, row by row.
_NORM_LOW = 1e-9
_NORM_HIGH = 1e18


def tile_rows(dim: int, tile_bytes: int | None = None) -> int:
    tile_bytes = tile_bytes or TILE_BYTES
    return max(1, tile_bytes // (4 * max(dim, 1)))


def tiles(n: int, dim: int, tile_bytes: int | None = None, *, first: int = 0) -> Iterator[tuple[int, int]]:
    """(start, stop) row ranges covering first … n in cache-sized steps."""
    step = tile_rows(dim, tile_bytes)
    for s in range(first, n, step):
        yield s, min(n, s + step)


def inverse_norms_(x: torch.Tensor) -> torch.Tensor:
    """x: (t, D) fp32 (or f64) contiguous, edited in place on exceptional rows → (t,) row factors.

    Returns r such that `x * r[:, None]` is the rule's unit rows. Rows outside the fast range
    are replaced in `x` by their exact unit rows (from the float64 rule) and get r = 1.
    """
    norms = torch.linalg.vector_norm(x, dim=1)
    lo, hi = torch.aminmax(norms)
    # One min/max decides for the whole tile (NaN fails both tests); the row test only on failure.
    if not (float(lo) >= _NORM_LOW and float(hi) <= _NORM_HIGH):
        bad = torch.nonzero(~((norms >= _NORM_LOW) & (norms <= _NORM_HIGH))).flatten()
        x[bad] = unit_rows_ref(x[bad]).to(x.dtype)
        norms[bad] = 1.0
    return norms.reciprocal_()


def unit_rows_(x: torch.Tensor) -> torch.Tensor:
    """x: (t, D) fp32 contiguous → x, scaled in place to unit rows by the rule."""
    r = inverse_norms_(x)
    return x.mul_(r[:, None])


class TileBuffers:
    """Reused fp32/fp64 scratch tiles for one op call (allocated once, not per tile)."""

    def __init__(self, dim: int, *, rows: int | None = None, f64: bool = False, second: bool = False) -> None:
        self.rows = rows or tile_rows(dim)
        # Zeroed once: rows past a short last tile stay finite when a whole-buffer GEMM reads them.
        self.f32 = torch.zeros(self.rows, dim, dtype=torch.float32)
        self.f64 = torch.empty(self.rows, dim, dtype=torch.float64) if f64 else None
        self.second = torch.empty(self.rows, dim, dtype=torch.float64) if second else None

    def load(self, src: torch.Tensor) -> torch.Tensor:
        """src: (t ≤ rows, D) any float dtype → fp32 view of the scratch tile holding it."""
        t = src.shape[0]
        buf = self.f32[:t]
        buf.copy_(src)
        return buf


T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _forget_pool_after_fork() -> None:
    # A forked child (e.g. a DataLoader worker) inherits the pool object but none of its
    # threads: submitting to it would wait forever. The child builds its own on first use.
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _single_threaded_worker(barrier: threading.Barrier) -> None:
    torch.set_num_threads(1)  # this thread's OpenMP/MKL setting; the caller's is restored below
    barrier.wait()


def _tile_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            workers = max(1, os.cpu_count() or 1)
            saved = torch.get_num_threads()
            barrier = threading.Barrier(workers + 1)
            pool = ThreadPoolExecutor(workers, thread_name_prefix="revision-tiles")
            for _ in range(workers):
                pool.submit(_single_threaded_worker, barrier)
            barrier.wait()
            # torch.set_num_threads also records a process default for threads created later.
            torch.set_num_threads(saved)
            _pool = pool
        return _pool


def map_row_parts(n: int, dim: int, work: Callable[[int, int], T]) -> list[T]:
    """work(start, stop) over contiguous parts of rows 0 … n, one per thread, results in row order.

    Parts are whole numbers of tiles, so per-row results are the same as in one sequential sweep.
    """
    if n == 0:
        return []
    step = tile_rows(dim)
    n_tiles = -(-n // step)
    # Even a single part runs on a pool thread: every tile op then runs single-threaded, so
    # results never depend on the caller's thread count (BLAS splits work by thread count).
    parts = max(1, min(torch.get_num_threads(), n_tiles))
    per = -(-n_tiles // parts) * step
    bounds = [(a, min(n, a + per)) for a in range(0, n, per)]
    pool = _tile_pool()
    futures = [pool.submit(work, a, b) for a, b in bounds]
    return [f.result() for f in futures]
