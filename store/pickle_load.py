"""Loading a pickle file with the restricted unpickler of `pickle_safe`, after a trial in a child.

The trial is what shuts out crashes and hangs of the C unpickler itself (see `pickle_safe`): the
file is first loaded by a forked child under a time limit, and the process loads it only once that
child has finished cleanly; size, inode and change time are compared before and after, so the bytes
cannot change in between.
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import select
import signal
import time
from typing import IO, Any

from .errors import UserError
from .pickle_safe import Refused, RestrictedUnpickler, _resolve, _short

#: Seconds the trial load may take: a base plus a rate far below any real disk or CPU.
TIME_LIMIT_BASE_S = 60.0
TIME_LIMIT_S_PER_MB = 0.1
_TIME_LIMIT_ENV = "REVISION_PICKLE_TIME_LIMIT"
_MAX_MESSAGE = 4096  # PIPE_BUF: the child's one write arrives whole


def _load_open_file(fh: IO[bytes]) -> Any:
    return _resolve(RestrictedUnpickler(fh).load())


def _errors_as_message(path: os.PathLike[str] | str, exc: BaseException) -> str:
    if isinstance(exc, Refused):
        return f"{path}: refused to load: {exc}"
    if isinstance(exc, MemoryError):
        return f"{path}: corrupt pickle (asks for more memory than there is)"
    if isinstance(exc, RecursionError):
        return f"{path}: refused to load: values nested too deeply"
    return f"{path}: truncated or unreadable pickle ({type(exc).__name__}: {_short.repr(str(exc))[1:-1]})"


_LOAD_ERRORS = (
    OSError,
    EOFError,
    pickle.UnpicklingError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    LookupError,
    OverflowError,
    MemoryError,
    RecursionError,
    UnicodeError,
)


def default_time_limit(size: int) -> float:
    """Seconds the trial load of a `size`-byte pickle may take (REVISION_PICKLE_TIME_LIMIT overrides)."""
    env = os.environ.get(_TIME_LIMIT_ENV)
    if env:
        try:
            return float(env)
        except ValueError:
            raise UserError(f"{_TIME_LIMIT_ENV}={env!r} is not a number of seconds") from None
    return TIME_LIMIT_BASE_S + TIME_LIMIT_S_PER_MB * size / 1e6


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


#: Files (by identity) whose trial load passed in this process: the passes of align-pkl read each
#: pickle several times, and a file that is provably unchanged needs no second trial.
_TRIED: set[tuple[int, ...]] = set()
_TRIED_MAX = 1 << 16


def load_pickle_restricted(path: str | os.PathLike[str], *, time_limit: float | None = None) -> Any:
    """Unpickle `path` with the restricted unpickler, after a trial load in a child process.

    Any failure, refusal, crash or time-out becomes one UserError naming the file.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        before = _identity(os.fstat(fd))
        if hasattr(os, "fork") and before not in _TRIED:
            limit = default_time_limit(before[2]) if time_limit is None else time_limit
            _trial_load(path, fd, limit)
        os.lseek(fd, 0, os.SEEK_SET)
        with os.fdopen(os.dup(fd), "rb") as fh:
            try:
                obj = _load_open_file(fh)
            except _LOAD_ERRORS as exc:
                raise UserError(_errors_as_message(path, exc)) from None
        if _identity(os.fstat(fd)) != before:
            raise UserError(f"{path}: the file changed while it was being read; try again")
        if len(_TRIED) < _TRIED_MAX:
            _TRIED.add(before)
        return obj
    finally:
        os.close(fd)


def _trial_load(path: str | os.PathLike[str], fd: int, limit: float) -> None:
    """Load the open file `fd` in a forked child; raise the UserError its outcome calls for."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: load, report a refusal, never return into the caller's code
        try:
            os.close(r)
            # A crash, or CPython's own complaints about a corrupt stream, are outcomes to report
            # through the pipe as one line, not noise on the user's terminal.
            faulthandler.disable()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            message = ""
            try:
                os.lseek(fd, 0, os.SEEK_SET)
                with os.fdopen(os.dup(fd), "rb") as fh:
                    _load_open_file(fh)
            except BaseException as exc:  # noqa: BLE001 - every outcome is reported, none escapes
                message = _errors_as_message(path, exc)
            if message:
                os.write(w, message.encode("utf-8", "replace")[:_MAX_MESSAGE])
        finally:
            os._exit(0)  # no atexit handlers, no flushing of the parent's buffers, no freeing
    os.close(w)
    chunks: list[bytes] = []
    deadline = time.monotonic() + limit
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise UserError(
                    f"{path}: refused to load: unpickling took longer than {limit:g} s (a corrupt or hostile "
                    f"pickle; {_TIME_LIMIT_ENV} sets the limit)"
                )
            ready, _, _ = select.select([r], [], [], left)
            if ready:
                data = os.read(r, _MAX_MESSAGE)
                if not data:
                    break
                chunks.append(data)
    except BaseException:
        os.kill(pid, signal.SIGKILL)  # a hung or interrupted trial must not outlive its caller
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        why = "it was killed, perhaps out of memory" if sig == signal.SIGKILL else "it crashed"
        raise UserError(
            f"{path}: refused to load: a trial load of this pickle in a child process failed ({why}, "
            f"signal {sig}); the file is corrupt or hostile"
        )
    if chunks:
        raise UserError(b"".join(chunks).decode("utf-8", "replace"))
