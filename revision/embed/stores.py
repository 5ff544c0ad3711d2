"""The stores `revision embed` writes: where each goes, and resuming one only with the same settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from revision.embed.config import EmbedConfig
from revision.embed.dist import DistInfo
from revision.errors import UserError
from revision.store import FeatureStore, StoreConfig

#: The metadata column each modality keeps: the image path or the caption the row came from.
META_COLUMN = {"image": "image_path", "text": "caption"}


def open_store(
    path: Path, modality: str, dim: int, cfg: EmbedConfig, identity: dict[str, Any], encoder_name: str
) -> tuple[FeatureStore, dict[str, Any]]:
    """The store of one modality, created or reopened to resume, and its progress record."""
    fresh = {"next_item": identity["item_start"], "failures_bytes": 0, "failed": 0, "done": False}
    if path.exists():
        store = FeatureStore.open(path, mode="a")
        try:
            check_identity(path, store.attrs.get("embed"), identity)
        except UserError:
            store.close()
            raise
        return store, store.progress or fresh
    store_cfg = StoreConfig(
        modality=modality,
        dim=dim,
        dtype=cfg.store_dtype,
        codec=cfg.codec,
        normalized=True,
        encoder=encoder_name,
        provenance={"command": "revision embed", "source": str(cfg.data.resolve())},
    )
    store = FeatureStore.create(
        path, store_cfg, metadata_columns={META_COLUMN[modality]: "str"}, attrs={"embed": identity}
    )
    return store, fresh


def check_identity(path: Path, prev: Any, identity: dict[str, Any]) -> None:
    """Refuse to resume a store written with other settings, naming the settings that differ."""
    if json.dumps(prev, sort_keys=True) != json.dumps(identity, sort_keys=True):
        prev = prev if isinstance(prev, dict) else {}
        diff = sorted(k for k in set(prev) | set(identity) if prev.get(k) != identity.get(k))
        raise UserError(
            f"{path}: exists from a run with other settings ({', '.join(diff)} differ); "
            "rerun with the same flags to resume, or choose another --out"
        )


def store_path(out: Path, modality: str, dist: DistInfo) -> Path:
    if dist.world == 1:
        return out / f"{modality}.zarr"
    return out / f"{modality}.part{dist.rank:03d}-of-{dist.world:03d}.zarr"
