"""Output paths checked before a command does any work, so a mistyped path never costs an input.

One rule for every command that writes: an output may not be an input, lie inside one, or hold one
(replacing a store or folder would take the input with it), and two outputs of one command may not
be the same path or nest. Paths are compared after resolving symlinks, so a link to an input is
that input. URLs (s3://bucket/key) are compared as paths under their scheme, with no filesystem
check (object storage has no directories). A file output may not be an existing directory and a
folder or store output may not be an existing file: either would fail only after the passes, with
the work lost.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePath, PurePosixPath
from typing import Literal

from revision.errors import UserError
from revision.store.objio import RemotePath, is_url, location

PathArg = str | os.PathLike[str] | None
Kind = Literal["file", "dir", "any"]


def real(path: str | os.PathLike[str]) -> Path:
    """`path` with `~`, `..` and every symlink of its existing part resolved."""
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _key(path: str | os.PathLike[str]) -> PurePath:
    """What paths are compared by: the resolved local path, or a URL's scheme and key as a pure path."""
    if is_url(path):
        url = location(path)
        assert isinstance(url, RemotePath)
        return PurePosixPath("/", f"{url.protocol}:", *url.key.split("/"))
    return real(path)


def _relation(a: PurePath, b: PurePath) -> str | None:
    """How `a` stands to `b`: "is", "lies inside", "holds", or None when they are apart."""
    if a == b:
        return "is"
    if b in a.parents:
        return "lies inside"
    if a in b.parents:
        return "holds"
    return None


def check_outputs(
    inputs: Iterable[tuple[str, PathArg]],
    outputs: Iterable[tuple[str, PathArg, Kind]],
    *,
    roots: Iterable[tuple[str, PathArg]] = (),
) -> None:
    """Raise a UserError naming the flags if an output collides with an input or another output.

    inputs: (flag, path) of everything the command reads (None entries are skipped).
    outputs: (flag, path, kind) of everything it writes; kind "file", "dir" (a folder or store
        written whole) or "any" (the caller checks what may already be there). A command that
        writes named files into a folder lists those files, so the folder may still hold its inputs.
    roots: (flag, folder) inputs that outputs may lie inside but not be or hold (e.g. an image
        folder: a store written inside it touches no image).
    """
    ins = [(flag, p, _key(p)) for flag, p in inputs if p is not None]
    outs = [(flag, p, _key(p), kind) for flag, p, kind in outputs if p is not None]
    for i, (flag, p, rp, kind) in enumerate(outs):
        for in_flag, in_p, in_rp in ins:
            rel = _relation(rp, in_rp)
            if rel is not None:
                raise UserError(f"{flag} {p}: {rel} the input {in_flag} {in_p}; write the output elsewhere")
        for root_flag, root_p in roots:
            rel = None if root_p is None else _relation(rp, _key(root_p))
            if rel in ("is", "holds"):
                raise UserError(f"{flag} {p}: {rel} the input {root_flag} {root_p}; write the output elsewhere")
        for other_flag, other_p, other_rp, _ in outs[:i]:
            rel = _relation(rp, other_rp)
            if rel is not None:
                raise UserError(f"{flag} {p}: {rel} the output {other_flag} {other_p}; give each output its own path")
        if not isinstance(rp, Path):
            continue  # a URL: nothing on the local filesystem to check
        if kind == "file" and rp.is_dir():
            raise UserError(f"{flag} {p}: is a directory; give a file path")
        if kind == "dir" and rp.exists() and not rp.is_dir():
            raise UserError(f"{flag} {p}: exists and is not a directory")
        parent = next((a for a in rp.parents if a.exists()), None)
        if parent is not None and not parent.is_dir():
            raise UserError(f"{flag} {p}: {parent} is not a directory")
