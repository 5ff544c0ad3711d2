"""Duplicate-id buckets: equal to a set-based reference, bounded by a budget, never fooled by hash collisions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from revision.store import idcheck
from revision.store.idcheck import FROM_DEST, DuplicateIds, IdBuckets, pack_src, unpack_src


def _first_duplicate_reference(ids: list[str]) -> str | None:
    seen: set[str] = set()
    dups = [i for i in ids if i in seen or seen.add(i)]  # type: ignore[func-returns-value]
    return dups[0] if dups else None


def _run(root: Path, ids: list[str], block: int, budget: int) -> str | None:
    buckets = IdBuckets(root)
    try:
        for lo in range(0, len(ids), block):
            part = ids[lo : lo + block]
            buckets.add(part, lo, pack_src(0, np.arange(lo, lo + len(part))))
        buckets.check(lambda row, src: ids[row], budget_bytes=budget)
    except DuplicateIds as exc:
        a, b = exc.first, exc.second
        assert ids[a[0]] == ids[b[0]] == exc.ident and a[0] != b[0]
        assert unpack_src(a[1]) == (0, a[0]) and unpack_src(b[1]) == (0, b[0])
        return exc.ident
    finally:
        buckets.remove()
    return None


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ids=st.lists(st.text(min_size=0, max_size=12), min_size=0, max_size=300),
    block=st.integers(1, 64),
    budget=st.sampled_from([24, 240, 1 << 20]),  # tiny budgets force on-disk splitting
)
def test_duplicates_found_exactly_when_the_reference_finds_them(
    tmp_path_factory: pytest.TempPathFactory, ids: list[str], block: int, budget: int
) -> None:
    got = _run(tmp_path_factory.mktemp("ids"), ids, block, budget)
    want = _first_duplicate_reference(ids)
    assert (got is None) == (want is None), (got, want)
    if got is not None:
        assert ids.count(got) > 1


def test_hash_collisions_are_confirmed_by_the_strings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every id hashes alike: only the string comparison can tell them apart.
    monkeypatch.setattr(idcheck, "hash_ids", lambda ids: np.full(len(ids), 12345, dtype=np.uint64))
    ids = [f"id{i}" for i in range(50)]
    assert _run(tmp_path / "a", ids, 7, 1 << 20) is None
    assert _run(tmp_path / "b", [*ids, "id17"], 7, 1 << 20) == "id17"


def test_a_hash_only_check_would_be_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deliberately wrong: confirming by hash alone rejects good input once hashes collide."""
    monkeypatch.setattr(idcheck, "hash_ids", lambda ids: np.full(len(ids), 7, dtype=np.uint64))
    buckets = IdBuckets(tmp_path / "w")
    buckets.add(["a"], 0, pack_src(0, np.arange(1)))
    buckets.add(["b"], 1, pack_src(0, np.arange(1, 2)))
    with pytest.raises(DuplicateIds):
        buckets.check(lambda row, src: "same")  # an id_of that ignores the rows: hash-only in effect
    buckets.check(lambda row, src: "ab"[row])  # the real strings: no duplicate


def test_truncate_forgets_uncommitted_rows_and_dest_rows_are_named(tmp_path: Path) -> None:
    ids = [f"x{i}" for i in range(40)]
    buckets = IdBuckets(tmp_path / "t")
    buckets.add(ids[:20], 0, np.full(20, FROM_DEST, dtype=np.int64))
    buckets.add(ids[20:], 20, pack_src(3, np.arange(20)))
    buckets.add(["x5"], 40, pack_src(4, np.arange(1)))  # a duplicate written after the last commit
    buckets.truncate(40)
    buckets.check(lambda row, src: ids[row])
    buckets.add(["x5"], 40, pack_src(4, np.array([9])))
    with pytest.raises(DuplicateIds) as info:
        buckets.check(lambda row, src: (ids + ["x5"])[row])
    assert info.value.first == (5, FROM_DEST) and info.value.second[0] == 40
    assert unpack_src(info.value.second[1]) == (4, 9)
