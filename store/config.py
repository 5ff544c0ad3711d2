"""Store configuration: dtypes, chunk/shard geometry and codecs, validated once and saved with the data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

FORMAT_VERSION = 1

#: Storage dtype name → (numpy dtype used on disk, Zarr v3 data_type). numpy has no bfloat16, so bf16
#: vectors are stored bit-for-bit as uint16 and the group attributes say "bfloat16".
DTYPES: dict[str, tuple[np.dtype[Any], str]] = {
    "float16": (np.dtype("<f2"), "float16"),
    "bfloat16": (np.dtype("<u2"), "uint16"),
    "float32": (np.dtype("<f4"), "float32"),
}
DTYPE_ALIASES = {"fp16": "float16", "f16": "float16", "bf16": "bfloat16", "fp32": "float32", "f32": "float32"}

CODECS = ("none", "blosc-lz4", "zstd")
MODALITIES = ("text", "image")

#: Metadata column kinds and their on-disk numpy dtype (None: variable-length UTF-8 strings).
META_KINDS: dict[str, np.dtype[Any] | None] = {
    "str": None,
    "json": None,
    "int64": np.dtype("<i8"),
    "float64": np.dtype("<f8"),
    "bool": np.dtype("bool"),
}

MIN_CHUNK_BYTES = 1 << 20
TARGET_CHUNK_BYTES = 4 << 20
TARGET_SHARD_BYTES = 64 << 20
MAX_CHUNKS_PER_SHARD = 1024


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the CLI flag."""


def canonical_dtype(name: str) -> str:
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise ConfigError(f"--dtype: {name!r} is not one of {', '.join(DTYPES)}")
    return name


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def auto_chunk_rows(dim: int, itemsize: int) -> int:
    """Rows per chunk: a power of two with the chunk ≥ 1 MiB and near 4 MiB (whole rows only)."""
    row_bytes = dim * itemsize
    rows = _pow2_at_least(max(1, TARGET_CHUNK_BYTES // row_bytes))
    while rows * row_bytes < MIN_CHUNK_BYTES:
        rows *= 2
    return rows


@dataclass(frozen=True, kw_only=True)
class StoreConfig:
    """How a feature store lays out its vectors. Saved in the store's attributes."""

    modality: str
    """Which encoder tower produced the rows: "text" or "image" (--modality)."""
    dim: int
    """Vector dimension D (> 0)."""
    dtype: str = "float16"
    """Storage dtype of the vectors: float16 (default: halves the bytes; embeddings hardly compress),
    bfloat16 or float32 (--dtype)."""
    chunk_rows: int | None = None
    """Rows per chunk (the unit of I/O and decoding); None → a power of two giving ≥ 1 MiB chunks."""
    chunks_per_shard: int | None = None
    """Chunks per shard file; None → shards of about 64 MiB, so 10⁹ rows stay tens of thousands of files."""
    codec: str = "none"
    """Chunk compressor: none (default, measured fastest: embeddings compress only 1.05–1.2×),
    blosc-lz4 or zstd (--codec)."""
    normalized: bool = False
    """Whether every row is L2-normalised."""
    encoder: str | None = None
    """Free text naming the encoder (and its revision) that produced the rows."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Where the rows came from (source files, command), JSON-serialisable."""

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ConfigError(f"--modality: {self.modality!r} is not one of {', '.join(MODALITIES)}")
        if not isinstance(self.dim, int) or self.dim <= 0:
            raise ConfigError(f"dim must be a positive integer, got {self.dim!r}")
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        if self.codec not in CODECS:
            raise ConfigError(f"--codec: {self.codec!r} is not one of {', '.join(CODECS)}")
        if self.chunk_rows is not None and self.chunk_rows <= 0:
            raise ConfigError(f"--chunk-rows must be positive, got {self.chunk_rows}")
        if self.chunks_per_shard is not None and self.chunks_per_shard <= 0:
            raise ConfigError(f"--chunks-per-shard must be positive, got {self.chunks_per_shard}")

    @property
    def np_dtype(self) -> np.dtype[Any]:
        return DTYPES[self.dtype][0]

    def resolved(self) -> StoreConfig:
        """A copy with chunk and shard geometry filled in."""
        chunk = self.chunk_rows or auto_chunk_rows(self.dim, self.np_dtype.itemsize)
        cps = self.chunks_per_shard
        if cps is None:
            cps = max(1, TARGET_SHARD_BYTES // (chunk * self.dim * self.np_dtype.itemsize))
            cps = min(cps, MAX_CHUNKS_PER_SHARD)  # tiny chunks would otherwise give a huge shard index
        return StoreConfig(**{**asdict(self), "chunk_rows": chunk, "chunks_per_shard": cps})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
