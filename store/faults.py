"""Fault injection at the store's write calls, for the fault suite (tests/faults/).

Every file write that a writer's durability rests on passes through `point(kind, path)`: opening a
temporary file, each write into it, its fsync, the rename, a directory's fsync. With
`REVISION_FAULT` unset (always, outside the fault suite) `point` is one dictionary look-up.

`REVISION_FAULT=<action>@<n>` makes the n-th point (1-based, counted in this process) fail:
  kill     SIGKILL this process (a crash: nothing after this point happens)
  eio      raise OSError(EIO) (a failing disk)
  enospc   raise OSError(ENOSPC) (a full disk)
  sigint   send SIGINT to this process (a Ctrl-C: the main thread gets KeyboardInterrupt and the
           write in progress, on whichever thread, completes or is abandoned as the job decides)
`REVISION_FAULT=count` only counts. With `REVISION_FAULT_LOG=FILE` each point appends one line
(`<n> <kind> <path>`) to FILE, so the suite learns how many points a clean run has and where they are.
`REVISION_FAULT_MATCH=<substring>` counts only points whose path contains it.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from pathlib import Path

_ENV = "REVISION_FAULT"
_LOG_ENV = "REVISION_FAULT_LOG"
_MATCH_ENV = "REVISION_FAULT_MATCH"
ACTIONS = ("kill", "eio", "enospc", "sigint")

_lock = threading.Lock()
_count = 0


def _plan() -> tuple[str, int] | None:
    spec = os.environ.get(_ENV, "")
    if not spec:
        return None
    if spec == "count":
        return ("count", 0)
    action, _, n = spec.partition("@")
    if action not in ACTIONS or not n.isdigit():
        raise ValueError(f"{_ENV}={spec!r}: expected count or <{'|'.join(ACTIONS)}>@<n>")
    return (action, int(n))


def point(kind: str, path: Path | str) -> None:
    """A place where a write may fail; see the module docstring."""
    if _ENV not in os.environ:
        return
    plan = _plan()
    if plan is None:
        return
    match = os.environ.get(_MATCH_ENV)
    if match and match not in str(path):
        return
    global _count
    with _lock:
        _count += 1
        n = _count
    log = os.environ.get(_LOG_ENV)
    if log:
        with open(log, "a") as fh:
            fh.write(f"{n} {kind} {path}\n")
    action, target = plan
    if action == "count" or n != target:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "sigint":
        os.kill(os.getpid(), signal.SIGINT)
        return
    code = errno.EIO if action == "eio" else errno.ENOSPC
    raise OSError(code, os.strerror(code), str(path))


def reset() -> None:
    """Start counting from zero (for in-process use by tests)."""
    global _count
    with _lock:
        _count = 0
