"""Triton kernels against their float64 torch references.

Without CUDA they run under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1
before anything imports triton); the same tests marked `gpu` run on a CUDA device.
Interpreter runs cost about a millisecond per program instance, so shapes stay small.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

import revision.kernels as K  # noqa: E402
from revision.kernels import native  # noqa: E402
from revision.kernels.compare import OUTPUT_TOLERANCE, assert_close  # noqa: E402

SHAPES = [(1, 1), (7, 257), (33, 1280), (4099, 64)]
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# fp32 arithmetic on both sides of the comparison with the float64 reference.
ATOL, RTOL = 3e-6, 1e-5

_KERNEL_MODULES = (
    "revision.kernels.triton_rows",
    "revision.kernels.realign_project",
    "revision.kernels.normalize",
    "revision.kernels.row_stats",
    "revision.kernels.realign_centroid",
    "revision.kernels.realign_apply",
    "revision.kernels.shift_rows",
)


def _interpreter_ready() -> bool:
    """Kernels decorated before TRITON_INTERPRET was set are compiled kernels: re-decorate them."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    from triton.runtime.interpreter import InterpretedFunction

    from revision.kernels import normalize

    if not isinstance(normalize._normalize_rows_kernel, InterpretedFunction):
        for name in _KERNEL_MODULES:
            importlib.reload(importlib.import_module(name))
    return True


