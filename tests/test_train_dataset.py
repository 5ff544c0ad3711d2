"""FeatureDataset + loader: id join, missing ids, collate, multi-worker loading, resume, ReAlign transform."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from revision.store import FeatureStore, StoreConfig
from revision.store.memmap import export_memmap
from revision.train import (
    DataError,
    FeatureCollate,
    FeatureDataset,
    FeatureView,
    LoaderConfig,
    RealignTransform,
    make_loader,
)

GOLDEN = Path(__file__).parent / "data" / "golden" / "small-d64"


def make_view(tmp: Path, x: np.ndarray, ids: list[str], dtype: str = "float16") -> FeatureView:
    cfg = StoreConfig(modality="text", dim=x.shape[1], dtype=dtype, chunk_rows=32, chunks_per_shard=4)
    with FeatureStore.create(tmp / "s.zarr", cfg) as s:
        s.append(x, ids)
    export_memmap(FeatureStore.open(tmp / "s.zarr"), tmp / "mm", show_progress=False)
    return FeatureView.open(tmp / "mm")


def llava_records(ids: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "caption": f"caption of {i} with {{braces}}",
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe."},
                {"from": "gpt", "value": f"caption of {i}"},
            ],
        }
        for i in ids
    ]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, np.ndarray, FeatureView]:
    n, d = 1500, 24
    x = np.random.default_rng(1).standard_normal((n, d)).astype(np.float32)
    view = make_view(tmp_path, x, [str(i) for i in range(n)])
    # Annotation order is not feature order; some ids are ints, as in real LLaVA files.
    order = np.random.default_rng(2).permutation(n)
    recs = llava_records([int(i) if i % 2 else str(i) for i in order])
    (tmp_path / "ann.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return tmp_path, x.astype(np.float16).astype(np.float32), view


def test_join_and_items(setup: tuple[Path, np.ndarray, FeatureView]) -> None:
    tmp, x16, view = setup
    ds = FeatureDataset(tmp / "ann.jsonl", view, block_records=100)
    assert len(ds) == 1500 and ds.report.missing == 0
    item = ds[7]
    assert item["row"] == int(item["id"])
    assert item["conversations"][0]["value"].startswith("<image>")
    assert ds[-1] == ds[1499]
    with pytest.raises(IndexError):
        ds[1500]


def test_missing_ids_error_or_skip(tmp_path: Path) -> None:
    x = np.ones((10, 4), np.float32)
    view = make_view(tmp_path, x, [f"k{i}" for i in range(10)])
    ids = ["k0", "gone-1", "k5", "gone-2", "k9"]
    (tmp_path / "a.json").write_text(json.dumps(llava_records(ids)))
    with pytest.raises(DataError, match=r"a\.json: record 1: id 'gone-1' is not in the feature view"):
        FeatureDataset(tmp_path / "a.json", view)
    ds = FeatureDataset(tmp_path / "a.json", view, on_missing="skip")
    assert (ds.report.records, ds.report.matched, ds.report.missing) == (5, 3, 2)
    assert ds.report.missing_examples == ("gone-1", "gone-2")
    assert "2 skipped" in ds.report.summary()
    assert [ds[i]["id"] for i in range(3)] == ["k0", "k5", "k9"]
    assert ds.sample_rows.tolist() == [0, 5, 9]
    with pytest.raises(DataError, match="--on-missing"):
        FeatureDataset(tmp_path / "a.json", view, on_missing="ignore")
    (tmp_path / "b.json").write_text(json.dumps([{"caption": "no id"}]))
    with pytest.raises(DataError, match="record 0 has no 'id' field"):
        FeatureDataset(tmp_path / "b.json", view)


def test_collate(setup: tuple[Path, np.ndarray, FeatureView]) -> None:
    tmp, x16, view = setup
    ds = FeatureDataset(tmp / "ann.jsonl", view)
    batch = FeatureCollate(view)(ds.__getitems__([3, 0, 3]))
    rows = batch["rows"].numpy()
    assert batch["embeds"].dtype == torch.float32 and batch["embeds"].shape == (3, 24)
    assert torch.equal(batch["embeds"], torch.from_numpy(x16[rows]))
    assert batch["ids"] == [str(r) for r in rows]
    assert batch["caption"][0] == f"caption of {rows[0]} with {{braces}}"
    assert len(batch["conversations"]) == 3
    bf = FeatureCollate(view, dtype=torch.bfloat16)(ds.__getitems__([1]))
    assert bf["embeds"].dtype == torch.bfloat16


def collect(loader: Any) -> list[dict[str, Any]]:
    return list(loader)


def assert_batches_equal(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert len(a) == len(b), f"{len(a)} vs {len(b)} batches"
    for k, (x, y) in enumerate(zip(a, b, strict=True)):
        assert torch.equal(x["rows"], y["rows"]), f"batch {k}: different samples"
        assert torch.equal(x["embeds"], y["embeds"]), f"batch {k}: max diff {(x['embeds'] - y['embeds']).abs().max()}"
        assert x["ids"] == y["ids"]


def test_multi_worker_loading_equals_single_process(setup: tuple[Path, np.ndarray, FeatureView]) -> None:
    tmp, x16, view = setup
    ds = FeatureDataset(tmp / "ann.jsonl", view)
    cfg = LoaderConfig(batch_size=100, block_size=64, window_blocks=3, seed=7)
    single = collect(make_loader(ds, cfg))
    multi = collect(make_loader(ds, LoaderConfig(**{**cfg.__dict__, "num_workers": 2})))
    assert_batches_equal(single, multi)
    rows = torch.cat([b["rows"] for b in multi]).numpy()
    assert np.array_equal(np.sort(rows), np.arange(1500)), "an epoch must visit every sample once"
    for b in multi:
        assert torch.equal(b["embeds"], torch.from_numpy(x16[b["rows"].numpy()]))


def test_resume_from_step(setup: tuple[Path, np.ndarray, FeatureView]) -> None:
    tmp, _, view = setup
    ds = FeatureDataset(tmp / "ann.jsonl", view)
    cfg = LoaderConfig(batch_size=64, block_size=100, seed=3)
    full = collect(make_loader(ds, cfg, epoch=2))
    resumed = collect(make_loader(ds, cfg, epoch=2, start_step=9))
    assert_batches_equal(full[9:], resumed)
    assert not torch.equal(collect(make_loader(ds, cfg, epoch=3))[0]["rows"], full[0]["rows"])


def test_data_parallel_ranks_partition_an_epoch(setup: tuple[Path, np.ndarray, FeatureView]) -> None:
    tmp, x16, view = setup
    ds = FeatureDataset(tmp / "ann.jsonl", view)
    cfg = LoaderConfig(batch_size=64, block_size=100, seed=5)
    ranks = [collect(make_loader(ds, cfg, rank=r, world_size=4)) for r in range(4)]
    assert len({len(batches) for batches in ranks}) == 1, "ranks must see the same number of batches"
    rows = np.concatenate([torch.cat([b["rows"] for b in batches]).numpy() for batches in ranks])
    assert set(rows.tolist()) == set(range(1500)) and rows.size == 1500  # 1500 = 4 * 375: no padding
    resumed = collect(make_loader(ds, cfg, rank=2, world_size=4, start_step=3))
    assert_batches_equal(ranks[2][3:], resumed)


def test_row_order_only_when_needed(setup: tuple[Path, np.ndarray, FeatureView]) -> None:
    tmp, _, view = setup
    shuffled = FeatureDataset(tmp / "ann.jsonl", view)
    order = shuffled.row_order(block=100)
    assert order is not None and np.array_equal(shuffled.sample_rows[order], np.arange(1500))
    (tmp / "sorted.json").write_text(json.dumps(llava_records([str(i) for i in range(1500)])))
    assert FeatureDataset(tmp / "sorted.json", view).row_order(block=100) is None


def test_dataset_pickles_small(setup: tuple[Path, np.ndarray, FeatureView]) -> None:
    tmp, _, view = setup
    ds = FeatureDataset(tmp / "ann.jsonl", view)
    blob = pickle.dumps(ds)
    assert len(blob) < 1500 * 40, f"pickled dataset is {len(blob)} bytes"
    assert pickle.loads(blob)[5] == ds[5]


def load_pickles(folder: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.pkl")):
        with open(path, "rb") as fh:
            out.extend(pickle.load(fh))
    return out


def test_collate_time_realign_matches_the_reference_output(tmp_path: Path) -> None:
    """The golden case: raw text features + frozen stats at collate time == the reference's aligned rows."""
    inputs = load_pickles(GOLDEN / "input" / "text")
    expected = {r["id"]: r["embed"] for r in load_pickles(GOLDEN / "expected" / "trace")}
    with open(GOLDEN / "expected" / "trace_stats.pkl", "rb") as fh:
        stats = pickle.load(fh)
    ids = [r["id"] for r in inputs]
    view = make_view(tmp_path, np.stack([r["embed"] for r in inputs]), ids, dtype="float16")
    (tmp_path / "ann.json").write_text(json.dumps(llava_records(ids[::-1])))
    ds = FeatureDataset(tmp_path / "ann.json", view)
    transform = RealignTransform.from_stats(stats)
    loader = make_loader(ds, LoaderConfig(batch_size=256, num_workers=1), transform=transform)
    seen = 0
    for batch in loader:
        want = torch.from_numpy(np.stack([expected[i] for i in batch["ids"]]))
        err = (batch["embeds"] - want).abs()
        assert err.max().item() < 1e-5, f"max diff {err.max().item():.3g}, mean {err.mean().item():.3g}"
        seen += len(batch["ids"])
    assert seen == len(ids)
    # The check bites: feeding the raw (un-aligned) rows is far from the reference output.
    raw = FeatureCollate(view)(ds.__getitems__(range(64)))
    want = torch.from_numpy(np.stack([expected[i] for i in raw["ids"]]))
    assert (raw["embeds"] - want).abs().max().item() > 1e-2


