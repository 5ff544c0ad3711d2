"""Append-only writer for one sharded array, with memory bounded by one shard.

Rows accumulate in a chunk buffer; full chunks are encoded and kept until their shard is full, then
the shard file is written (atomically). `flush_partial` writes the open shard as it stands, which the
commit protocol does before it publishes a new row count. Nothing here decides what is committed:
the FeatureStore does, by writing the row count last.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import UserError
from .shard import ArraySpec, ShardReader


class BrokenWriterError(UserError):
    """A write failed earlier; this writer holds no consistent state. Reopen the store to resume."""


class ArrayWriter:
    def __init__(self, spec: ArraySpec, committed_rows: int, *, durable: bool | None = None) -> None:
        self.spec = spec
        self.durable = durable
        self.broken: BaseException | None = None
        self.rows = committed_rows
        self._shard = committed_rows // spec.shard_rows
        self._chunks: list[bytes] = []  # encoded full chunks of the open shard
        self._buf = self._new_buffer()
        self._fill = 0
        within = committed_rows - self._shard * spec.shard_rows
        if within:
            self._load_open_shard(within)

    def _new_buffer(self) -> np.ndarray:
        if self.spec.is_string:
            return np.empty(self.spec.chunk_rows, dtype=object)
        return np.empty((self.spec.chunk_rows, *self.spec.row_shape), dtype=self.spec.dtype)

    def _load_open_shard(self, within: int) -> None:
        """Resume: keep the committed full chunks' bytes as they are, decode the partial one."""
        reader = ShardReader(self.spec)
        try:
            full, part = divmod(within, self.spec.chunk_rows)
            first = self._shard * self.spec.chunks_per_shard
            self._chunks = [reader.chunk_bytes(first + j) for j in range(full)]
            if part:
                self._buf[:part] = reader.read_chunk(first + full)[:part]
                self._fill = part
        finally:
            reader.close()

    def _check(self) -> None:
        if self.broken is not None:
            raise BrokenWriterError(
                f"{self.spec.path}: an earlier write failed ({self.broken}); reopen the store to resume "
                "from its last commit"
            )

    def append(self, values: np.ndarray | list[Any]) -> None:
        self._check()
        try:
            self._append(values)
        except BaseException as exc:
            self.broken = exc
            raise

    def _append(self, values: np.ndarray | list[Any]) -> None:
        n = len(values)
        pos = 0
        cr = self.spec.chunk_rows
        while pos < n:
            if self._fill == 0 and n - pos >= cr:
                # A whole chunk in the input: encode it from there (one copy fewer than via the buffer).
                self._chunks.append(self.spec.encode_chunk(values[pos : pos + cr]))
                pos += cr
                self._flush_full_shard()
                continue
            take = min(cr - self._fill, n - pos)
            self._buf[self._fill : self._fill + take] = values[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == cr:
                self._chunks.append(self.spec.encode_chunk(self._buf))
                self._fill = 0
                self._flush_full_shard()
        self.rows += n

    def _flush_full_shard(self) -> None:
        if len(self._chunks) == self.spec.chunks_per_shard:
            self.spec.write_shard(self._shard, self._chunks, durable=self.durable)
            self._chunks = []
            self._shard += 1

    def flush_partial(self) -> None:
        """Write the open shard with what it holds (a no-op when it holds nothing).

        A failure here leaves the buffers as they were (the file is replaced whole or not at all), so
        the commit that called it may simply be retried, e.g. once disk space has been freed.
        """
        self._check()
        if not self._chunks and not self._fill:
            return
        chunks = list(self._chunks)
        if self._fill:
            chunks.append(self.spec.encode_chunk(self._buf[: self._fill]))
        self.spec.write_shard(self._shard, chunks, durable=self.durable)
