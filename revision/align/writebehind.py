"""Write-behind: a store's appends and commits run in order on one background thread.

Pass 3 is bound by writing the aligned rows (float32: twice the bytes it reads). File writes release
the GIL, so handing them to a thread lets the next block be read and computed meanwhile. Order is
kept (one worker), and at most `depth` writes wait, so memory stays a few blocks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class WriteBehind:
    """Submit store calls; `drain` waits for all of them and re-raises the first failure."""

    def __init__(self, depth: int = 2) -> None:
        self.depth = depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="revision-write")
        self._pending: deque[Future[Any]] = deque()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._pending.append(self._pool.submit(fn, *args, **kwargs))
        while len(self._pending) > self.depth:
            self._pending.popleft().result()

    def drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        """Stop: queued calls that have not started are dropped, a running one is waited for."""
        for fut in self._pending:
            fut.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