DEVICES = [
    pytest.param("cpu", id="interp"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    dev = str(request.param)
    if dev == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("needs CUDA")
    elif not _interpreter_ready():
        pytest.skip("compiled Triton in this process (CUDA present, TRITON_INTERPRET unset)")
    return dev


def _rows(n: int, d: int, dtype: torch.dtype, device: str, seed: int = 0) -> torch.Tensor:
    """Rows with a common direction (a modality cone), a zero row, and a non-finite row."""
    g = torch.Generator().manual_seed(seed + 7 * n + d)
    base = torch.randn(d, generator=g)
    x = 0.3 * torch.randn(n, d, generator=g) + base
    if n >= 7:
        x[2] = 0.0
        x[4, d // 2] = float("nan")
        x[5, 0] = float("inf")
    return x.to(dtype).to(device)


def _means(d: int, device: str, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mu_t, mu_i, mu_hat = (0.05 * torch.randn(3, d, generator=g, dtype=torch.float64)).to(device)
    return mu_t, mu_i, mu_hat


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_normalize_rows_kernel(device: str, shape: tuple[int, int], dtype: torch.dtype) -> None:
    x = _rows(*shape, dtype, device)
    got = K.normalize_rows_triton(x)
    assert got.dtype == torch.float32 and got.device.type == device
    assert_close(got, K.normalize_rows_ref(x.cpu()), atol=ATOL, rtol=RTOL, what="normalize_rows")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_row_stats_kernel(device: str, shape: tuple[int, int], dtype: torch.dtype) -> None:
    x = _rows(*shape, dtype, device)
    for normalize in (True, False):
        if not normalize:
            x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
        got = K.row_stats_triton(x, normalize=normalize)
        want = K.row_stats_ref(x.cpu(), normalize=normalize)
        assert got.n == want.n
        scale = max(1.0, float(want.mean.abs().max()))
        assert_close(got.mean, want.mean, atol=1e-6 * scale, rtol=1e-6, what=f"mean (normalize={normalize})")
        assert_close(got.m2, want.m2, atol=1e-6 * scale * want.n, rtol=1e-5, what=f"m2 (normalize={normalize})")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_realign_centroid_kernel(device: str, shape: tuple[int, int], dtype: torch.dtype) -> None:
    x = _rows(*shape, dtype, device)
    mu_t, mu_i, _ = _means(shape[1], device)
    n, got = K.realign_centroid_triton(x, mu_t, mu_i, 1.37)
    n_ref, want = K.realign_centroid_ref(x.cpu(), mu_t.cpu(), mu_i.cpu(), 1.37)
    assert n == n_ref == shape[0] and got.dtype == torch.float64
    assert_close(got, want, atol=ATOL * shape[0], rtol=RTOL, what="Σ h")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_realign_apply_kernel(device: str, shape: tuple[int, int], dtype: torch.dtype) -> None:
    _check_apply(device, shape, dtype, torch.float32)


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_realign_apply_kernel_out_dtype(device: str, dtype: torch.dtype, out_dtype: torch.dtype) -> None:
    _check_apply(device, (7, 257), dtype, out_dtype)


def _check_apply(device: str, shape: tuple[int, int], dtype: torch.dtype, out_dtype: torch.dtype) -> None:
    x = _rows(*shape, dtype, device)
    mu_t, mu_i, mu_hat = _means(shape[1], device)
    got = K.realign_apply_triton(x, mu_t, mu_i, 0.81, mu_hat, out_dtype=out_dtype)
    assert got.dtype == out_dtype
    want = K.realign_apply_ref(x.cpu(), mu_t.cpu(), mu_i.cpu(), 0.81, mu_hat.cpu(), out_dtype=torch.float64)
    atol, rtol = OUTPUT_TOLERANCE[out_dtype]
    assert_close(got, want, atol=max(atol, ATOL), rtol=rtol, what=f"realign_apply → {out_dtype}")


@pytest.mark.parametrize("shape", [(7, 257), (33, 96)], ids=str)
def test_realign_matrix_scale_on_device(device: str, shape: tuple[int, int]) -> None:
    x = _rows(*shape, torch.float16, device)
    mu_t, mu_i, mu_hat = _means(shape[1], device)
    a = torch.eye(shape[1], dtype=torch.float64) * 0.9 + 0.01 * torch.randn(shape[1], shape[1], dtype=torch.float64)
    got = K.realign_apply_triton(x, mu_t, mu_i, a.to(device), mu_hat)
    want = K.realign_apply_ref(x.cpu(), mu_t.cpu(), mu_i.cpu(), a, mu_hat.cpu())
    assert_close(got, want, atol=1e-5, rtol=1e-5, what="realign-ot apply")
    _, got_sum = K.realign_centroid_triton(x, mu_t, mu_i, a.to(device))
    _, want_sum = K.realign_centroid_ref(x.cpu(), mu_t.cpu(), mu_i.cpu(), a)
    assert_close(got_sum, want_sum, atol=1e-5 * shape[0], rtol=1e-5, what="realign-ot Σ h")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (7, 257), (130, 48)], ids=str)
def test_baselines_kernel(device: str, shape: tuple[int, int], dtype: torch.dtype) -> None:
    n, d = shape
    x = _rows(n, d, dtype, device)
    mu_t, mu_i, _ = _means(d, device)
    cases = [
        ("mean_shift", lambda: K.mean_shift(x, mu_t), lambda: K.mean_shift_ref(x.cpu(), mu_t.cpu())),
        (
            "mean_shift(normalize)",
            lambda: K.mean_shift(x, mu_t, normalize=True),
            lambda: K.mean_shift_ref(x.cpu(), mu_t.cpu(), normalize=True),
        ),
        (
            "c3",
            lambda: K.c3(x, mu_t, seed=3, row_offset=2**33 + 5),
            lambda: K.c3_ref(x.cpu(), mu_t.cpu(), seed=3, row_offset=2**33 + 5),
        ),
        ("capdec", lambda: K.capdec(x, seed=11, row_offset=17), lambda: K.capdec_ref(x.cpu(), seed=11, row_offset=17)),
        (
            "gap_shift",
            lambda: K.gap_shift(x, mu_i - mu_t, 0.4),
            lambda: K.gap_shift_ref(x.cpu(), (mu_i - mu_t).cpu(), 0.4),
        ),
    ]
    os.environ["REVISION_KERNELS"] = "triton"
    try:
        for name, fast, ref in cases:
            got = fast()
            if name.startswith("mean_shift"):
                got = torch.nan_to_num(got, nan=0.0, posinf=0.0, neginf=0.0)
                want = torch.nan_to_num(ref(), nan=0.0, posinf=0.0, neginf=0.0)
            else:
                want = ref()
            # Noise goes through log/cos/sqrt on both sides: a few ulps more than the plain ops.
            assert_close(got, want, atol=2e-5, rtol=2e-5, what=name)
    finally:
        del os.environ["REVISION_KERNELS"]


def test_extreme_rows_kernel(device: str) -> None:
    """Huge fp32 rows (norm overflows fp32 without the max-abs step), tiny rows, subnormal rows."""
    d = 40
    x = torch.randn(6, d)
    x[0] *= 1e37
    x[1] *= 1e-12  # norm ~ 6e-12: below the 1e-10 floor, left unscaled
    x[2] *= 1e-9  # above the floor: normalised
    x[3] = 0.0
    x[3, 7] = 1e-40  # subnormal only
    x[4] = float("-inf")
    x[5, :] = float("nan")
    got = K.normalize_rows_triton(x.to(device))
    want = K.normalize_rows_ref(x)
    assert_close(got, want, atol=ATOL, rtol=RTOL, what="extreme rows")
    assert torch.isfinite(got.cpu()).all()


def test_bf16_upcast_after_load(device: str) -> None:
    """bf16 values whose fp32 arithmetic differs from bf16 arithmetic (a sum of 1 + many small terms)."""
    d = 257
    x = torch.full((3, d), 2.0**-6, dtype=torch.bfloat16)
    x[:, 0] = 1.0
    got = K.normalize_rows_triton(x.to(device))
    assert_close(got, K.normalize_rows_ref(x), atol=1e-7, rtol=1e-6, what="bf16 normalize")


def test_check_rejects_a_wrong_kernel(device: str) -> None:
    """The comparison bites: apply without the centroid correction is not realign_apply."""
    x = _rows(33, 96, torch.float16, device)
    mu_t, mu_i, mu_hat = _means(96, device)
    wrong = K.realign_apply_triton(x, mu_t, mu_i, 0.81, torch.zeros_like(mu_hat)) * 1.0
    wrong = K.normalize_rows_triton(wrong + (mu_hat - mu_i).float() * 0.0)  # drops the −mu_hat + mu_i step
    want = K.realign_apply_ref(x.cpu(), mu_t.cpu(), mu_i.cpu(), 0.81, mu_hat.cpu())
    with pytest.raises(AssertionError, match="max"):
        assert_close(wrong, want, atol=ATOL, rtol=RTOL, what="wrong apply")


def test_launchers_validate(device: str) -> None:
    x = _rows(8, 16, torch.float16, device)
    mu_t, mu_i, mu_hat = _means(16, device)
    with pytest.raises(ValueError, match="dtype"):
        K.normalize_rows_triton(x.to(torch.float64))
    with pytest.raises(ValueError, match="2-D"):
        K.normalize_rows_triton(x[0])
    with pytest.raises(ValueError, match="contiguous"):
        K.normalize_rows_triton(x.t())
    with pytest.raises(ValueError, match="mu_hat"):
        K.realign_apply_triton(x, mu_t, mu_i, 1.0, mu_hat[:-1])
    with pytest.raises(ValueError, match="scale"):
        K.realign_centroid_triton(x, mu_t, mu_i, torch.ones(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="out_dtype"):
        K.realign_apply_triton(x, mu_t, mu_i, 1.0, mu_hat, out_dtype=torch.int8)
    with pytest.raises(ValueError, match="row_offset"):
        K.shift_rows_triton(x, mu_t, normalize_in=True, normalize_out=True, row_offset=-1)
    if device == "cpu":
        os.environ["TRITON_INTERPRET"] = "0"
        try:
            with pytest.raises(ValueError, match="device"):
                K.normalize_rows_triton(x)
        finally:
            os.environ["TRITON_INTERPRET"] = "1"


def test_strided_rows_kernel(device: str) -> None:
    """A row-strided view (every other row of a wider buffer) is read in place."""
    base = _rows(20, 96, torch.float16, device)
    view = base[:, :64]
    assert not view.is_contiguous()
    assert_close(K.normalize_rows_triton(view), K.normalize_rows_ref(view.cpu()), atol=ATOL, rtol=RTOL)
    got = K.row_stats_triton(view)
    assert_close(got.mean, K.row_stats_ref(view.cpu()).mean, atol=1e-6, rtol=1e-6)


def test_scaling_switches(device: str) -> None:
    """fp16 rows skip the max-abs step (values < 65504); huge parameters and raw fp32 rows keep it."""
    d = 300
    x16 = torch.full((5, d), 6.0e4, dtype=torch.float16)
    x16[1] = 1e-7  # fp16 subnormals: squares are still normal in fp32
    x16[2, :7] = -6.5e4
    assert_close(K.normalize_rows_triton(x16.to(device)), K.normalize_rows_ref(x16), atol=ATOL, rtol=RTOL)
    x = _rows(9, d, torch.float32, device)
    mu_t, mu_i, mu_hat = _means(d, device)
    for scale in (1e8, 1e25):  # past the bounded-parameter limit: the scaled path
        got = K.realign_apply_triton(x, mu_t, mu_i, scale, mu_hat)
        want = K.realign_apply_ref(x.cpu(), mu_t.cpu(), mu_i.cpu(), scale, mu_hat.cpu())
        assert_close(got, want, atol=ATOL, rtol=RTOL, what=f"apply, scale {scale:g}")
        _, got_sum = K.realign_centroid_triton(x, mu_t, mu_i, scale)
        _, want_sum = K.realign_centroid_ref(x.cpu(), mu_t.cpu(), mu_i.cpu(), scale)
        assert_close(got_sum, want_sum, atol=ATOL * 9, rtol=RTOL, what=f"Σ h, scale {scale:g}")
    raw = torch.nan_to_num(x) * 1e30
    shift = torch.zeros(d, dtype=torch.float64, device=device)
    got = K.shift_rows_triton(raw, shift, normalize_in=False, normalize_out=True)
    assert_close(got, K.normalize_rows_ref(raw.cpu()), atol=ATOL, rtol=RTOL, what="raw 1e30 rows")


def test_kernel_rows_do_not_depend_on_chunking(device: str) -> None:
    """Per-row kernel results are bitwise the same for a row alone, in a chunk, or in the whole;
    reductions are bitwise repeatable (fixed-order float64 merge, no atomics)."""
    x = _rows(150, 96, torch.bfloat16, device)
    mu_t, mu_i, mu_hat = _means(96, device)
    whole = K.realign_apply_triton(x, mu_t, mu_i, 0.9, mu_hat)
    unit = K.normalize_rows_triton(x)
    for a, b in ((0, 1), (1, 38), (38, 150), (149, 150)):
        assert torch.equal(K.realign_apply_triton(x[a:b], mu_t, mu_i, 0.9, mu_hat), whole[a:b])
        assert torch.equal(K.normalize_rows_triton(x[a:b]), unit[a:b])
    first = K.realign_centroid_triton(x, mu_t, mu_i, 0.9)[1]
    assert torch.equal(K.realign_centroid_triton(x, mu_t, mu_i, 0.9)[1], first)
    stats = K.row_stats_triton(x)
    again = K.row_stats_triton(x)
    assert torch.equal(stats.mean, again.mean) and torch.equal(stats.m2, again.m2)
    parts = K.merge_moments(K.row_stats_triton(x[:61]), K.row_stats_triton(x[61:]))
    assert_close(parts.mean, stats.mean, atol=1e-7, rtol=1e-6, what="chunked kernel mean")
    assert_close(parts.m2, stats.m2, atol=1e-5, rtol=1e-5, what="chunked kernel m2")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (7, 257), (33, 1280), (300, 63), (4099, 64)], ids=str)
def test_row_stats_kernel_matches_c_path_bitwise(device: str, shape: tuple[int, int], dtype: torch.dtype) -> None:
    """The kernel's statistics are the CPU path's: the same unit rows (C's sum-of-squares order and unit rule,
    the float64 rule for NaN/Inf, zero and huge rows), exact float64 column totals, means as total / n, so
    the means and their float32 rounding (the reference's) agree bit for bit; M2 to fp32 block rounding."""
    if not native.available():
        pytest.skip("the C kernels are not built")
    x = _rows(*shape, dtype, device)
    if shape[0] >= 7 and dtype != torch.float16:
        x[6] *= 1e20  # norm above the fast range: the reference rule's fallback
    for normalize in (True, False):
        if not normalize:
            # Raw rows of like magnitude: their float64 sums are exact in any order.
            x = _rows(*shape, dtype, device).nan_to_num(nan=0.0, posinf=1.0, neginf=-1.0)
        got = K.row_stats_triton(x, normalize=normalize)
        want = native.row_stats_native(x.cpu(), normalize=normalize)
        what = f"normalize={normalize}"
        assert got.n == want.n and got.total is not None and want.total is not None
        assert torch.equal(got.total.cpu(), want.total), (
            f"{what}: totals differ by {(got.total.cpu() - want.total).abs().max():.3g}"
        )
        assert torch.equal(got.mean.cpu(), want.mean), (
            f"{what}: means differ by {(got.mean.cpu() - want.mean).abs().max():.3g}"
        )
        assert torch.equal(got.mean.cpu().float(), want.mean.float()), what
        assert_close(got.m2, want.m2, atol=1e-9 * want.n, rtol=2e-6, what=f"m2 ({what})")


def test_row_stats_kernel_means_do_not_depend_on_programs(device: str) -> None:
    """Means are the grand total over the count: the same bits whether one program or many saw the rows."""
    x = _rows(700, 96, torch.bfloat16, device)
    whole = K.row_stats_triton(x)
    parts = K.merge_moments(K.row_stats_triton(x[:333]), K.row_stats_triton(x[333:]))
    assert torch.equal(parts.mean, whole.mean)
    assert_close(parts.m2, whole.m2, atol=1e-9, rtol=1e-6, what="m2 over parts (fp32 block rounding)")
