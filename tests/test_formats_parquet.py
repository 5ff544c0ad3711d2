"""Parquet: list-column vectors read by row groups equal a plain read for any batching; round trips; errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from revision.errors import UserError
from revision.store import FeatureStore
from revision.store.export import export
from revision.store.ingest import ingest

SMALL = {"chunk_rows": 8, "chunks_per_shard": 4}


def _table(
    n: int, d: int, seed: int, *, nulls: tuple[int, ...] = (), fixed: bool = False
) -> tuple[pa.Table, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    vecs: list[list[float] | None] = [list(map(float, row)) for row in x]
    for k in nulls:
        vecs[k] = None
    typ = pa.list_(pa.float32(), d) if fixed else pa.list_(pa.float32())
    t = pa.table({"id": [f"r{seed}_{i}" for i in range(n)], "emb": pa.array(vecs, typ), "score": np.arange(n) / 7})
    return t, x


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    row_group=st.integers(1, 16),
    batch_rows=st.integers(1, 50),
    fixed=st.booleans(),
    null_at=st.integers(0, 39),
)
def test_ingest_equals_plain_read_for_any_batching(
    tmp_path_factory: pytest.TempPathFactory,
    sizes: list[int],
    row_group: int,
    batch_rows: int,
    fixed: bool,
    null_at: int,
) -> None:
    assume(sum(n - (null_at < n) for n in sizes) > 0)  # all-null input is "empty input", tested elsewhere
    root = tmp_path_factory.mktemp("pq")
    (root / "src").mkdir()
    xs, ids, scores = [], [], []
    for k, n in enumerate(sizes):
        nulls = (null_at,) if null_at < n else ()
        t, x = _table(n, 6, k, nulls=nulls, fixed=fixed)
        # part_10 sorts after part_2: the directory is read in natural order.
        pq.write_table(t, root / "src" / f"part_{k * 5}.parquet", row_group_size=row_group)
        keep = [i for i in range(n) if i not in nulls]
        xs.append(x[keep])
        ids += [t["id"][i].as_py() for i in keep]
        scores += [t["score"][i].as_py() for i in keep]
    summary = ingest(root / "src", root / "s.zarr", fmt="parquet", modality="text", batch_rows=batch_rows, **SMALL)
    assert summary.skipped_none == sum(1 for n in sizes if null_at < n)
    s = FeatureStore.open(root / "s.zarr")
    want = np.concatenate(xs)
    got = s.read()
    if got.tobytes() != want.tobytes():
        diff = np.abs(got.astype(np.float64) - want)
        raise AssertionError(f"vectors differ: max {diff.max()} mean {diff.mean()}")
    assert list(s.read_ids()) == ids
    np.testing.assert_array_equal(s.read_metadata("score"), np.array(scores))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_store_parquet_store_round_trip_is_bitwise(tmp_path: Path, dtype: str) -> None:
    t, _ = _table(37, 5, 1)
    pq.write_table(t, tmp_path / "in.parquet")
    ingest(tmp_path / "in.parquet", tmp_path / "a.zarr", fmt="parquet", modality="image", dtype=dtype, **SMALL)
    export(tmp_path / "a.zarr", tmp_path / "out.parquet", fmt="parquet", block_rows=8)
    summary = ingest(tmp_path / "out.parquet", tmp_path / "b.zarr", fmt="parquet", **SMALL)
    assert (summary.modality, summary.dtype) == ("image", dtype)  # both recorded in the file
    a, b = FeatureStore.open(tmp_path / "a.zarr"), FeatureStore.open(tmp_path / "b.zarr")
    assert a.read().tobytes() == b.read().tobytes()
    assert list(a.read_ids()) == list(b.read_ids())
    np.testing.assert_array_equal(a.read_metadata("score"), b.read_metadata("score"))
    if dtype == "float16":
        back = pq.read_table(tmp_path / "out.parquet")
        assert back.schema.field("embedding").type == pa.list_(pa.float16(), 5)


def test_every_metadata_kind_round_trips_through_parquet(tmp_path: Path) -> None:
    cols = {"caption": "str", "n": "int64", "score": "float64", "flag": "bool", "extra": "json"}
    meta = {
        "caption": ["a", "ü ∑", ""],
        "n": [1, -(2**40), 0],
        "score": [0.5, float("nan"), -1e300],
        "flag": [True, False, True],
        "extra": [None, {"k": [1, 2]}, "s"],
    }
    x = np.arange(9, dtype=np.float16).reshape(3, 3)
    with FeatureStore.create(tmp_path / "a.zarr", _cfg(), metadata_columns=cols) as s:
        s.append(x, ["p", "q", "r"], meta)
    export(tmp_path / "a.zarr", tmp_path / "out.parquet", fmt="parquet")
    ingest(tmp_path / "out.parquet", tmp_path / "b.zarr", fmt="parquet", **SMALL)
    b = FeatureStore.open(tmp_path / "b.zarr")
    assert b.metadata_columns == cols
    assert b.read_metadata("extra") == meta["extra"]
    assert list(b.read_metadata("n")) == meta["n"] and list(b.read_metadata("flag")) == meta["flag"]
    np.testing.assert_array_equal(b.read_metadata("score"), np.array(meta["score"]))
    assert b.read().tobytes() == x.tobytes()


def _cfg():  # noqa: ANN202 - a StoreConfig
    from revision.store import StoreConfig

    return StoreConfig(modality="text", dim=3, chunk_rows=2, chunks_per_shard=2)


def test_bad_parquet_inputs(tmp_path: Path) -> None:
    t, _ = _table(10, 4, 0)
    vecs = t["emb"].to_pylist()
    vecs[6] = vecs[6][:3]
    pq.write_table(
        t.set_column(1, "emb", pa.array(vecs, pa.list_(pa.float32()))), tmp_path / "bad.parquet", row_group_size=4
    )
    with pytest.raises(UserError, match=r"bad\.parquet: row 6: dimension mismatch: a vector of 3 values, expected 4"):
        ingest(tmp_path / "bad.parquet", tmp_path / "s.zarr", fmt="parquet", modality="text", batch_rows=100)
    pq.write_table(pa.table({"a": [[1.0]], "b": [[2.0]]}), tmp_path / "two.parquet")
    with pytest.raises(UserError, match="--embedding-column"):
        ingest(tmp_path / "two.parquet", tmp_path / "s.zarr", fmt="parquet", modality="text")
    with pytest.raises(UserError, match=r"--embedding-column 'zz' is not a column"):
        ingest(tmp_path / "two.parquet", tmp_path / "s.zarr", fmt="parquet", modality="text", embedding_column="zz")
    pq.write_table(pa.table({"id": ["a", None], "emb": [[1.0], [2.0]]}), tmp_path / "nullid.parquet")
    with pytest.raises(UserError, match=r"nullid\.parquet: row 1: id column 'id' is null"):
        ingest(tmp_path / "nullid.parquet", tmp_path / "s.zarr", fmt="parquet", modality="text")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 nope")
    with pytest.raises(UserError, match=r"junk\.parquet: unreadable parquet"):
        ingest(tmp_path / "junk.parquet", tmp_path / "s.zarr", fmt="parquet", modality="text")
    assert not (tmp_path / "s.zarr").exists()
