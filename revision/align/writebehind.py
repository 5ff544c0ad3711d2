"""Write-behind: a store's appends and commits run in order on one background thread.

Pass 3 is bound by writing the aligned rows (float32: twice the bytes it reads). File writes release
the GIL, so handing them to a thread lets the next block be read and computed meanwhile. Order is
kept (one worker), and at most `depth` writes wait, so memory stays a few blocks.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class WriteBehind:
    """Submit store calls; `drain` waits for all of them and re-raises the first failure.

    The first call that fails stops the queue: every call after it is skipped (a commit queued behind
    a failed append must never run, or it would publish rows that were not written), and the next
    `submit` or `drain` raises that failure.
    """

    def __init__(self, depth: int = 2) -> None:
        self.depth = depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="revision-write")
        self._pending: deque[Future[Any]] = deque()
        self._failure: BaseException | None = None

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._failure is not None:  # one worker: calls run in order, so this is set before later ones run
            raise _Skipped() from self._failure
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            self._failure = exc
            raise

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._raise_failure()
        self._pending.append(self._pool.submit(self._run, fn, args, kwargs))
        while len(self._pending) > self.depth:
            self._wait(self._pending.popleft())

    def _wait(self, fut: Future[Any]) -> None:
        with contextlib.suppress(_Skipped):
            fut.result()
        self._raise_failure()

    def drain(self) -> None:
        while self._pending:
            self._wait(self._pending.popleft())
        self._raise_failure()

    def close(self) -> None:
        """Stop: queued calls that have not started are dropped, a running one is waited for."""
        for fut in self._pending:
            fut.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)


class _Skipped(Exception):
    """A queued call not run because an earlier one failed."""
