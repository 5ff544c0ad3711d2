"""Streaming JSON readers: the elements of a top-level array, one at a time, in bounded memory.

`dataset.json` (a top-level object of arrays) and LLaVA annotation files (a top-level array) can be
many gigabytes; `json.load` would hold all of it, and each DataLoader worker would hold a copy. These
readers keep one element (plus a read buffer) in memory, so the cost of a pass is a scan of the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from revision.errors import UserError

_WS = " \t\n\r"
_NUMBER_CHARS = frozenset("0123456789+-.eE")
_READ = 1 << 20


class _Cursor:
    """A read buffer over a text file with JSON-aware look-ahead; `pos` indexes into `buf`."""

    def __init__(self, fh: TextIO, path: Path, block_chars: int) -> None:
        self.fh = fh
        self.path = path
        self.block = block_chars
        self.buf = ""
        self.pos = 0
        self.consumed = 0  # characters dropped from the front of buf, for error positions
        self.eof = False

    def _fill(self) -> bool:
        if self.eof:
            return False
        # Drop what has been parsed so the buffer stays about one element long.
        if self.pos:
            self.consumed += self.pos
            self.buf = self.buf[self.pos :]
            self.pos = 0
        more = self.fh.read(max(self.block, len(self.buf)))
        if not more:
            self.eof = True
            return False
        self.buf += more
        return True

    def peek(self) -> str:
        """The next non-whitespace character ('' at end of file), without consuming it."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WS:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def expect(self, chars: str) -> str:
        c = self.peek()
        if c == "" or c not in chars:
            found = repr(c) if c else "end of file"
            raise UserError(
                f"{self.path}: invalid JSON at character {self.consumed + self.pos}: "
                f"expected one of {chars!r}, found {found}"
            )
        self.pos += 1
        return c

    def value(self) -> Any:
        """Decode one complete JSON value, reading more of the file until it is whole."""
        decoder = json.JSONDecoder()
        self.peek()
        while True:
            try:
                obj, end = decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                # A value cut by the buffer edge fails like a malformed one; only at EOF is it malformed.
                if self._fill():
                    continue
                raise UserError(
                    f"{self.path}: invalid JSON at character {self.consumed + exc.pos}: {exc.msg}"
                ) from None
            # A number cut by the buffer edge ("12" of "1234", "0" of "0.5") decodes without error:
            # a number is whole only if its characters stop before the buffer does.
            if isinstance(obj, int | float) and not isinstance(obj, bool):
                j = self.pos
                while j < len(self.buf) and self.buf[j] in _NUMBER_CHARS:
                    j += 1
                if j == len(self.buf) and self._fill():
                    continue
            self.pos = end
            return obj


def _iter_array(cur: _Cursor, keep: bool) -> Iterator[Any]:
    cur.expect("[")
    if cur.peek() == "]":
        cur.pos += 1
        return
    while True:
        item = cur.value()
        if keep:
            yield item
        if cur.expect(",]") == "]":
            return


def iter_top_array(path: Path, *, block_chars: int = _READ) -> Iterator[Any]:
    """Elements of a file whose top level is a JSON array (LLaVA annotation layout)."""
    with open(path, encoding="utf-8-sig") as fh:
        cur = _Cursor(fh, path, block_chars)
        yield from _iter_array(cur, keep=True)
        if cur.peek() != "":
            raise UserError(f"{path}: unexpected data after the top-level JSON array")


def iter_object_array(path: Path, key: str, *, block_chars: int = _READ) -> Iterator[Any]:
    """Elements of the array stored under `key` in a top-level JSON object (dataset.json layout).

    Other members are skipped element by element, so a huge "texts" array costs a scan, not memory,
    while "images" is read. A missing key yields nothing.
    """
    with open(path, encoding="utf-8-sig") as fh:
        cur = _Cursor(fh, path, block_chars)
        cur.expect("{")
        if cur.peek() == "}":
            return
        while True:
            name = cur.value()
            if not isinstance(name, str):
                raise UserError(f"{path}: invalid JSON: object key {name!r} is not a string")
            cur.expect(":")
            if cur.peek() == "[":
                yield from _iter_array(cur, keep=name == key)
            else:
                cur.value()
            if cur.expect(",}") == "}":
                return


def first_char(path: Path) -> str:
    """The first non-whitespace character of a file ('' if empty): tells an object from an array."""
    with open(path, encoding="utf-8-sig") as fh:
        while True:
            block = fh.read(4096)
            if not block:
                return ""
            stripped = block.lstrip(_WS + "\ufeff")
            if stripped:
                return stripped[0]