def test_transform_accepts_the_stats_file_and_object_shapes() -> None:
    from types import SimpleNamespace

    with open(GOLDEN / "expected" / "trace_stats.pkl", "rb") as fh:
        ref = pickle.load(fh)
    vectors = {"mu_t": ref["mu_txt"].tolist(), "mu_i": ref["mu_img"].tolist(), "mu_hat": ref["mu_hat"].tolist()}
    as_file = {"method": "realign", "scale": ref["scale"], "vectors": vectors}
    as_object = SimpleNamespace(method="realign", matrix=None, scale=ref["scale"], **vectors)
    y = torch.from_numpy(np.random.default_rng(0).standard_normal((9, 64)).astype(np.float32))
    want = RealignTransform.from_stats(ref)(y)
    assert torch.equal(RealignTransform.from_stats(as_file)(y), want)
    assert torch.equal(RealignTransform.from_stats(as_object)(y), want)
    # realign-ot: the matrix s·I is the plain scale.
    as_ot = {**as_file, "method": "realign-ot", "matrix": (np.eye(64) * ref["scale"]).tolist()}
    err = (RealignTransform.from_stats(as_ot)(y) - want).abs().max().item()
    assert err < 1e-6, f"matrix path differs by {err}"
    with pytest.raises(ValueError, match="method 'c3'"):
        RealignTransform.from_stats({**as_file, "method": "c3"})
    with pytest.raises(KeyError, match="centroid"):
        RealignTransform.from_stats({**as_file, "vectors": {**vectors, "mu_hat": None}})


