"""Results must not depend on how rows are chunked: per-row values bitwise, statistics to ~1e-12.

Random chunkings (hypothesis) of one matrix, each chunk through the fast torch path, merged,
against the whole matrix at once; and `merge_moments` against a float64 two-pass on the union.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import revision.kernels as K
from revision.kernels import rows_cpu
from revision.kernels.compare import assert_close

SETTINGS = settings(max_examples=20, deadline=None)


@pytest.fixture(autouse=True, scope="module")
def small_tiles() -> Iterator[None]:
    """16 KiB tiles: chunk and tile boundaries then fall at many different rows."""
    saved = rows_cpu.TILE_BYTES
    rows_cpu.TILE_BYTES = 16 * 1024
    yield
    rows_cpu.TILE_BYTES = saved


def _matrix(n: int, d: int, seed: int, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = 0.4 * torch.randn(n, d, generator=g) + torch.randn(d, generator=g)
    if n > 3:
        x[n // 3] = 0.0
    return x.to(dtype)


@st.composite
def chunked(draw: st.DrawFn) -> tuple[torch.Tensor, list[int]]:
    n = draw(st.integers(1, 900))
    d = draw(st.sampled_from([1, 3, 64, 130, 1030]))
    dtype = draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float32]))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, n - 1)), max_size=6))) - {n})
    x = _matrix(n, d, draw(st.integers(0, 2**16)), dtype)
    return x, [0, *cuts, n]


def _pieces(x: torch.Tensor, bounds: list[int]) -> list[tuple[int, torch.Tensor]]:
    return [(a, x[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@SETTINGS
@given(chunked())
def test_row_stats_chunking(case: tuple[torch.Tensor, list[int]]) -> None:
    x, bounds = case
    whole = K.row_stats(x)
    merged = K.Moments.empty(x.shape[1])
    for _, piece in _pieces(x, bounds):
        merged = K.merge_moments(merged, K.row_stats(piece))
    assert merged.n == whole.n
    assert _rel(merged.mean, whole.mean) < 1e-12, f"mean rel diff {_rel(merged.mean, whole.mean):.2e}"
    assert _rel(merged.m2, whole.m2) < 1e-12, f"m2 rel diff {_rel(merged.m2, whole.m2):.2e}"
    assert abs(merged.trace - whole.trace) <= 1e-12 * abs(whole.trace)


@SETTINGS
@given(chunked())
def test_realign_chunking(case: tuple[torch.Tensor, list[int]]) -> None:
    x, bounds = case
    d = x.shape[1]
    g = torch.Generator().manual_seed(d)
    mu_t, mu_i, mu_hat = 0.05 * torch.randn(3, d, generator=g, dtype=torch.float64)
    n_all, sum_all = K.realign_centroid(x, mu_t, mu_i, 1.21)
    out_all = K.realign_apply(x, mu_t, mu_i, 1.21, mu_hat)
    unit_all = K.normalize_rows(x)
    total = torch.zeros(d, dtype=torch.float64)
    for start, piece in _pieces(x, bounds):
        n, s = K.realign_centroid(piece, mu_t, mu_i, 1.21)
        total += s
        stop = start + n
        assert torch.equal(K.realign_apply(piece, mu_t, mu_i, 1.21, mu_hat), out_all[start:stop]), "apply rows"
        assert torch.equal(K.normalize_rows(piece), unit_all[start:stop]), "unit rows"
    assert _rel(total, sum_all) < 1e-12, f"Σ h rel diff {_rel(total, sum_all):.2e}"
    assert n_all == x.shape[0]


@SETTINGS
@given(chunked(), st.integers(0, 2**62))
def test_noise_chunking(case: tuple[torch.Tensor, list[int]], offset: int) -> None:
    """c3 / capdec rows depend on (seed, global row) only: chunks with their offsets give the whole."""
    x, bounds = case
    mu = torch.full((x.shape[1],), 0.01, dtype=torch.float64)
    c3_all = K.c3(x, mu, seed=5, row_offset=offset)
    capdec_all = K.capdec(x, seed=6, row_offset=offset)
    for start, piece in _pieces(x, bounds):
        stop = start + piece.shape[0]
        assert torch.equal(K.c3(piece, mu, seed=5, row_offset=offset + start), c3_all[start:stop])
        assert torch.equal(K.capdec(piece, seed=6, row_offset=offset + start), capdec_all[start:stop])
    if x.shape[0] > 1 and x.shape[1] > 1:
        # The noise of global row r is the same whichever chunk asks for it, and rows differ.
        noise = K.gaussian_noise_ref(6, offset, 2, x.shape[1])
        assert torch.equal(noise[1], K.gaussian_noise_ref(6, offset + 1, 1, x.shape[1])[0])
        assert not torch.equal(noise[0], noise[1])


@SETTINGS
@given(st.integers(2, 400), st.sampled_from([1, 5, 33]), st.integers(0, 1000), st.data())
def test_merge_moments_matches_two_pass(n: int, d: int, seed: int, data: st.DataObject) -> None:
    x = _matrix(n, d, seed, torch.float32)
    cut = data.draw(st.integers(1, n - 1))
    cut2 = data.draw(st.integers(cut, n))
    parts = [x[:cut], x[cut:cut2], x[cut2:]]
    stats = [K.row_stats(p, normalize=False, second_moment=True) for p in parts]
    left = K.merge_moments(K.merge_moments(stats[0], stats[1]), stats[2])
    right = K.merge_moments(stats[0], K.merge_moments(stats[1], stats[2]))
    want = K.row_stats_ref(x, normalize=False, second_moment=True)
    for got in (left, right):
        assert got.n == n and got.comoment is not None and want.comoment is not None
        assert_close(got.mean, want.mean, atol=1e-12, rtol=1e-12, what="mean")
        assert_close(got.m2, want.m2, atol=1e-10, rtol=1e-10, what="m2")
        assert_close(got.comoment, want.comoment, atol=1e-10, rtol=1e-10, what="co-moment")
    assert abs(left.trace - float(x.double().var(dim=0, unbiased=False).sum())) < 1e-10


def test_merge_with_empty_and_wrong_dims() -> None:
    x = _matrix(10, 4, 0)
    m = K.row_stats(x)
    assert K.merge_moments(K.Moments.empty(4), m) is m
    assert K.merge_moments(m, K.Moments.empty(4)) is m
    try:
        K.merge_moments(m, K.Moments.empty(5))
    except ValueError as exc:
        assert "dims" in str(exc)
    else:
        raise AssertionError("merging moments of different widths must fail")


def test_wrong_merge_is_rejected() -> None:
    """Averaging the chunk means (ignoring counts) — a classic merge bug — fails the check."""
    x = _matrix(300, 8, 1, torch.float32)
    a, b = K.row_stats(x[:50]), K.row_stats(x[50:])
    naive_mean = (a.mean + b.mean) / 2
    try:
        assert_close(naive_mean, K.row_stats(x).mean, atol=1e-12, rtol=1e-12, what="naive mean")
    except AssertionError as exc:
        assert "max |Δ|" in str(exc)
    else:
        raise AssertionError("the naive merge must be rejected")


@SETTINGS
@given(st.integers(1, 300), st.integers(1, 70), st.integers(0, 2**64 - 1), st.integers(0, 2**50))
def test_fast_noise_is_the_reference_noise(n: int, d: int, seed: int, offset: int) -> None:
    from revision.kernels.noise import NoiseScratch, gaussian_noise_into

    want = K.gaussian_noise_ref(seed, offset, n, d)
    got = gaussian_noise_into(torch.empty(n, d), seed, offset, NoiseScratch(n + 3, d))
    assert torch.equal(got, want), f"max |Δ| {(got - want).abs().max():.3e}"


@settings(max_examples=10, deadline=None)
@given(chunked())
def test_realign_ot_chunking(case: tuple[torch.Tensor, list[int]]) -> None:
    """realign-ot (a (D, D) matrix): sums to 1e-12 and rows to one fp32 ulp whatever the chunking,
    although BLAS rounding depends on where a row sits in the product (float64 keeps it ~1e-16)."""
    x, bounds = case
    d = x.shape[1]
    g = torch.Generator().manual_seed(d + 1)
    mu_t, mu_i, mu_hat = 0.05 * torch.randn(3, d, generator=g, dtype=torch.float64)
    a = torch.eye(d, dtype=torch.float64) * 0.9 + 0.02 * torch.randn(d, d, generator=g, dtype=torch.float64)
    out_all = K.realign_apply(x, mu_t, mu_i, a, mu_hat)
    _, sum_all = K.realign_centroid(x, mu_t, mu_i, a)
    total = torch.zeros(d, dtype=torch.float64)
    for start, piece in _pieces(x, bounds):
        total += K.realign_centroid(piece, mu_t, mu_i, a)[1]
        got = K.realign_apply(piece, mu_t, mu_i, a, mu_hat)
        assert_close(got, out_all[start : start + piece.shape[0]], atol=1e-7, rtol=1.2e-7, what="realign-ot rows")
    assert _rel(total, sum_all) < 1e-12, f"Σ h rel diff {_rel(total, sum_all):.2e}"
