"""Feature stores on Zarr v3: chunked, sharded, appendable, crash-safe; import/export formats.

The store knows nothing of alignment; see docs/internals.md for the contract.
"""

from __future__ import annotations

from .config import CODECS, DTYPES, ConfigError, StoreConfig, canonical_dtype
from .featurestore import FeatureStore, StoreError, to_torch

__all__ = [
    "CODECS",
    "DTYPES",
    "ConfigError",
    "FeatureStore",
    "StoreConfig",
    "StoreError",
    "canonical_dtype",
    "to_torch",
]