def test_transform_rejects_bad_stats() -> None:
    d = 4
    good = {"mu_t": np.zeros(d), "mu_i": np.ones(d) / 2, "scale": 1.0, "mu_hat": np.zeros(d)}
    RealignTransform.from_stats(good)
    with pytest.raises(KeyError, match="mu_hat"):
        RealignTransform.from_stats({k: v for k, v in good.items() if k != "mu_hat"})
    with pytest.raises(ValueError, match="scale"):
        RealignTransform.from_stats({**good, "scale": float("nan")})
    with pytest.raises(ValueError, match="one D"):
        RealignTransform.from_stats({**good, "mu_hat": np.zeros(d + 1)})
    with pytest.raises(ValueError, match="shape"):
        RealignTransform.from_stats(good)(torch.zeros(2, d + 1))


@pytest.mark.slow
def test_spawned_workers_open_their_own_files(setup: tuple[Path, np.ndarray, FeatureView]) -> None:
    """With spawn (no inherited memory), workers get the view and the index by path and still agree."""
    tmp, _, view = setup
    ds = FeatureDataset(tmp / "ann.jsonl", view)
    cfg = LoaderConfig(batch_size=300, block_size=64, seed=1)
    single = collect(make_loader(ds, cfg))
    spawned = collect(
        make_loader(ds, LoaderConfig(**{**cfg.__dict__, "num_workers": 2}), multiprocessing_context="spawn")
    )
    assert_batches_equal(single, spawned)
