"""Batch cutting of `revision embed`: every item exactly once, in a layout that depends only on input
order; rank slices partition the items on group boundaries; end to end, any batch and commit size
gives the rows of a one-item-at-a-time run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from revision.embed.batches import TextBatches
from revision.embed.config import EmbedConfig
from revision.embed.dist import DistInfo
from revision.embed.encoders import TextPreprocessor, features_of
from revision.embed.runner import rank_range, run_embed
from revision.embed.sources import DatasetSource
from revision.embed.tiny import build_tiny_clip
from revision.store import FeatureStore

_SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("m") / "clip", seed=7)


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> TextPreprocessor:
    from transformers import AutoTokenizer

    return TextPreprocessor(AutoTokenizer.from_pretrained(model_dir, local_files_only=True), max_length=32)


@_SETTINGS
@given(n=st.integers(0, 500), group=st.integers(1, 64), world=st.integers(1, 9))
def test_rank_slices_partition_on_group_boundaries(n: int, group: int, world: int) -> None:
    slices = [rank_range(n, group, DistInfo(rank=r, world=world, local_rank=r)) for r in range(world)]
    assert slices[0][0] == 0 and slices[-1][1] == n
    for (_, a1), (b0, _) in zip(slices, slices[1:], strict=False):
        assert a1 == b0, f"gap or overlap between slices: {slices}"
    for s0, s1 in slices:
        assert s0 <= s1 and s0 % group == 0, f"slice {s0}:{s1} not group-aligned ({group})"


def _texts(words: list[int]) -> list[str]:
    return [" ".join(["cat"] * k) for k in words]


@settings(_SETTINGS, max_examples=30)
@given(
    lengths=st.lists(st.integers(0, 12), min_size=1, max_size=40),
    batch=st.integers(1, 9),
    group_batches=st.integers(1, 4),
    start_group=st.integers(0, 3),
)
def test_text_units_cover_each_item_once_longest_first(
    tmp_path: Path, tokenizer: TextPreprocessor, lengths: list[int], batch: int, group_batches: int, start_group: int
) -> None:
    texts = _texts(lengths)
    data = tmp_path / "d.json"
    data.write_text(json.dumps({"texts": [{"id": f"t{i}", "text": t} for i, t in enumerate(texts)]}))
    src = DatasetSource.open(data)
    group = batch * group_batches
    start = min(start_group * group, len(texts))
    units = list(TextBatches(src, tokenizer, start, len(texts), batch, group))
    seen: list[int] = []
    for unit in units:
        assert unit.start % group == 0 and unit.count <= group
        got = sorted(p for pos, _ in unit.batches for p in pos)
        assert got == list(range(len(unit.ok))), "each good text in exactly one batch"
        for pos, inputs in unit.batches:
            assert 1 <= len(pos) <= batch and inputs["input_ids"].shape[0] == len(pos)
        order = [p for pos, _ in unit.batches for p in pos]
        lens = [len(unit.ok[p].value) for p in order]
        assert lens == sorted(lens, reverse=True), "batches must run longest first"
        assert all(not f.value.strip() for f in unit.failures)
        seen += [it.index for it in unit.ok] + [f.index for f in unit.failures]
    assert sorted(seen) == list(range(start, len(texts)))


def _reference(model_dir: Path, texts: list[str]) -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    with torch.inference_mode():
        rows = [features_of(model.get_text_features(**tok([t], return_tensors="pt")), "text")[0] for t in texts]
    mat = torch.stack(rows).double().numpy()
    return mat / np.linalg.norm(mat, axis=1, keepdims=True)


_TEXTS = _texts([int(k) for k in np.random.default_rng(11).integers(1, 14, size=17)])


@pytest.fixture(scope="module")
def reference_rows(model_dir: Path) -> np.ndarray:
    return _reference(model_dir, _TEXTS)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, 7), group_batches=st.integers(1, 3))
def test_any_batching_gives_the_one_at_a_time_rows(
    tmp_path_factory: pytest.TempPathFactory,
    model_dir: Path,
    reference_rows: np.ndarray,
    batch: int,
    group_batches: int,
) -> None:
    tmp = tmp_path_factory.mktemp("run")
    data = tmp / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(_TEXTS)))
    cfg = EmbedConfig(
        data=data,
        out=tmp / "out",
        model=str(model_dir),
        modality="text",
        batch_size=batch,
        group_batches=group_batches,
        workers=0,
        store_dtype="float32",
        progress=False,
    )
    run_embed(cfg)
    got = FeatureStore.open(tmp / "out" / "text.zarr").read()
    diff = np.abs(got - reference_rows)
    row = int(diff.max(axis=1).argmax())
    where = f"batch {batch}, group {group_batches}"
    assert diff.max() < 1e-5, f"{where}: max {diff.max():.3g} (row {row}), mean {diff.mean():.3g}"
