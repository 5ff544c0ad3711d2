"""Byte-offset index of a LLaVA-style annotation file (a JSON array of objects, or JSON Lines).

A training set's annotation file can hold hundreds of millions of records; `json.load` would build
~1 KB of Python objects per record in every DataLoader worker. Instead the file is memory-mapped and
scanned once, vectorised with numpy block by block, for the byte range of each top-level record
(16 bytes per record); a record is parsed only when a sample is asked for.

The scan tracks JSON strings (quotes, with backslash escapes) and bracket depth, so braces inside
captions do not confuse it. Malformed files raise DataError naming the file and byte offset.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from revision.train.errors import DataError

_BACKSLASH, _QUOTE = 0x5C, 0x22
_LBRACE, _RBRACE, _LBRACKET, _RBRACKET = 0x7B, 0x7D, 0x5B, 0x5D
_WHITESPACE = b" \t\r\n"
# A plain decoder on str skips json.loads' per-call encoding sniffing of bytes.
_decode = json.JSONDecoder().decode


def _escaped_quotes(quotes: np.ndarray, backslashes: np.ndarray, carry_run: int) -> tuple[np.ndarray, int]:
    """Which quotes are escaped (preceded by an odd run of backslashes), and the run at block end.

    quotes, backslashes: sorted positions within one block; carry_run: backslashes that ended the
    previous block (they continue a run starting at position 0).
    """
    if backslashes.size == 0:
        escaped = (quotes == 0) & (carry_run % 2 == 1)
        return escaped, 0
    breaks = np.flatnonzero(np.diff(backslashes) != 1)
    first = backslashes[np.r_[0, breaks + 1]]
    last = backslashes[np.r_[breaks, backslashes.size - 1]]
    run = last - first + 1
    if first[0] == 0:
        run[0] += carry_run
    k = np.minimum(np.searchsorted(last, quotes - 1), last.size - 1)
    escaped = (last[k] == quotes - 1) & (run[k] % 2 == 1)
    if carry_run % 2 == 1:
        escaped |= quotes == 0
    return escaped, int(run[-1])


def scan_records(buf: np.ndarray, path: str, *, block_bytes: int = 8 << 20) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) int64: the byte range [start, end) of every top-level record in `buf`.

    buf: the whole file as uint8. A file whose first non-blank byte is `[` is a JSON array of
    objects; one starting with `{` is JSON Lines (objects at depth 0).
    """
    n = buf.size
    first = 0
    while first < n and buf[first] in _WHITESPACE:
        first += 1
    if first == n:
        raise DataError(f"{path}: empty annotation file")
    if buf[first] == _LBRACKET:
        target = 1
    elif buf[first] == _LBRACE:
        target = 0
    else:
        raise DataError(f"{path}: byte {first}: expected '[' (JSON array) or '{{' (JSON Lines)")
    depth, in_string, carry_run = 0, False, 0
    opens: list[np.ndarray] = []
    closes: list[np.ndarray] = []
    for b0 in range(0, n, block_bytes):
        blk = buf[b0 : b0 + block_bytes]
        quotes = np.flatnonzero(blk == _QUOTE)
        escaped, end_run = _escaped_quotes(quotes, np.flatnonzero(blk == _BACKSLASH), carry_run)
        # A run of backslashes that fills the whole block continues the one carried in.
        carry_run = end_run if blk[-1] == _BACKSLASH else 0
        real = quotes[~escaped]
        structural = np.flatnonzero((blk == _LBRACE) | (blk == _RBRACE) | (blk == _LBRACKET) | (blk == _RBRACKET))
        outside = (np.searchsorted(real, structural) + in_string) % 2 == 0
        structural = structural[outside]
        in_string = bool((in_string + real.size) % 2)
        if structural.size == 0:
            continue
        chars = blk[structural]
        is_open = (chars == _LBRACE) | (chars == _LBRACKET)
        after = depth + np.cumsum(np.where(is_open, 1, -1))
        before = np.where(is_open, after - 1, after + 1)
        if after.min() < 0:
            at = b0 + int(structural[np.argmax(after < 0)])
            raise DataError(f"{path}: byte {at}: unbalanced closing bracket")
        bad = (chars == _LBRACKET) & (before == target) & (target == 1)
        if bad.any():
            raise DataError(f"{path}: byte {b0 + int(structural[np.argmax(bad)])}: a record is not an object")
        opens.append(structural[(chars == _LBRACE) & (before == target)] + b0)
        closes.append(structural[(chars == _RBRACE) & (after == target)] + b0 + 1)
        depth = int(after[-1])
    if depth != 0 or in_string:
        raise DataError(f"{path}: truncated or malformed JSON (unclosed {'string' if in_string else 'bracket'})")
    starts = np.concatenate(opens) if opens else np.zeros(0, np.int64)
    ends = np.concatenate(closes) if closes else np.zeros(0, np.int64)
    if starts.size != ends.size:
        raise DataError(f"{path}: malformed JSON ({starts.size} records opened, {ends.size} closed)")
    return starts.astype(np.int64), ends.astype(np.int64)


