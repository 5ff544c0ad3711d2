"""Metadata columns named like an export format's own fields are kept, renamed, and restored on ingest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from revision.cli import main
from revision.store import FeatureStore
from revision.store.export import exported_names
from revision.store.pickle_io import load_reference_pickle


def _clashing_store(tmp_path: Path) -> Path:
    """`--id-column caption` on a parquet that also has an `id` column: the store gets a column `id`."""
    table = pa.table(
        {
            "id": ["i0", "i1", "i2"],
            "caption": ["c0", "c1", "c2"],
            "embed": [1, 2, 3],
            "meta_id": ["m0", "m1", "m2"],
            "embedding": pa.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], pa.list_(pa.float16(), 2)),
        }
    )
    pq.write_table(table, tmp_path / "in.parquet")
    dest = tmp_path / "s.zarr"
    argv = ["ingest", str(tmp_path / "in.parquet"), str(dest), "--format", "parquet", "--modality", "text"]
    assert main([*argv, "--id-column", "caption"]) == 0
    assert set(FeatureStore.open(dest).metadata_columns) == {"id", "caption", "embed", "meta_id"}
    return dest


def _columns(st: FeatureStore) -> dict[str, list]:
    return {c: list(st.read_metadata(c)) for c in st.metadata_columns}


@pytest.mark.parametrize("fmt", ["parquet", "npy"])
def test_table_exports_keep_and_restore_clashing_columns(tmp_path: Path, fmt: str) -> None:
    src = _clashing_store(tmp_path)
    out = tmp_path / ("out.parquet" if fmt == "parquet" else "out")
    assert main(["export", str(src), str(out), "--format", fmt]) == 0
    table = pq.read_table(out if fmt == "parquet" else out / "metadata" / "metadata_0.parquet")
    assert table.column("id").to_pylist() == ["c0", "c1", "c2"]  # the ids
    assert table.column("meta_id_2").to_pylist() == ["i0", "i1", "i2"]  # meta_id was taken
    assert main(["ingest", str(out), str(tmp_path / "back.zarr"), "--format", fmt]) == 0
    a, b = FeatureStore.open(src), FeatureStore.open(tmp_path / "back.zarr")
    assert b.metadata_columns == a.metadata_columns and _columns(b) == _columns(a)
    assert list(b.read_ids()) == list(a.read_ids()) and b.read().tobytes() == a.read().tobytes()


def test_pickle_export_keeps_clashing_columns_under_meta_names(tmp_path: Path) -> None:
    src = _clashing_store(tmp_path)
    assert main(["export", str(src), str(tmp_path / "pk"), "--format", "reference-pkl"]) == 0
    recs = load_reference_pickle(tmp_path / "pk" / "text_embeds_1.pkl")
    assert list(recs[0]) == ["id", "meta_id_2", "caption", "meta_embed", "meta_id", "embed"]
    assert [r["meta_id_2"] for r in recs] == ["i0", "i1", "i2"] and [r["id"] for r in recs] == ["c0", "c1", "c2"]
    assert [r["meta_embed"] for r in recs] == [1, 2, 3] and isinstance(recs[0]["embed"], np.ndarray)
    assert main(["ingest", str(tmp_path / "pk"), str(tmp_path / "back.zarr"), "--format", "reference-pkl"]) == 0
    back = FeatureStore.open(tmp_path / "back.zarr")
    cols = _columns(FeatureStore.open(src))
    assert _columns(back) == {
        "meta_id_2": cols["id"],
        "caption": cols["caption"],
        "meta_embed": cols["embed"],
        "meta_id": cols["meta_id"],
    }


def test_exported_names_rule() -> None:
    assert exported_names(["a", "id"], ("id", "embed")) == {"a": "a", "id": "meta_id"}
    names = exported_names(["id", "meta_id", "meta_id_2", "embed"], ("id", "embed"))
    assert names == {"id": "meta_id_3", "meta_id": "meta_id", "meta_id_2": "meta_id_2", "embed": "meta_embed"}
