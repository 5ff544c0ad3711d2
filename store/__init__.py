"""Feature stores on Zarr v3: chunked, sharded, appendable, crash-safe; import/export formats.

The store knows nothing of alignment; see docs/internals.md for the contract.
"""

from __future__ import annotations

from .config import CODECS, DTYPES, ConfigError, StoreConfig, canonical_dtype
from .featurestore import FeatureStore, StoreError, to_torch
from .storeset import Readable, StoreSet, open_readable

__all__ = [
    "CODECS",
    "DTYPES",
    "ConfigError",
    "FeatureStore",
    "StoreConfig",
    "Readable",
    "StoreError",
    "StoreSet",
    "canonical_dtype",
    "open_readable",
    "to_torch",
]