class AnnotationIndex:
    """The records of one annotation file, by position: `len`, `raw(i)`, `record(i)`."""

    def __init__(self, path: str | Path, *, block_bytes: int = 8 << 20) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: annotation file not found")
        self._mm: mmap.mmap | None = None
        self._pid = -1
        st = self.path.stat()
        self._stamp = (st.st_size, st.st_mtime_ns)
        mm = self._map()
        buf = np.zeros(0, np.uint8) if mm is None else np.frombuffer(mm, dtype=np.uint8)
        self.starts, self.ends = scan_records(buf, str(self.path), block_bytes=block_bytes)

    def _map(self) -> mmap.mmap | None:
        """This process's map of the file (None for an empty file, which cannot be mapped)."""
        if self._mm is None or self._pid != os.getpid():
            with open(self.path, "rb") as fh:
                if os.fstat(fh.fileno()).st_size == 0:
                    return None
                self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            self._pid = os.getpid()
        return self._mm

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "starts": self.starts, "ends": self.ends, "stamp": self._stamp}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self.starts, self.ends, self._stamp = state["starts"], state["ends"], state["stamp"]
        self._mm, self._pid = None, -1
        st = self.path.stat()
        if (st.st_size, st.st_mtime_ns) != tuple(self._stamp):
            raise DataError(f"{self.path}: annotation file changed since it was indexed")

    def __len__(self) -> int:
        return int(self.starts.size)

    def raw(self, i: int) -> bytes:
        """The bytes of record i."""
        mm = self._map()
        assert mm is not None  # an empty file has no records
        return mm[int(self.starts[i]) : int(self.ends[i])]

    def record(self, i: int) -> dict[str, Any]:
        """Record i, parsed."""
        try:
            rec = _decode(self.raw(i).decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{self.path}: record {i} (byte {int(self.starts[i])}): {exc}") from exc
        if type(rec) is not dict:
            raise DataError(f"{self.path}: record {i} (byte {int(self.starts[i])}) is not a JSON object")
        return rec

    def records(self, positions: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """The records at `positions`, parsed (one call per batch: no per-record Python method calls)."""
        pos = np.asarray(positions, dtype=np.int64)
        if pos.size == 0:
            return []
        mm = self._map()
        assert mm is not None
        try:
            out = [
                _decode(mm[s:e].decode("utf-8"))
                for s, e in zip(self.starts[pos].tolist(), self.ends[pos].tolist(), strict=True)
            ]
        except (json.JSONDecodeError, UnicodeDecodeError):
            out = [self.record(int(i)) for i in pos]  # raises, naming the bad record
        if not all(type(r) is dict for r in out):
            out = [self.record(int(i)) for i in pos]
        return out

    def iter_records(
        self, start: int = 0, stop: int | None = None, *, block: int = 4096
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        stop = len(self) if stop is None else stop
        for lo in range(start, stop, block):
            hi = min(stop, lo + block)
            yield from zip(range(lo, hi), self.records(np.arange(lo, hi)), strict=True)
