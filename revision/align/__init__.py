"""ReAlign and baseline methods: out-of-core passes over feature stores.

from revision.align import align_stores
result = align_stores("text.zarr", "image.zarr", "aligned.zarr", method="realign")
"""

from __future__ import annotations

from revision.align.config import METHOD_NAMES, AlignConfig
from revision.align.engine import AlignResult, align_stores, apply_stats, fit_stores, stats_beside
from revision.align.methods import METHODS
from revision.align.stats import AlignStats, export_trace_stats, load_stats, save_stats

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
