"""Atomic file replacement: a reader sees the old file or the new one, never a torn write."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes | Iterable[bytes], *, durable: bool = False) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`.

    A SIGKILL at any moment leaves `path` as it was or fully replaced. With `durable`, the data and
    the directory entry are also fsynced, so the replacement survives a power cut.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    parts = [data] if isinstance(data, bytes | bytearray | memoryview) else data
    with open(tmp, "wb") as fh:
        for part in parts:
            fh.write(part)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)
