"""One writer at a time: an exclusive, non-blocking flock on the directory being written.

Every writer of a store (or of a staging area) takes the lock before it touches anything: the repair
a writer does on open (dropping a crashed writer's uncommitted shards) would otherwise destroy the
work of a writer that is still running. The lock is a `flock` on the directory itself, so it needs
no lock file (nothing extra in the store, nothing that could be unlinked while held, nothing whose
contents differ between two runs that should leave identical bytes), and the kernel drops it when
the holder dies, so a SIGKILLed writer never leaves a stale lock. The holder is named from
/proc/locks (its pid) and /proc/<pid>/cmdline (its command).

A directory is only ever removed by its lock holder (a store it created and gives up). After taking
the lock we check that the path still names the directory we locked, and retry if not, so two
writers can never hold locks on two different directories of one name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError

if TYPE_CHECKING:
    from .objio import RemotePath


class LockedError(UserError):
    """Another process holds the writer lock; the message names it."""


def _holder(st: os.stat_result) -> str:
    """'pid N: command' of the process holding a flock on the inode `st`, as far as /proc tells."""
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return "another process"
    for line in lines:
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue
        if fields[5] == key:
            pid = fields[4]
            try:
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                cmd = " ".join(a.decode("utf-8", "replace") for a in raw.split(b"\0") if a)
            except OSError:
                cmd = "?"
            if len(cmd) > 200:
                cmd = cmd[:197] + "..."
            return f"pid {pid}: {cmd}"
    return "another process"


class WriterLock:
    """An exclusive lock on the directory `path`, held until `release` or process exit."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: str | os.PathLike[str], what: str) -> WriterLock:
        """Lock the existing directory `path` or raise LockedError naming `what` and the holder. Never waits."""
        p = Path(path)
        for _ in range(100):
            fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                st = os.fstat(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise LockedError(
                    f"{what}: another writer is using it ({_holder(st)}); wait for it to finish or stop it, then re-run"
                ) from None
            try:
                same = os.stat(p).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return cls(p, fd)
            os.close(fd)  # the holder removed the directory as we locked it: look again
            time.sleep(0.01)
            if not p.exists():
                raise FileNotFoundError(errno.ENOENT, "removed while locking", str(p))
        raise LockedError(f"{what}: the directory keeps being replaced under us")

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.close(fd)  # closing the last descriptor of the open directory drops the flock

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def probe(path: str | os.PathLike[str] | RemotePath, what: str) -> None:
    """Raise LockedError now if the directory `path` is locked (an early check before long work)."""
    from .objio import RemotePath

    if isinstance(path, RemotePath):  # object storage: the lock object (taken and given back at once)
        from .objlock import ObjectLock

        ObjectLock.acquire(path, what).release()
        return
    p = Path(path)
    if p.is_dir():
        WriterLock.acquire(p, what).release()
