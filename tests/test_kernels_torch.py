"""The fast torch (CPU production) paths against the float64 references, and the dispatch."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import revision.kernels as K
from revision.kernels import rows_cpu
from revision.kernels.backend import select_backend
from revision.kernels.compare import OUTPUT_TOLERANCE, assert_close
from revision.kernels.rows_cpu import tile_rows

# (1023, 1280) and (4099, 64) span several cache tiles of the torch path.
SHAPES = [(1, 1), (7, 257), (33, 1280), (1023, 1280), (4099, 64)]
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
ATOL, RTOL = 3e-6, 1e-5


def _rows(n: int, d: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Rows around a common direction, with a zero row and non-finite entries."""
    g = torch.Generator().manual_seed(seed + 7 * n + d)
    x = 0.3 * torch.randn(n, d, generator=g) + torch.randn(d, generator=g)
    if n >= 7:
        x[2] = 0.0
        x[4, d // 2] = float("nan")
        x[5, 0] = float("-inf")
    return x.to(dtype)


def _means(d: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mu_t, mu_i, mu_hat = 0.05 * torch.randn(3, d, generator=g, dtype=torch.float64)
    return mu_t, mu_i, mu_hat


@pytest.fixture(autouse=True, scope="module")
def small_tiles() -> Iterator[None]:
    """Tiles of 64 KiB, so the test shapes cross many tile boundaries of the torch path."""
    saved = rows_cpu.TILE_BYTES
    rows_cpu.TILE_BYTES = 64 * 1024
    yield
    rows_cpu.TILE_BYTES = saved


def test_tiles_really_split_the_test_shapes() -> None:
    assert tile_rows(1280) < 33 and tile_rows(64) < 4099


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_normalize_rows_torch(shape: tuple[int, int], dtype: torch.dtype) -> None:
    x = _rows(*shape, dtype)
    got = K.normalize_rows_torch(x)
    assert got.dtype == torch.float32
    assert_close(got, K.normalize_rows_ref(x), atol=ATOL, rtol=RTOL, what="normalize_rows")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_row_stats_torch(shape: tuple[int, int], dtype: torch.dtype) -> None:
    x = _rows(*shape, dtype)
    for normalize in (True, False):
        if not normalize:
            x = torch.nan_to_num(x, nan=0.0, posinf=2.0, neginf=-2.0)
        got = K.row_stats_torch(x, normalize=normalize)
        want = K.row_stats_ref(x, normalize=normalize)
        assert got.n == want.n and got.comoment is None
        assert_close(got.mean, want.mean, atol=1e-7, rtol=1e-6, what="mean")
        assert_close(got.m2, want.m2, atol=1e-6 * want.n, rtol=1e-5, what="m2")


@pytest.mark.parametrize("shape", [(7, 257), (300, 48), (2000, 48)], ids=str)
def test_row_stats_second_moment(shape: tuple[int, int]) -> None:
    x = _rows(*shape, torch.float16)
    got = K.row_stats_torch(x, second_moment=True)
    want = K.row_stats_ref(x, second_moment=True)
    assert got.comoment is not None and want.comoment is not None
    assert_close(got.comoment, want.comoment, atol=1e-6 * shape[0], rtol=1e-5, what="co-moment")
    assert_close(torch.diagonal(got.comoment), got.m2, atol=1e-12 * shape[0], rtol=1e-12, what="diag")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_realign_centroid_torch(shape: tuple[int, int], dtype: torch.dtype) -> None:
    x = _rows(*shape, dtype)
    mu_t, mu_i, _ = _means(shape[1])
    n, got = K.realign_centroid_torch(x, mu_t, mu_i, 1.37)
    n_ref, want = K.realign_centroid_ref(x, mu_t, mu_i, 1.37)
    assert n == n_ref == shape[0] and got.dtype == torch.float64
    assert_close(got, want, atol=ATOL * shape[0], rtol=RTOL, what="Σ h")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_realign_apply_torch(shape: tuple[int, int], dtype: torch.dtype) -> None:
    _check_apply(shape, dtype, torch.float32)


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_realign_apply_torch_out_dtype(dtype: torch.dtype, out_dtype: torch.dtype) -> None:
    _check_apply((300, 257), dtype, out_dtype)


def _check_apply(shape: tuple[int, int], dtype: torch.dtype, out_dtype: torch.dtype) -> None:
    x = _rows(*shape, dtype)
    mu_t, mu_i, mu_hat = _means(shape[1])
    got = K.realign_apply_torch(x, mu_t, mu_i, 0.81, mu_hat, out_dtype=out_dtype)
    assert got.dtype == out_dtype
    want = K.realign_apply_ref(x, mu_t, mu_i, 0.81, mu_hat, out_dtype=torch.float64)
    atol, rtol = OUTPUT_TOLERANCE[out_dtype]
    assert_close(got, want, atol=max(atol, ATOL), rtol=rtol, what=f"realign_apply → {out_dtype}")


@pytest.mark.parametrize("shape", [(7, 257), (700, 96)], ids=str)
def test_realign_matrix_scale_torch(shape: tuple[int, int]) -> None:
    """realign-ot: the centred unit rows are multiplied by a (D, D) matrix instead of a scalar."""
    n, d = shape
    x = _rows(n, d, torch.bfloat16)
    mu_t, mu_i, mu_hat = _means(d)
    g = torch.Generator().manual_seed(5)
    a = torch.eye(d, dtype=torch.float64) * 0.9 + 0.02 * torch.randn(d, d, generator=g, dtype=torch.float64)
    assert_close(
        K.realign_apply_torch(x, mu_t, mu_i, a, mu_hat),
        K.realign_apply_ref(x, mu_t, mu_i, a, mu_hat),
        atol=1e-5,
        rtol=1e-5,
        what="realign-ot apply",
    )
    assert_close(
        K.realign_centroid_torch(x, mu_t, mu_i, a)[1],
        K.realign_centroid_ref(x, mu_t, mu_i, a)[1],
        atol=1e-5 * n,
        rtol=1e-5,
        what="realign-ot Σ h",
    )
    # The identity matrix times s is the scalar transform.
    eye = torch.eye(d, dtype=torch.float64) * 1.3
    assert_close(
        K.realign_apply_torch(x, mu_t, mu_i, eye, mu_hat),
        K.realign_apply_torch(x, mu_t, mu_i, 1.3, mu_hat),
        atol=2e-6,
        rtol=1e-5,
        what="s·I vs s",
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (7, 257), (2050, 64)], ids=str)
def test_baselines_torch(shape: tuple[int, int], dtype: torch.dtype) -> None:
    n, d = shape
    x = _rows(n, d, dtype)
    mu_t, mu_i, _ = _means(d)
    finite = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    cases = [
        ("mean_shift", K.mean_shift(finite, mu_t), K.mean_shift_ref(finite, mu_t)),
        ("mean_shift(u)", K.mean_shift(x, mu_t, normalize=True), K.mean_shift_ref(x, mu_t, normalize=True)),
        ("c3", K.c3(x, mu_t, seed=3, row_offset=2**40), K.c3_ref(x, mu_t, seed=3, row_offset=2**40)),
        ("c3 σ=0", K.c3(x, mu_t, seed=3, sigma=0.0), K.c3_ref(x, mu_t, seed=3, sigma=0.0)),
        ("capdec", K.capdec(x, seed=11, row_offset=17), K.capdec_ref(x, seed=11, row_offset=17)),
        ("gap_shift", K.gap_shift(x, mu_i - mu_t, 0.4), K.gap_shift_ref(x, mu_i - mu_t, 0.4)),
        (
            "gap_shift raw",
            K.gap_shift(finite, mu_i - mu_t, 0.4, normalize=False),
            K.gap_shift_ref(finite, mu_i - mu_t, 0.4, normalize=False),
        ),
    ]
    for name, got, want in cases:
        assert_close(got, want, atol=ATOL, rtol=RTOL, what=name)


def test_c3_semantics() -> None:
    """c3 with σ = 0 is u(u(y) − mu); its noise has the requested spread."""
    x = _rows(4000, 64, torch.float32)
    mu = _means(64)[0]
    plain = K.normalize_rows_ref(K.normalize_rows_ref(x).double() - mu)
    assert_close(K.c3(x, mu, seed=0, sigma=0.0), plain, atol=ATOL, rtol=RTOL, what="c3 σ=0")
    noise = K.gaussian_noise_ref(seed=9, row_offset=0, n=4000, dim=64)
    assert abs(float(noise.mean())) < 0.01 and abs(float(noise.std()) - 1.0) < 0.01
    other = K.gaussian_noise_ref(seed=10, row_offset=0, n=4000, dim=64)
    assert abs(float((noise * other).mean())) < 0.01, "seeds must give independent noise"


def test_dispatch_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _rows(33, 64, torch.float16)
    monkeypatch.setenv("REVISION_KERNELS", "auto")
    # CPU tensors never take the Triton kernel on their own: the C kernels when built, else torch.
    assert select_backend(x) == ("native" if K.native.available() else "torch")
    monkeypatch.setenv("REVISION_KERNELS", "ref")
    assert select_backend(x) == "ref"
    ref = K.normalize_rows(x)
    monkeypatch.setenv("REVISION_KERNELS", "torch")
    assert_close(K.normalize_rows(x), ref, atol=ATOL, rtol=RTOL)
    monkeypatch.setenv("REVISION_KERNELS", "cuda-please")
    with pytest.raises(ValueError, match="REVISION_KERNELS"):
        K.normalize_rows(x)


def test_torch_paths_validate() -> None:
    x = _rows(8, 16, torch.float16)
    mu_t, mu_i, mu_hat = _means(16)
    with pytest.raises(ValueError, match="dtype"):
        K.normalize_rows(x.to(torch.int32))
    with pytest.raises(ValueError, match="2-D"):
        K.row_stats(x[0])
    with pytest.raises(ValueError, match="mu_t"):
        K.realign_centroid(x, mu_t[:3], mu_i, 1.0)
    with pytest.raises(ValueError, match="scale"):
        K.realign_apply(x, mu_t, mu_i, "1.0", mu_hat)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gap vector"):
        K.gap_shift(x, torch.zeros(16, dtype=torch.float64), 0.5)


def test_empty_chunks() -> None:
    x = torch.empty(0, 12, dtype=torch.float16)
    mu = torch.zeros(12, dtype=torch.float64)
    assert K.row_stats(x).n == 0
    n, s = K.realign_centroid(x, mu, mu, 1.0)
    assert n == 0 and s.shape == (12,) and float(s.abs().sum()) == 0.0
    assert K.realign_apply(x, mu, mu, 1.0, mu).shape == (0, 12)
    assert K.normalize_rows(x).shape == (0, 12)


def test_first_nonfinite_row() -> None:
    x = _rows(5000, 64, torch.float16)
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    assert K.first_nonfinite_row(x) is None
    for row, value in ((4999, float("nan")), (3001, float("inf")), (0, float("-inf"))):
        y = x.clone()
        y[row, 17] = value
        y[4998, 3] = float("nan")
        expected = min(row, 4998)
        assert K.first_nonfinite_row(y) == expected == K.first_nonfinite_row_ref(y)
    assert K.first_nonfinite_row(torch.zeros(3, 4, dtype=torch.int64)) is None


def test_check_rejects_a_wrong_torch_path() -> None:
    """A normalisation that skips the 1e-10 floor and the NaN rule must fail the comparison."""
    x = _rows(64, 32, torch.float32)
    x[7] = 1e-12
    wrong = torch.nan_to_num(x) / torch.linalg.vector_norm(torch.nan_to_num(x), dim=1, keepdim=True)
    with pytest.raises(AssertionError, match="max"):
        assert_close(wrong, K.normalize_rows_ref(x), atol=ATOL, rtol=RTOL, what="wrong normalize")


def test_out_buffers_are_used_and_checked() -> None:
    x = _rows(300, 64, torch.float16)
    mu_t, mu_i, mu_hat = _means(64)
    out = torch.full((300, 64), 7.0)
    got = K.realign_apply(x, mu_t, mu_i, 0.9, mu_hat, out=out)
    assert got.data_ptr() == out.data_ptr()
    assert torch.equal(got, K.realign_apply(x, mu_t, mu_i, 0.9, mu_hat))
    half = torch.empty(300, 64, dtype=torch.float16)
    assert K.c3(x, mu_t, seed=1, out=half, out_dtype=torch.float16).data_ptr() == half.data_ptr()
    unit = torch.empty(300, 64)
    assert torch.equal(K.normalize_rows(x, out=unit), K.normalize_rows(x))
    with pytest.raises(ValueError, match="shape"):
        K.normalize_rows(x, out=torch.empty(299, 64))
    with pytest.raises(ValueError, match="dtype"):
        K.realign_apply(x, mu_t, mu_i, 0.9, mu_hat, out=half)
    with pytest.raises(ValueError, match="contiguous"):
        K.gap_shift(x, mu_i - mu_t, 0.1, out=torch.empty(64, 300).t())


def test_imports_and_runs_without_triton() -> None:
    """`import revision` and the CPU paths work where triton cannot be imported."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, revision, revision.kernels as K\n"
        "assert not K.triton_available()\n"
        "x = torch.randn(50, 9).half(); z = torch.zeros(9, dtype=torch.float64)\n"
        "assert K.row_stats(x).n == 50 and K.realign_apply(x, z, z, 1.0, z).shape == (50, 9)\n"
        "assert K.c3(x, z, seed=1).shape == (50, 9)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_forked_child_uses_its_own_tile_pool() -> None:
    """After fork (DataLoader workers), the torch paths must not wait on the parent's pool threads."""
    import os
    import signal
    import time

    x = _rows(3000, 64, torch.float16)
    want = K.normalize_rows(x)  # the parent's pool now exists
    pid = os.fork()
    if pid == 0:  # the child: exit status says whether it computed the same rows
        try:
            torch.set_num_threads(1)  # as DataLoader workers do (GNU OpenMP is not fork-safe)
            os._exit(0 if torch.equal(K.normalize_rows(x), want) else 1)
        finally:
            os._exit(2)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0, "the forked child computed different rows"
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the forked child hung (it waited on the parent's tile pool)")
