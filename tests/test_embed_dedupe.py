"""Duplicate-id detection: in memory and spilled to buckets, exact even when 64-bit hashes collide."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import revision.embed.dedupe as dedupe
from revision.embed.dedupe import find_duplicate


def _reference(ids: list[str]) -> tuple[int, tuple[str, int, int] | None]:
    """The simple answer: the first id whose second occurrence comes earliest."""
    seen: dict[str, int] = {}
    for pos, ident in enumerate(ids):
        if ident in seen:
            return len(ids), (ident, seen[ident], pos)
        seen[ident] = pos
    return len(ids), None


_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_SETTINGS
@given(ids=st.lists(st.text(alphabet="abc", min_size=1, max_size=3), max_size=60), mem=st.integers(2, 40))
def test_matches_reference(tmp_path: Path, ids: list[str], mem: int) -> None:
    got = find_duplicate(lambda: iter(ids), mem_items=mem, workdir=tmp_path)
    want = _reference(ids)
    assert got[0] == want[0]
    assert (got[1] is None) == (want[1] is None), f"got {got}, want {want} for {ids}"
    if got[1] is not None:
        ident, a, b = got[1]
        assert ids[a] == ids[b] == ident and a < b
    assert list(tmp_path.iterdir()) == [], "spill files must be removed"


@_SETTINGS
@given(n=st.integers(0, 300), mem=st.integers(2, 50), dup=st.booleans())
def test_unique_ids_with_spilling(tmp_path: Path, n: int, mem: int, dup: bool) -> None:
    ids = [f"id-{i}" for i in range(n)]
    if dup and n > 1:
        ids.append(ids[n // 2])
    count, found = find_duplicate(lambda: iter(ids), mem_items=mem, workdir=tmp_path)
    assert count == len(ids)
    assert (found is not None) == (dup and n > 1)


def test_hash_collisions_are_not_reported_as_duplicates(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A hash with massive collisions: only the string comparison can tell the ids apart.
    monkeypatch.setattr(dedupe, "_hash64", lambda s: len(s))
    ids = ["ab", "cd", "ef", "abc", "xyz"]
    assert find_duplicate(lambda: iter(ids), mem_items=2, workdir=tmp_path) == (5, None)
    assert find_duplicate(lambda: iter([*ids, "cd"]), mem_items=2, workdir=tmp_path) == (6, ("cd", 1, 5))


def test_hash_only_check_would_be_rejected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The deliberately wrong variant: trust the hash candidates without comparing strings.
    monkeypatch.setattr(dedupe, "_hash64", lambda s: len(s))
    spill = dedupe._HashSpill(2, tmp_path)
    for s in ["ab", "cd"]:
        spill.add(dedupe._hash64(s))
    assert spill.candidates(), "a hash-only check would report these distinct ids as duplicates"
    spill.cleanup()
