"""Atomic, durable file replacement: a reader sees the old file or the new one, never a torn write.

Durability (the default) means a replacement survives a power cut as well as a SIGKILL: the new
file's data is fsynced before the rename (otherwise a crash can leave the new name pointing at an
empty or partial file, which is how a rename over a shard holding committed rows could lose them),
then the directory is fsynced so the rename itself is on disk; directories this call creates are
fsynced into their parents. `REVISION_NO_FSYNC=1` (or `durable=False`) turns the fsyncs off for
scratch data: then only SIGKILL safety remains.

A failed write (EIO, disk full, an interrupt) removes its temporary file and raises `WriteError`
naming the file, so a full disk is not left fuller and nothing half-written is ever renamed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from . import faults
from .errors import UserError
from .objio import RemotePath

_NO_FSYNC_ENV = "REVISION_NO_FSYNC"


class WriteError(UserError):
    """Writing a file failed (I/O error, disk full); the message names the file. Nothing was committed."""


class DiskFullError(WriteError):
    """No space left on the device: free some and re-run; the job resumes from its last commit."""


def durable_default() -> bool:
    """Whether commits fsync unless told otherwise (on, unless REVISION_NO_FSYNC is set to 1/true/yes)."""
    return os.environ.get(_NO_FSYNC_ENV, "").strip().lower() not in ("1", "true", "yes")


def resolve_durable(durable: bool | None) -> bool:
    return durable_default() if durable is None else durable


def write_error(path: Path, exc: OSError) -> WriteError:
    """The user-facing error for a failed write of `path`."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"{path}: disk full while writing (no space left on the device); nothing past the last commit "
            "was kept: free some space and re-run to resume"
        )
    reason = exc.strerror or str(exc)
    return WriteError(f"{path}: write failed ({reason}); nothing past the last commit was kept: re-run to resume")


def fsync_dir(path: Path) -> None:
    faults.point("fsync", path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path, *, durable: bool | None = None) -> None:
    """`mkdir -p path`; with durability, each directory created is fsynced into its parent."""
    if path.is_dir():
        return
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(exist_ok=True)
            if resolve_durable(durable):
                fsync_dir(d.parent)
        except OSError as exc:
            raise write_error(d, exc) from None


@contextlib.contextmanager
def atomic_file(path: Path, *, durable: bool | None = None) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces `path` atomically when the block ends cleanly.

    The data goes to a temporary file beside `path`; on a clean exit it is flushed, fsynced (with
    durability), renamed over `path` and the directory fsynced. On any failure the temporary file is
    removed and `path` is untouched; OSErrors become WriteError (DiskFullError for ENOSPC).
    """
    sync = resolve_durable(durable)
    make_dirs(path.parent, durable=sync)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    renamed = False
    try:
        with open(tmp, "wb") as fh:
            faults.point("open", tmp)
            yield fh
            fh.flush()
            if sync:
                faults.point("fsync", tmp)
                os.fsync(fh.fileno())
        faults.point("rename", path)
        os.replace(tmp, path)
        renamed = True
        if sync:
            fsync_dir(path.parent)
    except BaseException as exc:
        if not renamed:
            _unlink_quietly(tmp)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise


def atomic_write_bytes(path: Path | RemotePath, data: bytes | Iterable[bytes], *, durable: bool | None = None) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path` (see `atomic_file`).

    A SIGKILL at any moment leaves `path` as it was or fully replaced; with `durable` (the default)
    so does a power cut.
    """
    if isinstance(path, RemotePath):  # object storage: one PUT is atomic, and durable once it returns
        path.put(data)
        return
    parts = [data] if isinstance(data, bytes | bytearray | memoryview) else data
    with atomic_file(path, durable=durable) as fh:
        for part in parts:
            faults.point("write", path)
            fh.write(part)


def replace_dir(src: Path, dest: Path, *, durable: bool | None = None) -> None:
    """Rename the finished directory `src` to `dest`, replacing an old `dest` only now that `src` is complete.

    The old directory is moved aside, the new one renamed in, the parent fsynced (with durability),
    then the old one removed. Raises the OSError of a failed rename (callers name the file).
    """
    faults.point("rename", dest)
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    had_old = dest.exists()
    if had_old:
        os.replace(dest, old)
    os.replace(src, dest)
    if resolve_durable(durable):
        fsync_dir(dest.parent)
    if had_old:
        shutil.rmtree(old, ignore_errors=True)


def _unlink_quietly(p: Path) -> None:
    with contextlib.suppress(OSError):
        p.unlink(missing_ok=True)
