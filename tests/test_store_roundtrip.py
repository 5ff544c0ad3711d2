"""FeatureStore: round trips for every dtype and codec, Zarr interoperability, chunked reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from revision.store import FeatureStore, StoreConfig, StoreError, to_torch


def _data(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


@pytest.mark.parametrize("codec", ["none", "blosc-lz4", "zstd"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_round_trip_every_dtype_and_codec(tmp_path: Path, dtype: str, codec: str) -> None:
    x = _data(301, 13)
    cfg = StoreConfig(modality="image", dim=13, dtype=dtype, codec=codec, chunk_rows=32, chunks_per_shard=3)
    with FeatureStore.create(tmp_path / "s.zarr", cfg) as s:
        s.append(x[:100], [f"i{i}" for i in range(100)])
        s.append(torch.from_numpy(x[100:]), [f"i{i}" for i in range(100, 301)])
    r = FeatureStore.open(tmp_path / "s.zarr")
    expect = torch.from_numpy(x).to(
        {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    )
    got = to_torch(r.read(), dtype)
    assert got.dtype == expect.dtype
    assert torch.equal(got, expect), f"max diff {(got.float() - expect.float()).abs().max()}"
    assert list(r.read_ids()) == [f"i{i}" for i in range(301)]
    # Any Zarr v3 reader sees the same bits.
    z = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert np.array_equal(np.asarray(z["vectors"][:]), r.read())
    assert list(z["ids"][:]) == list(r.read_ids())


def test_fp16_bits_are_kept_exactly(tmp_path: Path) -> None:
    bits = np.random.default_rng(1).integers(0, 2**16, size=(77, 5), dtype=np.uint16)
    bits[(bits & 0x7C00) == 0x7C00] = 0  # no NaN/Inf payloads
    x = bits.view(np.float16)
    with FeatureStore.create(tmp_path / "s.zarr", StoreConfig(modality="text", dim=5, chunk_rows=8)) as s:
        s.append(x, [str(i) for i in range(77)])
    assert FeatureStore.open(tmp_path / "s.zarr").read().view(np.uint16).tobytes() == bits.tobytes()


def test_metadata_columns_round_trip(tmp_path: Path) -> None:
    cols = {"caption": "str", "n": "int64", "score": "float64", "flag": "bool", "extra": "json"}
    meta = {
        "caption": ["a", "ü ∑", "", "x" * 500],
        "n": [1, -2, 2**40, 0],
        "score": [0.5, float("nan"), -1e300, 3.0],
        "flag": [True, False, True, False],
        "extra": [None, {"k": [1, 2]}, "s", 3.5],
    }
    with FeatureStore.create(
        tmp_path / "s.zarr", StoreConfig(modality="text", dim=2, chunk_rows=2), metadata_columns=cols
    ) as s:
        s.append(np.zeros((4, 2)), ["a", "b", "c", "d"], meta)
    r = FeatureStore.open(tmp_path / "s.zarr")
    assert list(r.read_metadata("caption")) == meta["caption"]
    assert list(r.read_metadata("n")) == meta["n"]
    np.testing.assert_array_equal(r.read_metadata("score"), np.array(meta["score"]))
    assert list(r.read_metadata("flag")) == meta["flag"]
    assert r.read_metadata("extra") == meta["extra"]
    assert r.read_metadata("caption", 1, 3).tolist() == ["ü ∑", ""]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(0, 400),
    chunk_rows=st.integers(1, 64),
    cps=st.integers(1, 5),
    batches=st.lists(st.integers(1, 97), min_size=1, max_size=8),
    commit_every=st.integers(1, 4),
    block=st.integers(1, 200),
    codec=st.sampled_from(["none", "zstd"]),
    seed=st.integers(0, 2**16),
)
def test_chunked_reads_equal_whole_reads(
    tmp_path_factory: pytest.TempPathFactory,
    n: int,
    chunk_rows: int,
    cps: int,
    batches: list[int],
    commit_every: int,
    block: int,
    codec: str,
    seed: int,
) -> None:
    path = tmp_path_factory.mktemp("h") / "s.zarr"
    x = _data(n, 6, seed).astype(np.float16)
    ids = np.array([f"r{i}" for i in range(n)], dtype=object)
    cfg = StoreConfig(modality="text", dim=6, chunk_rows=chunk_rows, chunks_per_shard=cps, codec=codec)
    s = FeatureStore.create(path, cfg)
    pos = k = 0
    while pos < n:
        step = batches[k % len(batches)]
        s.append(x[pos : pos + step], ids[pos : pos + step])
        pos += step
        k += 1
        if k % commit_every == 0:
            s.commit()
            # a reopened writer continues exactly where the commit left off
            s.close()
            s = FeatureStore.open(path, mode="a")
    s.commit()
    r = FeatureStore.open(path)
    assert r.rows == n
    np.testing.assert_array_equal(r.read(), x)
    blocks = [(lo, b) for lo, b in r.iter_chunks(block_rows=block)]
    assert [lo for lo, _ in blocks] == sorted(lo for lo, _ in blocks)
    assert all(lo % chunk_rows == 0 for lo, _ in blocks)
    got = np.concatenate([b for _, b in blocks]) if blocks else np.empty((0, 6), np.float16)
    np.testing.assert_array_equal(got, x)
    if n:
        rng = np.random.default_rng(seed)
        a, b = sorted(rng.integers(0, n + 1, 2))
        np.testing.assert_array_equal(r.read(a, b), x[a:b])
        idx = rng.integers(0, n, 37)
        np.testing.assert_array_equal(r.read_rows(idx), x[idx])
        assert list(r.read_ids(a, b)) == list(ids[a:b])
    # zarr-python agrees on every byte
    np.testing.assert_array_equal(np.asarray(zarr.open_array(str(path / "vectors"), mode="r")[:]), x)


def test_uncommitted_rows_are_invisible(tmp_path: Path) -> None:
    s = FeatureStore.create(tmp_path / "s.zarr", StoreConfig(modality="text", dim=3, chunk_rows=4, chunks_per_shard=2))
    s.append(np.ones((5, 3)), list("abcde"))
    s.commit(progress={"done": 5})
    s.append(np.ones((30, 3)), [f"x{i}" for i in range(30)])  # flushes whole shards, not committed
    r = FeatureStore.open(tmp_path / "s.zarr")
    assert r.rows == 5 and r.progress == {"done": 5}
    assert np.asarray(zarr.open_array(str(tmp_path / "s.zarr" / "vectors"), mode="r")).shape == (5, 3)
    s.close()  # dropped
    w = FeatureStore.open(tmp_path / "s.zarr", mode="a")
    assert w.rows == 5
    w.append(np.full((2, 3), 2.0), ["f", "g"])
    w.commit()
    assert FeatureStore.open(tmp_path / "s.zarr").read_ids().tolist() == list("abcdefg")


def test_attrs_and_info(tmp_path: Path) -> None:
    cfg = StoreConfig(modality="image", dim=4, normalized=True, encoder="tiny-clip@abc")
    with FeatureStore.create(tmp_path / "s.zarr", cfg, attrs={"source": "unit"}) as s:
        s.append(np.eye(4), list("abcd"))
        s.set_attrs(alignment={"method": "none"})
    r = FeatureStore.open(tmp_path / "s.zarr")
    assert r.attrs == {"source": "unit", "alignment": {"method": "none"}}
    info = r.info()
    assert (info["rows"], info["dim"], info["dtype"], info["modality"]) == (4, 4, "float16", "image")
    assert info["chunk_bytes"] >= 1 << 20  # auto chunking: whole rows, at least 1 MiB
    assert info["encoder"] == "tiny-clip@abc" and info["normalized"] is True


def test_bad_use_is_refused(tmp_path: Path) -> None:
    cfg = StoreConfig(modality="text", dim=3)
    s = FeatureStore.create(tmp_path / "s.zarr", cfg, metadata_columns={"caption": "str"})
    with pytest.raises(StoreError, match="already exists"):
        FeatureStore.create(tmp_path / "s.zarr", cfg)
    with pytest.raises(StoreError, match="dim 3"):
        s.append(np.zeros((2, 4)), ["a", "b"], {"caption": ["", ""]})
    with pytest.raises(StoreError, match="ids"):
        s.append(np.zeros((2, 3)), ["a"], {"caption": ["", ""]})
    with pytest.raises(StoreError, match="missing"):
        s.append(np.zeros((2, 3)), ["a", "b"])
    with pytest.raises(StoreError, match="non-string"):
        s.append(np.zeros((1, 3)), ["a"], {"caption": [3]})
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a feature store"):
        FeatureStore.open(tmp_path / "plain")
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    with pytest.raises(StoreError, match="not a revision feature store"):
        FeatureStore.open(tmp_path / "g.zarr")
    with pytest.raises(StoreError, match="read-only"):
        FeatureStore.open(tmp_path / "s.zarr").append(np.zeros((1, 3)), ["a"], {"caption": [""]})
    with pytest.raises(ValueError, match="--dtype"):
        StoreConfig(modality="text", dim=3, dtype="int8")
    with pytest.raises(ValueError, match="--modality"):
        StoreConfig(modality="audio", dim=3)
