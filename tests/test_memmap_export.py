"""export_memmap: the exported matrix and ids equal the store, for every dtype and awkward shapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from revision.store import FeatureStore, StoreConfig, StoreError
from revision.store.idindex import IdIndex
from revision.store.memmap import export_memmap, read_header

SHAPES = [(1, 1), (7, 257), (1023, 64), (4099, 3)]


def make_store(
    path: Path, n: int, d: int, dtype: str, *, chunk_rows: int = 64, attrs: dict | None = None
) -> FeatureStore:
    rng = np.random.default_rng(n * 1000 + d)
    x = rng.standard_normal((n, d)).astype(np.float32) * 3
    ids = [f"row-{i}-{'é' * (i % 3)}" for i in range(n)]
    # Few chunks per shard: small stores still cross shard boundaries.
    cfg = StoreConfig(modality="image", dim=d, dtype=dtype, chunk_rows=chunk_rows, chunks_per_shard=4)
    with FeatureStore.create(path, cfg, attrs=attrs) as s:
        for lo in range(0, n, 500):
            s.append(x[lo : lo + 500], ids[lo : lo + 500])
    return FeatureStore.open(path)


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    diff = got.view(np.uint8).reshape(len(got), -1) != want.view(np.uint8).reshape(len(want), -1)
    rows = np.flatnonzero(diff.any(axis=1))
    assert rows.size == 0, f"{rows.size} rows differ in their bytes, first rows {rows[:5]}"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("shape", SHAPES)
def test_export_equals_store(tmp_path: Path, shape: tuple[int, int], dtype: str) -> None:
    n, d = shape
    store = make_store(tmp_path / "s.zarr", n, d, dtype, attrs={"alignment": {"method": "realign", "scale": 1.25}})
    header = export_memmap(store, tmp_path / "mm", show_progress=False, run_rows=97)
    vec = np.load(tmp_path / "mm" / "vectors.npy", mmap_mode="r")
    assert_same(np.asarray(vec), store.read())
    assert header == read_header(tmp_path / "mm")
    assert (header["rows"], header["dim"], header["dtype"]) == (n, d, dtype)
    assert header["storage_dtype"] == ("uint16" if dtype == "bfloat16" else dtype)
    assert header["alignment"] == {"method": "realign", "scale": 1.25}
    assert header["hash_collisions"] == 0 and header["duplicate_ids"] == 0
    index = IdIndex.open(tmp_path / "mm")
    ids = store.read_ids()
    assert index.ids(np.arange(n)) == list(ids)
    got = index.lookup(ids)
    assert np.array_equal(got, np.arange(n)), f"{(got != np.arange(n)).sum()} ids map to the wrong row"


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 700), chunk_rows=st.sampled_from([1, 8, 64]), block_mult=st.integers(1, 5))
def test_export_any_read_block(tmp_path_factory, n: int, chunk_rows: int, block_mult: int) -> None:
    tmp = tmp_path_factory.mktemp("exp")
    store = make_store(tmp / "s.zarr", n, 5, "float16", chunk_rows=chunk_rows)
    export_memmap(store, tmp / "mm", show_progress=False, block_rows=chunk_rows * block_mult, run_rows=50)
    assert_same(np.load(tmp / "mm" / "vectors.npy"), store.read())
    assert np.array_equal(IdIndex.open(tmp / "mm").lookup(store.read_ids()), np.arange(n))


def test_existing_destination_is_kept_unless_overwrite(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr", 10, 4, "float32")
    export_memmap(store, tmp_path / "mm", show_progress=False)
    with pytest.raises(StoreError, match="already holds a memmap export"):
        export_memmap(store, tmp_path / "mm", show_progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("x")
    with pytest.raises(StoreError, match="not a memmap export"):
        export_memmap(store, tmp_path / "other", show_progress=False)
    assert (tmp_path / "other" / "precious.txt").read_text() == "x"
    header = export_memmap(store, tmp_path / "mm", show_progress=False, overwrite=True)
    assert header["rows"] == 10


def test_interrupted_export_leaves_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr", 300, 4, "float16", chunk_rows=8)
    calls = 0

    def failing_hash(mat: np.ndarray, lens: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-export
        return lens.astype(np.uint64)

    with pytest.raises(KeyboardInterrupt):
        export_memmap(store, tmp_path / "mm", show_progress=False, block_rows=64, hash_fn=failing_hash, hash_name="t")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]
    with pytest.raises(StoreError, match="not a memmap export"):
        read_header(tmp_path / "mm")


def test_header_names_the_source(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr", 5, 2, "float16")
    export_memmap(store, tmp_path / "mm", show_progress=False)
    header = json.loads((tmp_path / "mm" / "header.json").read_text())
    assert header["source"]["path"] == str((tmp_path / "s.zarr").resolve())
    assert header["source"]["modality"] == "image"
    assert header["format"] == "revision-memmap"
