"""ListPickleWriter: a list pickled batch by batch loads back equal to the list pickled whole."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revision.align.pickle_compat import ListPickleWriter
from revision.store.pickle_io import load_reference_pickle


def _records(n: int, dim: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(n)
    return [
        {
            "id": f"t{k}",
            "caption": "x" * (k % 5),
            "n": k,
            "score": k / 3,
            "embed": rng.normal(size=dim).astype(np.float32),
        }
        for k in range(n)
    ]


def _equal(a: list[dict[str, object]], b: list[dict[str, object]]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if list(x) != list(y):
            return False
        for k in x:
            if isinstance(x[k], np.ndarray):
                if not (x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k])):
                    return False
            elif x[k] != y[k] or type(x[k]) is not type(y[k]):
                return False
    return True


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 60), cuts=st.lists(st.integers(0, 60), max_size=6), dim=st.sampled_from([1, 3, 1280]))
def test_batched_pickle_loads_equal(
    tmp_path_factory: pytest.TempPathFactory, n: int, cuts: list[int], dim: int
) -> None:
    recs = _records(n, dim)
    path = tmp_path_factory.mktemp("w") / "out.pkl"
    w = ListPickleWriter(path)
    bounds = sorted({0, n, *(c for c in cuts if c <= n)})
    for s, e in zip(bounds, bounds[1:], strict=False):
        w.add(recs[s:e])
    w.close()
    assert _equal(load_reference_pickle(path), recs)  # the restricted unpickler admits it
    with open(path, "rb") as fh:
        assert _equal(pickle.load(fh), pickle.loads(pickle.dumps(recs, protocol=4)))


def test_equality_check_bites() -> None:
    recs = _records(3, 4)
    other = _records(3, 4)
    other[1]["embed"] = other[1]["embed"].astype(np.float64)
    assert not _equal(recs, other)


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    w = ListPickleWriter(tmp_path / "out.pkl")
    w.add(_records(2, 3))
    w.abort()
    assert list(tmp_path.iterdir()) == []
