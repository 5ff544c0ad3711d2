"""FeatureView equals the store it was exported from: rows, dtypes (bf16 included), every id."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from revision.store import FeatureStore, StoreConfig, to_torch
from revision.store.memmap import export_memmap
from revision.train import DataError, FeatureView


def make_view(tmp: Path, n: int, d: int, dtype: str, **export_kw) -> tuple[FeatureStore, FeatureView]:
    rng = np.random.default_rng(n + d)
    x = (rng.standard_normal((n, d)) * 4).astype(np.float32)
    ids = [f"v{i:05d}" if i % 5 else f"ünï-{i}" for i in range(n)]
    cfg = StoreConfig(modality="text", dim=d, dtype=dtype, chunk_rows=16, chunks_per_shard=4)
    with FeatureStore.create(tmp / "s.zarr", cfg) as s:
        s.append(x, ids)
    store = FeatureStore.open(tmp / "s.zarr")
    export_memmap(store, tmp / "mm", show_progress=False, **export_kw)
    return store, FeatureView.open(tmp / "mm", hash_fn=export_kw.get("hash_fn"))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 257), (1023, 64)])
def test_view_equals_store(tmp_path: Path, shape: tuple[int, int], dtype: str) -> None:
    n, d = shape
    store, view = make_view(tmp_path, n, d, dtype)
    assert (view.num_rows, view.dim, view.dtype, len(view)) == (n, d, dtype, n)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, n, size=3 * n)  # any order, repeats
    want = to_torch(store.read_rows(idx), dtype)
    got = view.rows(idx)
    assert got.dtype == view.torch_dtype == want.dtype
    assert torch.equal(
        got.view(torch.int8) if dtype != "float32" else got, want.view(torch.int8) if dtype != "float32" else want
    )
    f32 = view.rows(idx, dtype=torch.float32)
    err = (f32 - want.float()).abs()
    assert err.max().item() == 0, f"max diff {err.max().item()}, mean {err.mean().item()}"
    ids = store.read_ids()
    assert np.array_equal(view.lookup(ids), np.arange(n))
    assert view.ids(np.arange(n)) == list(ids)
    emb = view.embeds([ids[-1], ids[0]])
    assert torch.equal(emb, to_torch(store.read_rows([n - 1, 0]), dtype).float())
    # The memory-mapped gather and the contiguous-range read give the same bytes.
    mapped = FeatureView.open(tmp_path / "mm", read_mode="mmap")
    assert np.array_equal(mapped.read(idx).view(np.uint8), view.read(idx).view(np.uint8))
    lo, hi = n // 3, n - n // 4
    assert np.array_equal(view.read(np.arange(lo, hi)).view(np.uint8), store.read(lo, hi).view(np.uint8))


def test_read_into_out_and_bad_mode(tmp_path: Path) -> None:
    store, view = make_view(tmp_path, 40, 6, "float32")
    out = np.empty((3, 6), np.float32)
    assert view.read([5, 1, 5], out=out) is out
    assert np.array_equal(out, store.read_rows([5, 1, 5]))
    with pytest.raises(ValueError, match="C-contiguous"):
        view.read([1], out=np.empty((1, 6), np.float64))
    with pytest.raises(ValueError, match="read_mode"):
        FeatureView.open(tmp_path / "mm", read_mode="fast")


def test_missing_ids(tmp_path: Path) -> None:
    _, view = make_view(tmp_path, 50, 3, "float16")
    with pytest.raises(DataError, match=r"2 of 3 ids not in the view, e\.g\. 'nope'"):
        view.lookup(["v00001", "nope", "v99999"])
    assert view.lookup(["v00001", "nope"], missing="ignore").tolist() == [1, -1]
    with pytest.raises(IndexError, match="out of"):
        view.rows([50])


def test_colliding_hash_needs_that_hash_to_open(tmp_path: Path) -> None:
    def three_buckets(mat: np.ndarray, lens: np.ndarray) -> np.ndarray:
        return lens.astype(np.uint64) % np.uint64(3)

    store, view = make_view(tmp_path, 200, 4, "float16", hash_fn=three_buckets, hash_name="three-buckets")
    assert view.header["hash_collisions"] > 0
    ids = store.read_ids()
    assert np.array_equal(view.lookup(ids), np.arange(200))
    with pytest.raises(DataError, match="three-buckets"):
        FeatureView.open(tmp_path / "mm")


def test_pickles_as_a_path_and_opens_in_constant_time(tmp_path: Path) -> None:
    store, view = make_view(tmp_path, 3000, 64, "float16")
    view.rows([0, 1])  # map it in this process first
    blob = pickle.dumps(view)
    assert len(blob) < 10_000, f"pickled view is {len(blob)} bytes: the matrix travelled with it"
    again = pickle.loads(blob)
    assert torch.equal(again.rows([2999]), view.rows([2999]))
    t0 = time.perf_counter()
    FeatureView.open(tmp_path / "mm").lookup(["v00001"])
    assert time.perf_counter() - t0 < 0.5


def test_release_keeps_data_readable(tmp_path: Path) -> None:
    make_view(tmp_path, 100, 8, "bfloat16")
    view = FeatureView.open(tmp_path / "mm", read_mode="mmap")
    before = view.rows(np.arange(100))
    view.release()
    assert torch.equal(view.rows(np.arange(100)).view(torch.int16), before.view(torch.int16))


def test_not_an_export(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a memmap export"):
        FeatureView.open(tmp_path)
