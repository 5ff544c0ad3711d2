"""Training inputs: the feature view (a memmap export, or a Zarr store exported once into the run),
the id-joined dataset, and the up-front check of every record against the stage's template.

Everything a user can get wrong is found here, before the model is built or a step is taken: a
missing id, a record without (or with two) `<image>`, an empty dataset.
"""

from __future__ import annotations

import logging
from pathlib import Path

from revision.store import FeatureStore, StoreError
from revision.store.memmap import HEADER_NAME, export_memmap
from revision.train.dataset import FeatureDataset
from revision.train.errors import DataError
from revision.train.template import Template
from revision.train.view import FeatureView

_log = logging.getLogger("revision.train")
STORE_VIEW = "features.view"
"""Where a Zarr --features store is exported (raw rows, once) inside the run directory."""


def open_view(features: Path, run: Path, *, progress: bool = False) -> FeatureView:
    """A memmap view as is; a Zarr store exported to RUN/features.view first (resumable)."""
    if (features / HEADER_NAME).is_file():
        return FeatureView.open(features)
    if not (features / "zarr.json").is_file():
        raise DataError(f"--features {features}: neither a memmap view ({HEADER_NAME}) nor a Zarr store (zarr.json)")
    dest = run / STORE_VIEW
    if not (dest / HEADER_NAME).is_file():
        _log.info("exporting %s to the memmap view %s (once; pass a view to skip this)", features, dest)
        try:
            with FeatureStore.open(features) as store:
                export_memmap(store, dest, show_progress=progress)
        except StoreError as exc:
            raise DataError(f"--features {features}: {exc}") from exc
    return FeatureView.open(dest)


def check_records(dataset: FeatureDataset, template: Template, *, block: int = 4096) -> None:
    """Encode-check every sample's record (templates raise DataError naming the file and record)."""
    ann = dataset.annotations
    n = len(dataset)
    for lo in range(0, n, block):
        positions = [dataset.record_index(i) for i in range(lo, min(n, lo + block))]
        for pos, rec in zip(positions, ann.records(positions), strict=True):
            template.pieces(rec, f"{ann.path}: record {pos} (id {rec.get(dataset.id_key)!r})")


def open_dataset(data: Path, view: FeatureView, template: Template, *, on_missing: str) -> FeatureDataset:
    ds = FeatureDataset(data, view, on_missing=on_missing)
    if len(ds) == 0:
        raise DataError(f"--data {data}: empty dataset ({ds.report.summary()})")
    check_records(ds, template)
    return ds
