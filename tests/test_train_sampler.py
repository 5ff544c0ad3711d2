"""BlockShuffleSampler: a permutation, seeded, page-friendly, and resumable at any step."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revision.train import BlockShuffleSampler


def order_of(s: BlockShuffleSampler) -> np.ndarray:
    return np.fromiter(iter(s), np.int64)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 3000),
    block=st.integers(1, 300),
    window=st.integers(1, 6),
    seed=st.integers(0, 2**32),
    start=st.floats(0, 1),
)
def test_permutation_and_resume_from_any_position(n: int, block: int, window: int, seed: int, start: float) -> None:
    full = order_of(BlockShuffleSampler(n, block_size=block, window_blocks=window, seed=seed))
    assert np.array_equal(np.sort(full), np.arange(n)), "not a permutation"
    k = int(start * n)
    tail = order_of(BlockShuffleSampler(n, block_size=block, window_blocks=window, seed=seed, start=k))
    bad = np.flatnonzero(tail != full[k:]) if len(tail) == n - k else np.array([-1])
    assert bad.size == 0, f"resume at {k} of {n} differs from the uninterrupted order at {bad[:5]}"


def test_seed_and_epoch_change_the_order() -> None:
    a = order_of(BlockShuffleSampler(5000, seed=1))
    assert np.array_equal(a, order_of(BlockShuffleSampler(5000, seed=1)))
    assert not np.array_equal(a, order_of(BlockShuffleSampler(5000, seed=2)))
    s = BlockShuffleSampler(5000, seed=1)
    s.set_epoch(1)
    assert not np.array_equal(a, order_of(s))


def test_batches_stay_within_a_few_blocks() -> None:
    block, window, batch = 256, 4, 64
    order = order_of(BlockShuffleSampler(100_000, block_size=block, window_blocks=window, seed=3))
    blocks_per_batch = [len(np.unique(order[i : i + batch] // block)) for i in range(0, len(order), batch)]
    assert max(blocks_per_batch) <= window * 2  # a batch may straddle two windows
    assert np.mean(blocks_per_batch) > 2  # but it does mix blocks
    # A plain permutation touches a new block for nearly every sample.
    plain = np.random.default_rng(0).permutation(100_000)
    assert np.mean([len(np.unique(plain[i : i + batch] // block)) for i in range(0, 100_000, batch)]) > 50


def test_order_maps_positions() -> None:
    order = np.arange(1000)[::-1].copy()
    plain = order_of(BlockShuffleSampler(1000, seed=5))
    mapped = order_of(BlockShuffleSampler(1000, seed=5, order=order))
    assert np.array_equal(mapped, order[plain])


def test_resume_from_step_and_state_dict() -> None:
    n, batch = 1000, 64
    s = BlockShuffleSampler(n, block_size=50, seed=9)
    full0 = order_of(s)
    s.set_epoch(1)
    full1 = order_of(s)
    steps_per_epoch = -(-n // batch)
    r = BlockShuffleSampler(n, block_size=50, seed=9)
    r.load_state_dict(s.state_dict(step=steps_per_epoch + 3, batch_size=batch))
    assert r.epoch == 1
    assert np.array_equal(order_of(r), full1[3 * batch :])
    r.resume(5, batch)
    assert np.array_equal(order_of(r), full0[5 * batch :])
    with pytest.raises(ValueError, match="seed"):
        BlockShuffleSampler(n, seed=1).load_state_dict(s.state_dict(0, batch))


def test_wrong_resume_is_rejected() -> None:
    """Restarting the shuffle with fewer samples (a common resume bug) is not the same order."""
    n, k = 2000, 300
    full = order_of(BlockShuffleSampler(n, block_size=100, seed=4))
    wrong = order_of(BlockShuffleSampler(n - k, block_size=100, seed=4)) + k
    assert not np.array_equal(wrong, full[k:])


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 700),
    block=st.integers(1, 50),
    window=st.integers(1, 4),
    world=st.integers(1, 5),
    start=st.floats(0, 1),
)
def test_ranks_split_one_global_order(n: int, block: int, window: int, world: int, start: float) -> None:
    kw = {"block_size": block, "window_blocks": window, "seed": 11, "world_size": world}
    full = order_of(BlockShuffleSampler(n, block_size=block, window_blocks=window, seed=11))
    padded = np.resize(full, n + (-n) % world)  # padded cyclically with the order's first positions
    per_rank = [order_of(BlockShuffleSampler(n, rank=r, **kw)) for r in range(world)]
    for r, got in enumerate(per_rank):
        assert np.array_equal(got, padded[r::world]), f"rank {r} of {world} does not interleave the global order"
        assert len(BlockShuffleSampler(n, rank=r, **kw)) == len(got) == len(padded) // world
    assert set(np.concatenate(per_rank).tolist()) == set(range(n))
    k = int(start * len(padded)) // world * world  # resume points are whole global steps
    for r in range(world):
        s = BlockShuffleSampler(n, rank=r, start=k, **kw)
        got = order_of(s)
        assert np.array_equal(got, padded[k + r :: world]), f"rank {r} resumed at {k} differs"
        assert len(s) == len(got)


def test_fewer_samples_than_ranks() -> None:
    got = [order_of(BlockShuffleSampler(2, rank=r, world_size=5)) for r in range(5)]
    assert all(len(g) == 1 for g in got)
    assert sorted(int(g[0]) for g in got[:2]) == [0, 1]


def test_rank_resume_from_step() -> None:
    n, batch, world = 1001, 16, 3
    kw = {"block_size": 40, "seed": 2, "world_size": world}
    full = [order_of(BlockShuffleSampler(n, rank=r, **kw)) for r in range(world)]
    for r in range(world):
        s = BlockShuffleSampler(n, rank=r, **kw)
        s.load_state_dict({"seed": 2, "epoch": 0, "step": 7, "batch_size": batch, "world_size": world})
        assert np.array_equal(order_of(s), full[r][7 * batch :])
    with pytest.raises(ValueError, match="world_size 2"):
        BlockShuffleSampler(n, **kw).load_state_dict({"seed": 2, "step": 1, "batch_size": batch, "world_size": 2})


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rank"):
        BlockShuffleSampler(10, rank=2, world_size=2)
    with pytest.raises(ValueError, match="block_size"):
        BlockShuffleSampler(10, block_size=0)
    with pytest.raises(ValueError, match="start"):
        BlockShuffleSampler(10, start=11)
    with pytest.raises(ValueError, match="order"):
        BlockShuffleSampler(10, order=np.arange(3))
