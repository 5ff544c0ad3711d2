"""Streamed gap statistics: chunked sums equal in-memory references; closed-form RMG equals brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revision.diagnose.sources import ArraySource, unit_rows
from revision.diagnose.streamed import (
    RowSums,
    gap_metrics,
    paired_gap,
    relative_gap,
    stream_sums,
    stream_together,
    sums_of_blocks,
)


def cone(n: int, d: int, axis: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    """Unit rows scattered anisotropically around `axis`."""
    x = axis + spread * rng.standard_normal((n, d)) * np.linspace(1.5, 0.2, d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def unit_axis(d: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(d)
    return v / np.linalg.norm(v)


def d_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (1.0 - a.astype(np.float64) @ b.astype(np.float64).T) / 2.0


def rmg_brute(t: np.ndarray, i: np.ndarray) -> float:
    """The O(N²) definition: every cross pair, every intra pair a ≠ b."""
    cross = d_matrix(t, i).mean()
    dt, di = d_matrix(t, t), d_matrix(i, i)
    off = lambda m: (m.sum() - np.trace(m)) / (len(m) * (len(m) - 1))  # noqa: E731
    intra = (off(dt) + off(di)) / 2
    return float(cross / (intra + cross))


def rmg_paired_brute(t: np.ndarray, i: np.ndarray) -> float:
    pair = np.mean((1.0 - np.einsum("ij,ij->i", t.astype(np.float64), i.astype(np.float64))) / 2)
    dt, di = d_matrix(t, t), d_matrix(i, i)
    n = len(t)
    intra = ((dt.sum() - np.trace(dt)) + (di.sum() - np.trace(di))) / (2 * n * (n - 1))
    return float(pair / (intra + pair))


def rmg_wrong(t: np.ndarray, i: np.ndarray) -> float:
    """A plausible mistake: intra means over all pairs, the zero diagonal included."""
    cross = d_matrix(t, i).mean()
    intra = (d_matrix(t, t).mean() + d_matrix(i, i).mean()) / 2
    return float(cross / (intra + cross))


@pytest.mark.parametrize(("n_t", "n_i", "d"), [(2, 3, 1), (7, 5, 257), (40, 23, 64), (300, 211, 33)])
def test_closed_form_rmg_equals_brute_force(n_t: int, n_i: int, d: int) -> None:
    rng = np.random.default_rng(n_t * 1000 + d)
    t = cone(n_t, d, unit_axis(d, rng), 0.8, rng)
    i = cone(n_i, d, unit_axis(d, rng), 0.8, rng)
    got = gap_metrics(sums_of_blocks([t], d), sums_of_blocks([i], d))["rmg"]
    want = rmg_brute(t, i)
    assert abs(got - want) < 1e-9, f"closed form {got} vs brute force {want} (diff {abs(got - want):.3g})"
    # The check must reject a near miss: small samples make the diagonal matter.
    wrong = rmg_wrong(t, i)
    assert abs(wrong - got) > 1e-4, f"wrong definition {wrong} indistinguishable from {got}"


def test_paired_rmg_equals_brute_force_and_identity_stream() -> None:
    rng = np.random.default_rng(3)
    d = 48
    t = cone(150, d, unit_axis(d, rng), 0.5, rng)
    i = (t + 0.3 * rng.standard_normal(t.shape)).astype(np.float32)
    i = unit_rows(i)
    ts, is_ = sums_of_blocks([t], d), sums_of_blocks([i], d)
    img_sums, (tp,) = stream_together(ArraySource(i, block=17), [ArraySource(t, block=23)], [True], block_rows=29)
    assert tp.pair_rows == len(t)
    np.testing.assert_allclose(tp.sums.total, ts.total, atol=1e-5)
    np.testing.assert_allclose(img_sums.total, is_.total, atol=1e-5)
    got = paired_gap(tp.pair_rows, tp.pair_cos_sum, ts, is_)
    want = rmg_paired_brute(t, i)
    assert abs(got - want) < 1e-6, f"paired {got} vs brute force {want} (rows renormalised in float32)"
    assert got < 0.5, "pairs closer than random rows must give a paired RMG below 0.5"


def test_identical_distributions_give_half() -> None:
    rng = np.random.default_rng(5)
    d = 32
    axis = unit_axis(d, rng)
    t, i = cone(4000, d, axis, 0.7, rng), cone(4000, d, axis, 0.7, rng)
    m = gap_metrics(sums_of_blocks([t], d), sums_of_blocks([i], d))
    assert abs(m["rmg"] - 0.5) < 5e-3, m["rmg"]
    assert m["centroid_gap"] < 0.05
    assert abs(m["trace_ratio"] - 1) < 0.05


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 300),
    d=st.integers(1, 40),
    block=st.integers(1, 97),
    seed=st.integers(0, 2**16),
)
def test_streamed_sums_equal_in_memory_reference(n: int, d: int, block: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32) * rng.uniform(0.1, 10, d).astype(np.float32)
    src = ArraySource(x, block=block)
    acc = stream_sums(src, covariance=True)
    u = unit_rows(x).astype(np.float64)
    mean = u.mean(axis=0)
    cov = (u - mean).T @ (u - mean) / n
    assert acc.n == n
    np.testing.assert_allclose(acc.mean, mean, atol=1e-12)
    np.testing.assert_allclose(acc.trace, ((u - mean) ** 2).sum(axis=1).mean(), atol=1e-9)
    assert acc.comoment is not None
    err = np.abs(acc.comoment / n - cov)
    assert err.max() < 1e-6, f"covariance max diff {err.max():.3g}, mean {err.mean():.3g}"


def test_merge_equals_single_pass() -> None:
    rng = np.random.default_rng(11)
    x = unit_rows(rng.standard_normal((257, 9)).astype(np.float32))
    whole = sums_of_blocks([x], 9)
    parts = sums_of_blocks([x[:100]], 9).merge(sums_of_blocks([x[100:]], 9))
    assert parts.n == whole.n
    np.testing.assert_allclose(parts.total, whole.total, atol=1e-12)
    # Blocks multiply in float32: agreement to float32 precision of the covariance.
    np.testing.assert_allclose(parts.comoment / parts.n, whole.comoment / whole.n, atol=1e-7)


def test_spectrum_sums_to_trace() -> None:
    rng = np.random.default_rng(2)
    d = 24
    x = cone(500, d, unit_axis(d, rng), 0.6, rng)
    acc = sums_of_blocks([x[:123], x[123:]], d)
    eig = acc.eigenvalues()
    assert eig is not None and np.all(np.diff(eig) <= 1e-12)
    assert abs(eig.sum() - acc.trace) < 1e-6


def test_unit_rows_follows_reference_rule() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [np.nan, 2.0], [np.inf, 1.0], [3e38, 3e38], [1e-12, 0.0]], dtype=np.float32)
    u = unit_rows(x)
    np.testing.assert_allclose(u[0], [0.6, 0.8], atol=1e-7)
    assert np.all(u[1] == 0)
    np.testing.assert_allclose(u[2], [0.0, 1.0])
    np.testing.assert_allclose(u[3], [0.0, 1.0])
    np.testing.assert_allclose(u[4], [2**-0.5, 2**-0.5], atol=1e-7)  # no overflow to inf
    np.testing.assert_allclose(u[5], [1e-12, 0.0])  # below 1e-10: left unscaled


def test_bfloat16_bits_are_decoded() -> None:
    vals = np.array([[1.0, -2.0, 0.5]], dtype=np.float32)
    bits = (vals.view(np.uint32) >> 16).astype(np.uint16)
    u = unit_rows(bits, "bfloat16")
    np.testing.assert_allclose(u[0], vals[0] / np.linalg.norm(vals[0]), atol=1e-7)


def test_relative_gap_extremes() -> None:
    assert relative_gap(1.0, 1.0, 1.0) != relative_gap(1.0, 1.0, 1.0)  # nan: all points identical
    assert relative_gap(-1.0, 1.0, 1.0) == 1.0
    assert isinstance(RowSums(3).trace, float)


def test_stream_together_unpaired_and_paired_agree() -> None:
    rng = np.random.default_rng(9)
    a, b, c = (unit_rows(rng.standard_normal((n, 6)).astype(np.float32)) for n in (50, 50, 31))
    img, (pa, pb) = stream_together(ArraySource(a, block=7), [ArraySource(b), ArraySource(c)], [True, False])
    assert pa.pair_rows == 50 and pb.pair_rows == 0 and pb.sums.n == 31
    assert abs(pa.pair_cos_sum - float(np.einsum("ij,ij->", a.astype(np.float64), b))) < 1e-5
    with pytest.raises(ValueError, match="equal row counts"):
        stream_together(ArraySource(a), [ArraySource(c)], [True])


def unit_rule_ref(x: np.ndarray) -> np.ndarray:
    """The reference's rule in float64, row by row: the specification of `unit_rows`."""
    out = np.where(np.isfinite(x), x, 0.0).astype(np.float64)
    for r in range(len(out)):
        norm = np.sqrt((out[r] ** 2).sum())
        if norm >= 1e-10:
            out[r] /= norm
    return out


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), d=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_unit_rows_fast_path_equals_the_rule(n: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    # Exceptional rows the fast path must hand over: zero, tiny, huge, non-finite.
    kinds = rng.integers(0, 6, n)
    x[kinds == 1] = 0.0
    x[kinds == 2] *= np.float32(1e-12)
    x[kinds == 3] *= np.float32(1e37)
    x[kinds == 4, 0] = np.nan
    x[kinds == 5, -1] = np.inf
    got, want = unit_rows(x), unit_rule_ref(x.astype(np.float64))
    err = np.abs(got - want)
    assert err.max() < 1e-6, f"max diff {err.max():.3g} at row {np.unravel_index(err.argmax(), err.shape)[0]}"
    # A version without the careful path must be caught by this comparison.
    # (Huge rows are fine for it in float64; zero, tiny and non-finite rows are not.)
    with np.errstate(invalid="ignore", divide="ignore"):
        naive = x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    if np.isin(kinds, [1, 2, 4, 5]).any():
        assert not np.allclose(naive, want, atol=1e-6, equal_nan=False)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 200),
    block_img=st.integers(1, 64),
    block_txt=st.integers(1, 64),
    block_rows=st.integers(1, 80),
    seed=st.integers(0, 2**16),
)
def test_stream_together_is_independent_of_chunking(
    n: int, block_img: int, block_txt: int, block_rows: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    t = rng.standard_normal((n, 5)).astype(np.float32)
    i = rng.standard_normal((n, 5)).astype(np.float32)
    img, (tp,) = stream_together(
        ArraySource(i, block=block_img), [ArraySource(t, block=block_txt)], [True], block_rows=block_rows
    )
    ut, ui = unit_rule_ref(t.astype(np.float64)), unit_rule_ref(i.astype(np.float64))
    assert img.n == tp.sums.n == tp.pair_rows == n
    np.testing.assert_allclose(tp.sums.total, ut.sum(0), atol=1e-5)
    np.testing.assert_allclose(img.sq_norms, (ui**2).sum(), atol=1e-4)
    assert abs(tp.pair_cos_sum - float((ut * ui).sum())) < 1e-4
