"""The on-disk id index: build in runs + k-way merge equals a plain sort; lookups; forced collisions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from revision.store.idindex import IdIndex, IdIndexBuilder, encode_ids, hash_id_bytes, hash_ids

AWKWARD_IDS = ["", "a", "é", "日本語", "x" * 8, "y" * 9, "z" * 17, "a\x00b", "emoji 🙂", "tab\tid", "00000001", "z\x00"]


def build(tmp: Path, ids: list[str], *, block: int, run_rows: int, fanin: int = 64, hash_fn=hash_id_bytes) -> IdIndex:
    b = IdIndexBuilder(tmp, run_rows=run_rows, merge_fanin=fanin, hash_fn=hash_fn)
    for lo in range(0, len(ids), block):
        b.add(np.asarray(ids[lo : lo + block], dtype=object))
    b.finish(block_rows=max(2, run_rows // 2))
    return IdIndex.open(tmp, hash_fn)


def assert_rows(got: np.ndarray, want: np.ndarray) -> None:
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, (
        f"{bad.size} of {want.size} rows wrong, first at {bad[:5]}: got {got[bad[:5]]} want {want[bad[:5]]}"
    )


def test_hash_does_not_depend_on_padding_width() -> None:
    ids = AWKWARD_IDS
    together = hash_ids(ids)
    alone = np.concatenate([hash_ids([s]) for s in ids])
    assert np.array_equal(together, alone)
    assert len(set(together.tolist())) == len(ids)


def test_encode_is_exact_utf8() -> None:
    ids = ["ab", "ab\x00", "a\x00b", "", "é🙂"]
    enc = encode_ids(ids)
    assert enc.lens.tolist() == [len(s.encode()) for s in ids]
    mat = enc.padded()
    assert [bytes(mat[i, : enc.lens[i]]) for i in range(len(ids))] == [s.encode() for s in ids]
    assert not mat[0, 2:].any()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 400),
    block=st.integers(1, 200),
    run_rows=st.integers(1, 300),
    fanin=st.integers(2, 5),
)
def test_runs_and_merge_equal_a_plain_sort(tmp_path_factory, n: int, block: int, run_rows: int, fanin: int) -> None:
    tmp = tmp_path_factory.mktemp("idx")
    ids = [f"id-{i * 7919 % 100003}" for i in range(n)]
    index = build(tmp, ids, block=block, run_rows=run_rows, fanin=fanin)
    h = hash_ids(ids)
    order = np.argsort(h, kind="stable")
    assert np.array_equal(np.asarray(index.hashes), h[order])
    assert np.array_equal(np.asarray(index.rows), order)
    assert_rows(index.lookup(ids), np.arange(n))
    assert not list(tmp.glob("idindex-runs*")), "temporary runs left behind"


def test_lookup_every_awkward_id_and_missing(tmp_path: Path) -> None:
    ids = AWKWARD_IDS + [f"img_{i:07d}" for i in range(500)]
    index = build(tmp_path, ids, block=37, run_rows=64)
    assert_rows(index.lookup(ids), np.arange(len(ids)))
    assert_rows(index.lookup(np.array(ids[:5])), np.arange(5))  # a numpy unicode array works too
    queries = ["absent", "img_0000000 ", "ab", "a\x00", "a\x00b\x00", "IMG_0000001", "é"]  # near misses
    assert index.lookup(queries).tolist() == [-1, -1, -1, -1, -1, -1, ids.index("é")]
    assert index.ids([2, 3]) == ["é", "日本語"]


def test_nul_characters_are_part_of_the_id(tmp_path: Path) -> None:
    ids = ["a", "a\x00", "a\x00\x00", "\x00", ""]
    index = build(tmp_path, ids, block=2, run_rows=3)
    assert_rows(index.lookup(ids), np.arange(len(ids)))
    assert index.lookup(["a\x00\x00\x00", "\x00\x00"]).tolist() == [-1, -1]


def test_one_huge_id_does_not_blow_up_the_block(tmp_path: Path) -> None:
    ids = [f"s{i}" for i in range(3000)]
    ids[1234] = "L" * 5_000
    from revision.store.idindex import hash_encoded

    enc = encode_ids(ids)
    sliced = hash_encoded(enc, max_bytes=1 << 16)
    assert np.array_equal(sliced, hash_encoded(enc))
    index = build(tmp_path, ids, block=1000, run_rows=700)
    assert_rows(index.lookup(ids), np.arange(len(ids)))


def colliding_hash(mat: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Three buckets only: almost every id collides with others."""
    return (mat[:, 0].astype(np.uint64) + lens.astype(np.uint64)) % np.uint64(3)


def test_forced_collisions_resolve_by_id_bytes(tmp_path: Path) -> None:
    ids = [f"c{i}" for i in range(300)] + AWKWARD_IDS
    index = build(tmp_path, ids, block=50, run_rows=40, fanin=3, hash_fn=colliding_hash)
    assert len(np.unique(np.asarray(index.hashes))) <= 3
    assert_rows(index.lookup(ids), np.arange(len(ids)))
    assert index.lookup(["c300", "nope", "c-1"]).tolist() == [-1, -1, -1]
    # The check bites: trusting the hash alone (no id comparison) gets most rows wrong.
    naive = np.asarray(index.rows)[
        np.searchsorted(index.hashes, colliding_hash(encode_ids(ids).padded(), encode_ids(ids).lens))
    ]
    assert (naive != np.arange(len(ids))).mean() > 0.9


def test_duplicates_and_collisions_are_counted(tmp_path: Path) -> None:
    b = IdIndexBuilder(tmp_path, run_rows=4, hash_fn=colliding_hash)
    # buckets: a→2, b→0, c→1, dd→0, e→0; "a" repeats with "e" between it (bucket 0 has b, dd, e)
    b.add(["a", "b", "a", "c", "dd", "e", "b", "a"])
    stats = b.finish()
    assert stats.duplicate_ids == 3  # a twice more, b once more
    assert stats.hash_collisions == 2  # b, dd, e share a hash
    index = IdIndex.open(tmp_path, colliding_hash)
    assert index.lookup(["a"]).tolist() == [0]  # the first row of a repeated id


def test_empty_index(tmp_path: Path) -> None:
    b = IdIndexBuilder(tmp_path)
    stats = b.finish()
    assert stats.rows == 0
    index = IdIndex.open(tmp_path)
    assert len(index) == 0
    assert index.lookup(["x"]).tolist() == [-1]


def test_build_memory_is_bounded_by_runs_not_rows(tmp_path: Path) -> None:
    """Peak allocations while building grow with run_rows / block size, not with the number of ids."""
    import tracemalloc

    def peak(n: int, where: Path) -> int:
        tracemalloc.start()
        try:
            b = IdIndexBuilder(where, run_rows=2000, merge_fanin=4)
            for lo in range(0, n, 1000):
                b.add([f"id-{i:08d}" for i in range(lo, min(n, lo + 1000))])
            b.finish(block_rows=2000)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(10_000, tmp_path / "s"), peak(100_000, tmp_path / "l")
    assert large < 1.5 * small + (1 << 20), f"peak {large / 2**20:.1f} MiB for 100k ids vs {small / 2**20:.1f} for 10k"
    assert np.array_equal(IdIndex.open(tmp_path / "l").lookup(["id-00099999", "id-00000000"]), [99_999, 0])
