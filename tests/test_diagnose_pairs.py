"""Pair resolution: identity detection across chunkings, id matching on a sample, pairs files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revision.commands.diagnose import _aligned
from revision.diagnose.pairs import pairs_by_ids, pairs_from_file
from revision.diagnose.sources import ArraySource, sample_indices
from revision.errors import UserError


def source(ids: list[str], block: int, dim: int = 3) -> ArraySource:
    return ArraySource(np.zeros((len(ids), dim), np.float32), ids, block=block)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 400), block_a=st.integers(1, 70), block_b=st.integers(1, 70))
def test_identity_is_found_whatever_the_chunking(n: int, block_a: int, block_b: int) -> None:
    ids = [f"s{j}" for j in range(n)]
    ps = pairs_by_ids(source(ids, block_a), source(ids, block_b), sample=50, seed=0)
    assert ps.kind == "identity" and ps.candidates == n
    assert np.array_equal(ps.text_rows, ps.image_rows)
    assert np.array_equal(ps.text_rows, sample_indices(n, min(50, n), 0))
    if n > 1:
        # One differing id anywhere, and it is no longer the identity.
        other = list(ids)
        other[n // 2] = "changed"
        assert pairs_by_ids(source(ids, block_a), source(other, block_b), sample=n, seed=0).kind == "ids"


def test_shuffled_ids_are_matched_on_the_sample() -> None:
    rng = np.random.default_rng(0)
    n = 300
    text_ids = [f"s{j}" for j in range(n)]
    perm = rng.permutation(n)
    image_ids = [text_ids[p] for p in perm] + ["s5"]  # s5 has two images
    ps = pairs_by_ids(source(text_ids, 32), source(image_ids, 17), sample=100, seed=3)
    assert ps.kind == "ids"
    for t, i in zip(ps.text_rows.tolist(), ps.image_rows.tolist(), strict=True):
        assert text_ids[t] == image_ids[i]
    sampled = set(sample_indices(n, 100, 3).tolist())
    assert set(ps.text_rows.tolist()) == sampled
    assert ps.size == 100 + (5 in sampled)


def test_pairs_file_csv_tsv_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    text_ids = [f"t{j}" for j in range(40)]
    image_ids = [f"i{j}" for j in range(30)]
    pairs = [(f"t{j}", f"i{(7 * j) % 30}") for j in range(40)] + [("t1", "missing")]
    csv = tmp_path / "p.csv"
    csv.write_text("image_id,text_id\n" + "".join(f"{i},{t}\n" for t, i in pairs))
    tsv = tmp_path / "p.tsv"
    tsv.write_text("text_id\timage_id\n" + "".join(f"{t}\t{i}\n" for t, i in pairs))
    par = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text_id": [t for t, _ in pairs], "image_id": [i for _, i in pairs]}), par)
    results = [pairs_from_file(p, source(text_ids, 8), source(image_ids, 5), sample=1000, seed=0)
               for p in (csv, tsv, par)]  # fmt: skip
    for ps in results:
        assert ps.kind == "file" and ps.candidates == 41 and ps.unmatched == 1 and ps.size == 40
        got = sorted(zip(ps.text_rows.tolist(), ps.image_rows.tolist(), strict=True))
        assert got == sorted((j, (7 * j) % 30) for j in range(40))
    small = pairs_from_file(csv, source(text_ids, 8), source(image_ids, 5), sample=10, seed=1)
    assert small.size + small.unmatched == 10


def test_pairs_file_errors(tmp_path: Path) -> None:
    src = source(["a", "b"], 1)
    with pytest.raises(UserError, match="no such file"):
        pairs_from_file(tmp_path / "none.csv", src, src, sample=5, seed=0)
    bad = tmp_path / "bad.csv"
    bad.write_text("left,right\na,b\n")
    with pytest.raises(UserError, match="text_id, image_id"):
        pairs_from_file(bad, src, src, sample=5, seed=0)
    wrong = tmp_path / "p.json"
    wrong.write_text("{}")
    with pytest.raises(UserError, match=r"\.csv, \.tsv or \.parquet"):
        pairs_from_file(wrong, src, src, sample=5, seed=0)


def test_aligned_flag_names() -> None:
    assert _aligned(["/x/realign.zarr/"]) == {"realign": "/x/realign.zarr/"}
    assert _aligned(["c3=/a/b.zarr", "ms=/a/c.zarr"]) == {"c3": "/a/b.zarr", "ms": "/a/c.zarr"}
    with pytest.raises(UserError, match="given twice"):
        _aligned(["/a/x.zarr", "/b/x.zarr"])
    assert _aligned(None) is None
