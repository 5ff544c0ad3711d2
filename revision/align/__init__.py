"""ReAlign and baseline methods: out-of-core passes over feature stores.

from revision.align import align_stores
result = align_stores("text.zarr", "image.zarr", "aligned.zarr", method="realign")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from revision.align.config import METHOD_NAMES, AlignConfig

if TYPE_CHECKING:
    from revision.align.engine import AlignResult, align_stores, apply_stats, fit_stores, stats_beside
    from revision.align.methods import METHODS
    from revision.align.stats import AlignStats, export_trace_stats, load_stats, save_stats

# Loaded on first use: the CLI builds its flags from revision.align.config, and importing the
# package must not pull in torch for that (`revision align --help` would take seconds).
_LAZY = {
    "AlignResult": "engine",
    "align_stores": "engine",
    "apply_stats": "engine",
    "fit_stores": "engine",
    "stats_beside": "engine",
    "METHODS": "methods",
    "AlignStats": "stats",
    "export_trace_stats": "stats",
    "load_stats": "stats",
    "save_stats": "stats",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"revision.align.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'revision.align' has no attribute {name!r}")


__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "AlignConfig",
    "AlignResult",
    "AlignStats",
    "align_stores",
    "apply_stats",
    "export_trace_stats",
    "fit_stores",
    "load_stats",
    "save_stats",
    "stats_beside",
]
