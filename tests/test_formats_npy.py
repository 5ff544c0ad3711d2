"""clip-retrieval npy + parquet: ingest equals a plain concatenation for any batching; round trips; errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from revision.errors import UserError
from revision.store import FeatureStore
from revision.store.export import export
from revision.store.ingest import ingest

SMALL = {"chunk_rows": 8, "chunks_per_shard": 4}


def _layout(
    root: Path,
    sizes: list[int],
    d: int,
    dtype: str = "float16",
    *,
    prefix: str = "img",
    meta: str | None = "id",
    seed: int = 0,
) -> tuple[np.ndarray, list[str], dict[str, list]]:
    """Write clip-retrieval files; return the rows in numeric file order (the reference)."""
    rng = np.random.default_rng(seed)
    (root / f"{prefix}_emb").mkdir(parents=True, exist_ok=True)
    if meta:
        (root / "metadata").mkdir(exist_ok=True)
    xs, ids, caps, widths = [], [], [], []
    row = 0
    for n, size in enumerate(sizes):
        x = rng.standard_normal((size, d)).astype(dtype)
        np.save(root / f"{prefix}_emb" / f"{prefix}_emb_{n}.npy", x)
        file_ids = [f"k{row + i:06d}" for i in range(size)]
        cap = [f"a photo {row + i}" for i in range(size)]
        width = [int(v) for v in rng.integers(0, 4000, size)]
        if meta:
            cols = {"image_path": [f"img/{i}.jpg" for i in file_ids], "caption": cap, "width": width}
            if meta == "id":
                cols = {"id": file_ids, **cols}
            pq.write_table(pa.table(cols), root / "metadata" / f"metadata_{n}.parquet", row_group_size=7)
        xs.append(x)
        ids += file_ids
        caps += cap
        widths += width
        row += size
    return np.concatenate(xs), ids, {"caption": caps, "width": widths}


def _assert_store(path: Path, x: np.ndarray, ids: list[str], meta: dict[str, list] | None = None) -> None:
    s = FeatureStore.open(path)
    got = s.read()
    assert got.shape == x.shape, (got.shape, x.shape)
    if got.tobytes() != x.astype(s.np_dtype).tobytes():
        diff = np.abs(got.astype(np.float64) - x.astype(np.float64))
        bad = np.argwhere(diff > 0)
        raise AssertionError(f"vectors differ: max {diff.max()} mean {diff.mean()} first at {bad[0].tolist()}")
    assert list(s.read_ids()) == ids
    for name, values in (meta or {}).items():
        assert list(s.read_metadata(name)) == values, name


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(0, 30), min_size=1, max_size=12).filter(lambda s: sum(s) > 0),
    batch_rows=st.integers(1, 40),
    chunk_rows=st.integers(1, 16),
    seed=st.integers(0, 1000),
)
def test_ingest_equals_numeric_order_concatenation(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], batch_rows: int, chunk_rows: int, seed: int
) -> None:
    root = tmp_path_factory.mktemp("clip")
    x, ids, meta = _layout(root, sizes, 5, seed=seed)
    summary = ingest(root, root / "s.zarr", fmt="npy", batch_rows=batch_rows, chunk_rows=chunk_rows, chunks_per_shard=3)
    assert summary.modality == "image" and summary.id_source == "id" and summary.rows_added == len(ids)
    _assert_store(root / "s.zarr", x, ids, meta)
    s = FeatureStore.open(root / "s.zarr")
    assert s.metadata_columns == {"image_path": "str", "caption": "str", "width": "int64"}
    if len(sizes) > 10 and sizes[1] and sizes[10]:
        # A reader that sorted names lexicographically (_10 before _2) would fail the check above.
        order = sorted(range(len(sizes)), key=lambda n: f"img_emb_{n}.npy")
        starts = np.cumsum([0] + sizes)
        lex_ids = [i for n in order for i in ids[starts[n] : starts[n + 1]]]
        assert lex_ids != ids


@pytest.mark.parametrize(
    ("meta", "id_column", "expect"),
    [(None, None, "row number"), ("path", None, "image_path"), ("id", "caption", "caption")],
)
def test_id_sources(tmp_path: Path, meta: str | None, id_column: str | None, expect: str) -> None:
    x, ids, _ = _layout(tmp_path, [4, 3], 6, meta=meta)
    summary = ingest(tmp_path, tmp_path / "s.zarr", fmt="npy", id_column=id_column, **SMALL)
    assert summary.id_source == expect
    s = FeatureStore.open(tmp_path / "s.zarr")
    want = {"row number": [str(i) for i in range(7)], "image_path": [f"img/{i}.jpg" for i in ids]}.get(expect)
    assert list(s.read_ids()) == (want if want else [f"a photo {i}" for i in range(7)])
    if expect == "image_path":  # the id column stays as metadata too, so nothing is lost
        assert "image_path" in s.metadata_columns


@pytest.mark.parametrize("dtype", ["float16", "float32", "bfloat16"])
def test_store_npy_store_round_trip_is_bitwise(tmp_path: Path, dtype: str) -> None:
    x, ids, meta = _layout(tmp_path / "src", [9, 0, 14], 7, "float32")
    ingest(tmp_path / "src", tmp_path / "a.zarr", fmt="npy", dtype=dtype, **SMALL)
    export(tmp_path / "a.zarr", tmp_path / "out", fmt="npy", rows_per_file=5, block_rows=8)
    assert sorted(p.name for p in (tmp_path / "out" / "img_emb").iterdir()) == [f"img_emb_{n}.npy" for n in range(5)]
    summary = ingest(tmp_path / "out", tmp_path / "b.zarr", fmt="npy", **SMALL)
    assert summary.dtype == dtype  # recorded in the exported metadata, so bf16 comes back as bf16
    a, b = FeatureStore.open(tmp_path / "a.zarr"), FeatureStore.open(tmp_path / "b.zarr")
    assert a.read().tobytes() == b.read().tobytes()
    assert list(a.read_ids()) == list(b.read_ids()) == ids
    assert a.metadata_columns == b.metadata_columns
    for name in a.metadata_columns:
        assert list(a.read_metadata(name)) == list(b.read_metadata(name))


def test_single_file_text_layout_and_fortran_order(tmp_path: Path) -> None:
    x = np.asfortranarray(np.random.default_rng(3).standard_normal((11, 4)))
    np.save(tmp_path / "one.npy", x)
    with pytest.raises(UserError, match="--modality"):
        ingest(tmp_path / "one.npy", tmp_path / "s.zarr", fmt="npy")
    summary = ingest(tmp_path / "one.npy", tmp_path / "s.zarr", fmt="npy", modality="text", **SMALL)
    assert summary.dtype == "float32"  # float64 input keeps as much precision as a store has
    _assert_store(tmp_path / "s.zarr", x.astype(np.float32), [str(i) for i in range(11)])
    t, tids, _ = _layout(tmp_path / "both", [3, 2], 4, prefix="text")
    _layout(tmp_path / "both", [3, 2], 4, prefix="img")
    with pytest.raises(UserError, match="both img_emb and text_emb"):
        ingest(tmp_path / "both", tmp_path / "t.zarr", fmt="npy")
    ingest(tmp_path / "both", tmp_path / "t.zarr", fmt="npy", modality="text", **SMALL)
    _assert_store(tmp_path / "t.zarr", t, tids)


def test_metadata_with_nulls_becomes_json_and_round_trips(tmp_path: Path) -> None:
    (tmp_path / "img_emb").mkdir()
    (tmp_path / "metadata").mkdir()
    np.save(tmp_path / "img_emb" / "img_emb_0.npy", np.ones((3, 2), np.float16))
    pq.write_table(
        pa.table({"id": ["a", "b", "c"], "caption": ["x", None, "z"]}), tmp_path / "metadata" / "metadata_0.parquet"
    )
    ingest(tmp_path, tmp_path / "s.zarr", fmt="npy", **SMALL)
    s = FeatureStore.open(tmp_path / "s.zarr")
    assert s.metadata_columns == {"caption": "json"}
    assert s.read_metadata("caption") == ["x", None, "z"]


def _expect_error(tmp_path: Path, pattern: str) -> None:
    with pytest.raises(UserError, match=pattern):
        ingest(tmp_path, tmp_path / "s.zarr", fmt="npy", **SMALL)
    assert not (tmp_path / "s.zarr").exists()


def test_bad_npy_inputs(tmp_path: Path) -> None:
    _expect_error(tmp_path, "empty input")
    _layout(tmp_path, [4, 5], 3)
    raw = (tmp_path / "img_emb" / "img_emb_1.npy").read_bytes()
    (tmp_path / "img_emb" / "img_emb_1.npy").write_bytes(raw[:-5])
    _expect_error(tmp_path, r"img_emb_1\.npy: truncated")
    np.save(tmp_path / "img_emb" / "img_emb_1.npy", np.zeros((5, 4), np.float16))
    _expect_error(tmp_path, r"img_emb_1\.npy: dimension mismatch: 4 columns.*has 3")
    np.save(tmp_path / "img_emb" / "img_emb_1.npy", np.zeros((6, 3), np.float16))
    _expect_error(tmp_path, r"metadata_1\.parquet: 5 rows, but .*img_emb_1\.npy has 6")
    np.save(tmp_path / "img_emb" / "img_emb_2.npy", np.zeros((1, 3), np.float16))
    _expect_error(tmp_path, r"metadata_2\.parquet: missing")
