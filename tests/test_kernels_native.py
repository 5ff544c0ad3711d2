"""The fused C kernels (kernels/csrc/native.c) against the float64 references, on awkward shapes.

Rows cross the C code's 4-row groups and 256-row blocks at every offset; widths cross its 64-lane
sums; inputs hold zero, tiny, huge and non-finite rows; strides and thread counts vary.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import revision.kernels as K
from revision.kernels import native
from revision.kernels.compare import OUTPUT_TOLERANCE, assert_close

pytestmark = pytest.mark.skipif(not native.available(), reason="the C extension is not built")

SHAPES = [(1, 1), (2, 3), (5, 63), (255, 64), (257, 65), (1031, 130), (600, 1280)]
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
ATOL, RTOL = 3e-6, 1e-5


def _rows(n: int, d: int, dtype: torch.dtype, seed: int = 0, *, finite: bool = False) -> torch.Tensor:
    """Rows around a common direction, with zero, tiny, huge and non-finite rows when there is room."""
    g = torch.Generator().manual_seed(seed + 31 * n + d)
    x = 0.3 * torch.randn(n, d, generator=g) + torch.randn(d, generator=g)
    if n >= 9:
        x[2] = 0.0
        x[3] *= 1e-12 if dtype != torch.float16 else 1e-6  # tiny: the reference rule's branch
        if dtype != torch.float16:
            x[6] *= 1e25  # the fp32 sum of squares overflows: the reference rule's branch
        if not finite:
            x[4, d // 2] = float("nan")
            x[5, 0] = float("-inf")
    return x.to(dtype)


def _means(d: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mu_t, mu_i, mu_hat = 0.05 * torch.randn(3, d, generator=g, dtype=torch.float64)
    return mu_t, mu_i, mu_hat


def test_the_extension_is_built_where_it_must_be() -> None:
    """CI sets REVISION_REQUIRE_NATIVE=1: a silent build failure would otherwise go unnoticed."""
    if os.environ.get("REVISION_REQUIRE_NATIVE") == "1":
        assert native.available()
    assert K.select_backend(torch.zeros(2, 2)) in ("native", "ref", "torch")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_row_stats_native(shape: tuple[int, int], dtype: torch.dtype) -> None:
    x = _rows(*shape, dtype)
    for normalize in (True, False):
        if not normalize:
            x = torch.nan_to_num(x, nan=0.0, posinf=2.0, neginf=-2.0)
        got = native.row_stats_native(x, normalize=normalize)
        want = K.row_stats_ref(x, normalize=normalize)
        assert got.n == want.n and got.comoment is None
        scale = float(want.mean.abs().max()) if not normalize else 1.0
        assert_close(got.mean, want.mean, atol=1e-7 * scale, rtol=1e-6, what="mean")
        assert_close(got.m2, want.m2, atol=1e-6 * want.n * scale**2, rtol=1e-5, what="m2")


def test_row_stats_native_no_cancellation() -> None:
    """A column whose mean dwarfs its spread keeps its M2 (the sums run about a shift)."""
    g = torch.Generator().manual_seed(3)
    x = torch.full((5000, 4), 1000.0) + 1e-3 * torch.randn(5000, 4, generator=g)
    got = native.row_stats_native(x, normalize=False)
    want = K.row_stats_ref(x, normalize=False)
    assert_close(got.m2, want.m2, atol=0, rtol=1e-9, what="m2 about a large mean")


@pytest.mark.parametrize("cuts", [[1], [4, 5], [255, 256, 257], [3, 700, 701]], ids=str)
def test_row_stats_native_chunking(cuts: list[int]) -> None:
    """Statistics merged over any chunking agree with one sweep to 1e-12 relative."""
    x = _rows(1031, 130, torch.float16, finite=True)
    whole = native.row_stats_native(x)
    merged = K.Moments.empty(130)
    for piece in torch.tensor_split(x, cuts):
        merged = K.merge_moments(merged, native.row_stats_native(piece))
    assert merged.n == whole.n
    assert float((merged.mean - whole.mean).abs().max()) <= 1e-12 * float(whole.mean.abs().max())
    assert float((merged.m2 - whole.m2).abs().max()) <= 1e-12 * float(whole.m2.abs().max())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_decode_is_exact(dtype: torch.dtype) -> None:
    """Every 16-bit pattern decodes to its exact value: a one-row mean is the row itself.

    (Non-finite patterns stay non-finite; the shifted sums turn ±Inf into NaN, as Inf − Inf is.)
    """
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    x = bits.view(dtype)[None, :]
    got = native.row_stats_native(x, normalize=False).mean
    want = x[0].double()
    finite = torch.isfinite(want)
    assert int(finite.sum()) > 60000
    assert torch.equal(got[finite], want[finite])
    assert not bool(torch.isfinite(got[~finite]).any())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seed", range(4))
def test_screening_finds_the_first_bad_row(dtype: torch.dtype, seed: int) -> None:
    """screen=True raises at the first NaN/±Inf or all-zero row, on every path, like first_bad_row."""
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(1, 2000)), int(rng.choice([1, 7, 257, 1280]))
    x = torch.from_numpy(rng.standard_normal((n, d)).astype(np.float32)).to(dtype)
    for _ in range(int(rng.integers(0, 3))):
        r, c = int(rng.integers(0, n)), int(rng.integers(0, d))
        kind = int(rng.integers(0, 4))
        if kind == 3:
            x[r] = -0.0
        else:
            x[r, c] = (float("nan"), float("inf"), float("-inf"))[kind]
    x[0, 0] = 2**-14 if dtype != torch.bfloat16 else 2**-126  # tiny but nonzero: not bad
    expected = K.first_bad_row(x)
    for fn in (native.row_stats_native, K.row_stats):
        if expected is None:
            fn(x, screen=True)
            continue
        with pytest.raises(K.BadRowError) as err:
            fn(x, screen=True)
        assert (err.value.row, err.value.nonfinite) == (expected.row, expected.nonfinite)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_realign_centroid_native(shape: tuple[int, int], dtype: torch.dtype) -> None:
    x = _rows(*shape, dtype)
    mu_t, mu_i, _ = _means(shape[1])
    n, got = K.realign_centroid_native(x, mu_t, mu_i, 1.37)
    n_ref, want = K.realign_centroid_ref(x, mu_t, mu_i, 1.37)
    assert n == n_ref == shape[0] and got.dtype == torch.float64
    assert_close(got, want, atol=ATOL * shape[0], rtol=RTOL, what="Σ h")


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_realign_apply_native(shape: tuple[int, int], dtype: torch.dtype, out_dtype: torch.dtype) -> None:
    x = _rows(*shape, dtype)
    mu_t, mu_i, mu_hat = _means(shape[1])
    got = K.realign_apply_native(x, mu_t, mu_i, 0.81, mu_hat, out_dtype=out_dtype)
    assert got.dtype == out_dtype
    want = K.realign_apply_ref(x, mu_t, mu_i, 0.81, mu_hat, out_dtype=torch.float64)
    atol, rtol = OUTPUT_TOLERANCE[out_dtype]
    assert_close(got, want, atol=max(atol, ATOL), rtol=rtol, what=f"realign_apply → {out_dtype}")
    if out_dtype != torch.float32:
        # Narrow outputs are the fp32 rows rounded to nearest, ties to even, exactly as torch rounds
        # (~10^6 values here: ties to even come up).
        wide = K.realign_apply_native(x, mu_t, mu_i, 0.81, mu_hat)
        assert torch.equal(got, wide.to(out_dtype))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_rows_do_not_depend_on_chunks_or_threads(threads: int) -> None:
    """Aligned rows are bitwise the same whatever the chunking and thread count; sums to 1e-12."""
    x = _rows(1031, 130, torch.bfloat16)
    mu_t, mu_i, mu_hat = _means(130)
    saved = torch.get_num_threads()
    try:
        whole = K.realign_apply_native(x, mu_t, mu_i, 1.1, mu_hat)
        sum_whole = K.realign_centroid_native(x, mu_t, mu_i, 1.1)[1]
        torch.set_num_threads(threads)
        pieces = [K.realign_apply_native(p, mu_t, mu_i, 1.1, mu_hat) for p in torch.tensor_split(x, [5, 260, 261])]
        sums = [K.realign_centroid_native(p, mu_t, mu_i, 1.1)[1] for p in torch.tensor_split(x, [5, 260, 261])]
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(torch.cat(pieces), whole)
    total = torch.stack(sums).sum(dim=0)
    assert float((total - sum_whole).abs().max()) <= 1e-12 * float(sum_whole.abs().max())


def test_strided_rows() -> None:
    """Rows with a stride wider than D (a column slice) read correctly."""
    wide = _rows(300, 96, torch.float16, finite=True)
    x = wide[:, :64]
    assert not x.is_contiguous() and native.supports(x)
    mu_t, mu_i, mu_hat = _means(64)
    assert torch.equal(
        K.realign_apply_native(x, mu_t, mu_i, 0.9, mu_hat),
        K.realign_apply_native(x.contiguous(), mu_t, mu_i, 0.9, mu_hat),
    )
    a, b = native.row_stats_native(x), native.row_stats_native(x.contiguous())
    assert torch.equal(a.mean, b.mean) and torch.equal(a.m2, b.m2)


def test_dispatch_takes_native_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _rows(33, 64, torch.float16)
    monkeypatch.setenv("REVISION_KERNELS", "auto")
    assert K.select_backend(x) == "native"
    monkeypatch.setenv("REVISION_KERNELS", "native")
    mu_t, mu_i, mu_hat = _means(64)
    assert torch.equal(K.realign_apply(x, mu_t, mu_i, 0.9, mu_hat), K.realign_apply_native(x, mu_t, mu_i, 0.9, mu_hat))
    # Ops without a C kernel, and matrix scales, take the torch path under "native".
    a = torch.eye(64, dtype=torch.float64)
    assert torch.equal(K.realign_apply(x, mu_t, mu_i, a, mu_hat), K.realign_apply_torch(x, mu_t, mu_i, a, mu_hat))
    assert torch.equal(K.normalize_rows(x), K.normalize_rows_torch(x))


@pytest.mark.parametrize("path", ["native", "torch"])
def test_means_are_bitwise_chunking_free(path: str) -> None:
    """Merged means come from column totals: bitwise equal whatever the chunking when the float64 sums
    of the fp32 unit rows are exact (components of like magnitude, as here), so their float32
    rounding never flips on a tie."""
    fn = {"native": native.row_stats_native, "torch": K.row_stats_torch}[path]
    g = torch.Generator().manual_seed(8)
    magnitude = 0.5 + 0.5 * torch.rand(1031, 130, generator=g)
    x = torch.where(torch.rand(1031, 130, generator=g) < 0.5, -magnitude, magnitude)
    whole = fn(x)
    for cuts in ([1], [4, 5], [255, 256, 257], [3, 700, 701]):
        merged = K.Moments.empty(130)
        for piece in torch.tensor_split(x, cuts):
            merged = K.merge_moments(merged, fn(piece))
        assert merged.total is not None and torch.equal(merged.mean, whole.mean)
