"""Training side: memory-mapped feature view, LLaVA-style dataset joined by id, sampler and loader."""

from __future__ import annotations

from .annotations import AnnotationIndex
from .dataset import FeatureCollate, FeatureDataset, JoinReport
from .errors import DataError
from .loader import LoaderConfig, make_loader
from .sampler import BlockShuffleSampler
from .transform import RealignTransform
from .view import FeatureView

__all__ = [
    "AnnotationIndex",
    "BlockShuffleSampler",
    "DataError",
    "FeatureCollate",
    "FeatureDataset",
    "FeatureView",
    "JoinReport",
    "LoaderConfig",
    "RealignTransform",
    "make_loader",
]
