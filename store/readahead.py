"""Read-ahead: produce blocks on background threads so reading and decoding overlap the caller's work."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
K = TypeVar("K")


def read_ahead(load: Callable[[K], T], keys: Iterable[K], *, prefetch: int = 2, workers: int = 2) -> Iterator[T]:
    """Yield `load(k)` for each key in order, keeping up to `prefetch` loads in flight.

    Memory is bounded by `prefetch + 1` results. With `prefetch=0` everything runs inline.
    """
    if prefetch <= 0:
        for key in keys:
            yield load(key)
        return
    pending: deque[Future[T]] = deque()
    it = iter(keys)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="revision-read") as pool:
        try:
            for key in it:
                pending.append(pool.submit(load, key))
                if len(pending) > prefetch:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()
