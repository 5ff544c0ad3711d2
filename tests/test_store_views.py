"""Zero-copy iteration: read-only views of the mapped shard files equal the copying reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from revision.store import FeatureStore, StoreConfig, to_torch


def _store(path: Path, n: int, dtype: str, codec: str = "none") -> FeatureStore:
    x = np.random.default_rng(n).standard_normal((n, 7)).astype(np.float32)
    cfg = StoreConfig(modality="text", dim=7, dtype=dtype, codec=codec, chunk_rows=16, chunks_per_shard=3)
    with FeatureStore.create(path, cfg) as s:
        s.append(x, [f"t{i}" for i in range(n)])
    return FeatureStore.open(path)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("n", [1, 47, 48, 49, 300])
@pytest.mark.parametrize("block_rows", [None, 16, 32, 80])
@pytest.mark.parametrize("start", [0, 17])
def test_views_equal_reads(tmp_path: Path, dtype: str, n: int, block_rows: int | None, start: int) -> None:
    """Blocks that end inside, at and across shard boundaries (48 rows a shard), from any start row."""
    st = _store(tmp_path / "s.zarr", n, dtype)
    start = min(start, n - 1)
    copied = list(st.iter_chunks(start, block_rows=block_rows))
    viewed = list(st.iter_chunks(start, block_rows=block_rows, zero_copy=True))
    whole = st.read(start)
    got = np.concatenate([b for _, b in viewed])
    assert got.dtype == whole.dtype and np.array_equal(got.view(np.uint8), whole.view(np.uint8))
    assert [lo for lo, _ in viewed][0] == start == copied[0][0]
    for lo, block in viewed:
        assert lo // 48 == (lo + len(block) - 1) // 48, "a view never spans two shards"
        assert not block.flags.writeable
        assert np.array_equal(block, st.read(lo, lo + len(block)))
        t = to_torch(block, dtype)  # no warning escapes for the read-only view
        assert t.shape == (len(block), 7)


def test_views_outlive_the_iteration(tmp_path: Path) -> None:
    st = _store(tmp_path / "s.zarr", 300, "float16")
    kept = [b for _, b in st.iter_chunks(zero_copy=True)]
    st.close()
    assert np.array_equal(np.concatenate(kept), FeatureStore.open(tmp_path / "s.zarr").read())


def test_compressed_stores_are_read_as_usual(tmp_path: Path) -> None:
    st = _store(tmp_path / "s.zarr", 100, "float32", codec="zstd")
    blocks = [b for _, b in st.iter_chunks(zero_copy=True)]
    assert all(b.flags.writeable for b in blocks)
    assert np.array_equal(np.concatenate(blocks), st.read())


def test_torch_view_of_a_mapping_reads_the_file(tmp_path: Path) -> None:
    st = _store(tmp_path / "s.zarr", 60, "bfloat16")
    (lo, block), *_ = st.iter_chunks(zero_copy=True)
    t = to_torch(block, "bfloat16")
    assert t.dtype == torch.bfloat16 and torch.equal(t, to_torch(st.read(lo, lo + len(block)), "bfloat16"))
