"""Every op, on every backend, reads any tensor layout as it reads the layout's contiguous copy.

Issue 11, defect 4: the C kernels read a strided single row (`base[:1, ::2]`) as if it were
contiguous. Here hypothesis draws layouts (row and column strides, zero strides as `expand` makes
them, transposed views, single rows and columns, offsets into a larger buffer, inputs at an odd
byte address) and shapes, and each op on each backend is held to its float64 reference computed
on `x.contiguous()`. Triton runs under the interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
so its shapes stay small.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import revision.kernels as K
from revision.kernels import native
from revision.kernels.backend import ENV_VAR
from revision.kernels.compare import OUTPUT_TOLERANCE, assert_close
from revision.kernels.launch import rows_readable_in_place

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
ATOL, RTOL = 3e-6, 1e-5


def _triton_usable() -> bool:
    """Triton on this machine means the interpreter: kernels decorated while TRITON_INTERPRET was
    unset are compiled ones and cannot run on CPU tensors."""
    if os.environ.get("TRITON_INTERPRET") != "1" or not K.triton_available():
        return False
    from triton.runtime.interpreter import InterpretedFunction

    from revision.kernels import normalize

    return isinstance(normalize._normalize_rows_kernel, InterpretedFunction)


BACKENDS = [
    pytest.param("native", marks=pytest.mark.skipif(not native.available(), reason="the C extension is not built")),
    "torch",
    "ref",
    pytest.param("triton", marks=pytest.mark.skipif(not _triton_usable(), reason="no interpreted Triton here")),
]


@contextlib.contextmanager
def _backend(name: str) -> Iterator[None]:
    # Not monkeypatch: hypothesis runs many examples in one function-scoped fixture.
    saved = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = name
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = saved


@dataclass(frozen=True)
class Layout:
    """A (n, d) view of a flat buffer: strides in elements, an element offset, an odd byte address."""

    n: int
    d: int
    dtype: torch.dtype
    row_stride: int
    col_stride: int
    offset: int
    misaligned: bool
    seed: int
    specials: tuple[tuple[int, float], ...]


@st.composite
def layouts(draw: st.DrawFn, max_rows: int = 40, max_dim: int = 70) -> Layout:
    n = draw(st.integers(0, max_rows))
    d = draw(st.integers(1, max_dim))
    kind = draw(
        st.sampled_from(
            ["contiguous", "row_gap", "col_step", "every_other_row", "transposed", "expand_rows", "expand_cols",
             "expand_all", "any"]
        )
    )  # fmt: skip
    gap = draw(st.integers(1, 5))
    step = draw(st.integers(2, 3))
    row_stride, col_stride = {
        "contiguous": (d, 1),
        "row_gap": (d + gap, 1),
        "col_step": (step * d + gap, step),
        "every_other_row": (2 * d, 1),
        "transposed": (1, max(n, 1)),
        "expand_rows": (0, 1),
        "expand_cols": (1, 0),
        "expand_all": (0, 0),
        "any": (draw(st.integers(0, 2 * d + 3)), draw(st.integers(0, 4))),
    }[kind]
    size = max(n * d, 1) * 3 + 8
    specials = draw(
        st.lists(
            st.tuples(st.integers(0, size - 1), st.sampled_from([float("nan"), float("inf"), float("-inf"), 0.0])),
            max_size=3,
        )
    )
    return Layout(
        n, d, draw(st.sampled_from(DTYPES)), row_stride, col_stride, draw(st.integers(0, 7)),
        draw(st.booleans()), draw(st.integers(0, 2**16)), tuple(specials),
    )  # fmt: skip


def make(layout: Layout) -> torch.Tensor:
    """The view the layout describes, over a buffer of random rows holding its special values."""
    n, d = layout.n, layout.d
    extent = layout.offset + (n - 1) * layout.row_stride + (d - 1) * layout.col_stride + 1 if n else layout.offset
    size = max(extent, max(n * d, 1) * 3 + 8)
    g = torch.Generator().manual_seed(layout.seed)
    values = 0.4 * torch.randn(size, generator=g) + 0.5
    for pos, v in layout.specials:
        values[pos % size] = v
    values = values.to(layout.dtype)
    if layout.misaligned:
        # A buffer one byte past an element boundary, as numpy hands out for a packed file's records.
        item = values.element_size()
        raw = np.frombuffer(bytearray(size * item + 1), dtype=np.uint8, offset=1)
        flat = torch.from_numpy(raw.view(np.uint16 if item == 2 else np.float32)).view(layout.dtype)
        flat.copy_(values)
        assert flat.data_ptr() % item != 0
    else:
        flat = values
    return flat.as_strided((n, d), (layout.row_stride, layout.col_stride), layout.offset)


def close(got: torch.Tensor, want: torch.Tensor, *, atol: float, rtol: float, what: str) -> None:
    """assert_close, where ±Inf must match exactly (Inf − Inf would read as a difference of NaN)."""
    g, w = got.detach().to(torch.float64), want.detach().to(torch.float64)
    inf = torch.isinf(w)
    assert torch.equal(torch.isinf(g), inf) and torch.equal(g[inf], w[inf]), f"{what}: ±Inf differ"
    assert_close(torch.where(inf, 0.0, g), torch.where(inf, 0.0, w), atol=atol, rtol=rtol, what=what)


def _means(d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mu_t, mu_i, mu_hat = 0.05 * torch.randn(3, d, generator=g, dtype=torch.float64)
    return mu_t, mu_i, mu_hat


# Interpreted Triton costs milliseconds per program instance: fewer examples on it.
def _settings(backend: str) -> settings:
    return settings(
        max_examples=25 if backend == "triton" else 80,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )


# The layouts of the issue, always tried first: a strided single row, a single column, a transposed
# view, a row expanded over many rows.
EXAMPLES = [
    Layout(1, 4, torch.float32, 8, 2, 0, False, 1, ()),
    Layout(1, 37, torch.float16, 80, 2, 3, True, 2, ()),
    Layout(9, 1, torch.bfloat16, 3, 5, 1, False, 3, ()),
    Layout(6, 5, torch.float32, 1, 6, 0, False, 4, ()),
    Layout(7, 65, torch.float16, 0, 1, 2, False, 5, ((3, float("nan")),)),
]


def _with_examples(**fixed: object):  # type: ignore[no-untyped-def]
    """@example for each of EXAMPLES, with `fixed` values for the test's other arguments."""

    def decorate(test):  # type: ignore[no-untyped-def]
        for layout in EXAMPLES:
            test = example(layout=layout, **fixed)(test)
        return test

    return decorate


def test_strided_single_row_is_read_with_its_stride() -> None:
    """The issue's case: on every backend, `base[:1, ::2]` holds 1, 3, 5, 7, not 1, 2, 3, 4."""
    base = torch.arange(1.0, 17.0).reshape(2, 8)
    x = base[:1, ::2]
    want = torch.tensor([1.0, 3.0, 5.0, 7.0], dtype=torch.float64)
    names = ["native", "torch", "ref"] + (["triton"] if _triton_usable() else [])
    for name in names:
        if name == "native" and not native.available():
            continue
        with _backend(name):
            assert torch.equal(K.row_stats(x, normalize=False).mean, want), name
            assert_close(K.row_stats(x).mean, want / want.norm(), atol=1e-7, rtol=1e-7, what=name)


def test_native_accepts_only_layouts_it_reads() -> None:
    """supports() says False for column-strided rows (so the ops take the torch path) and the C
    launchers refuse them with a ValueError naming the strides."""
    if not native.available():
        pytest.skip("the C extension is not built")
    base = torch.arange(1.0, 17.0).reshape(2, 8)
    for x in (base[:1, ::2], base[:, ::2], base.T, base[:1].expand(3, 8)):
        assert not native.supports(x)
        with pytest.raises(ValueError, match="stride"):
            native.row_stats_native(x)
    for x in (base[:1], base[:, 2:5], base[:, :1], base[:, 3:4], base.T[:, :1], base[::2]):
        assert native.supports(x) and rows_readable_in_place(x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_normalize_rows_any_layout(backend: str) -> None:
    @_settings(backend)
    @_with_examples()
    @given(layout=layouts())
    def check(layout: Layout) -> None:
        x = make(layout)
        with _backend(backend):
            got = K.normalize_rows(x)
        close(got, K.normalize_rows_ref(x.contiguous()), atol=ATOL, rtol=RTOL, what=f"normalize_rows {layout}")

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_stats_any_layout(backend: str) -> None:
    @_settings(backend)
    @_with_examples(second_moment=False)
    @given(layout=layouts(), second_moment=st.booleans())
    def check(layout: Layout, second_moment: bool) -> None:
        x = make(layout)
        xc = x.contiguous()
        finite = bool(torch.isfinite(xc).all())
        for normalize in (True, False) if finite else (True,):
            with _backend(backend):
                got = K.row_stats(x, normalize=normalize, second_moment=second_moment)
            want = K.row_stats_ref(xc, normalize=normalize, second_moment=second_moment)
            assert got.n == want.n
            scale = float(want.mean.abs().max()) if want.n and not normalize else 1.0
            what = f"row_stats(normalize={normalize}) {layout}"
            close(got.mean, want.mean, atol=1e-6 * scale, rtol=1e-6, what=f"mean of {what}")
            close(got.m2, want.m2, atol=1e-6 * max(want.n, 1) * scale**2, rtol=1e-5, what=f"m2 of {what}")
            if second_moment:
                assert got.comoment is not None and want.comoment is not None
                close(got.comoment, want.comoment, atol=1e-6 * max(want.n, 1) * scale**2, rtol=1e-5, what=what)

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_screening_any_layout(backend: str) -> None:
    """Strict screening names the same row on a view as on its copy; so do the row searches."""

    @_settings(backend)
    @_with_examples()
    @given(layout=layouts())
    def check(layout: Layout) -> None:
        x = make(layout)
        xc = x.contiguous()
        want = K.first_bad_row(xc)
        got = K.first_bad_row(x)
        assert (got and (got.row, got.nonfinite)) == (want and (want.row, want.nonfinite))
        assert K.first_nonfinite_row(x) == K.first_nonfinite_row_ref(xc)
        with _backend(backend):
            if want is None:
                K.row_stats(x, screen=True)
                return
            with pytest.raises(K.BadRowError) as err:
                K.row_stats(x, screen=True)
        assert (err.value.row, err.value.nonfinite) == (want.row, want.nonfinite)

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_realign_any_layout(backend: str) -> None:
    """Passes 2 and 3, with a float scale (the C and Triton kernels) and a matrix scale (realign-ot)."""

    @_settings(backend)
    @_with_examples(matrix=False, out_dtype=torch.float16)
    @given(
        layout=layouts(),
        matrix=st.booleans(),
        out_dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    )
    def check(layout: Layout, matrix: bool, out_dtype: torch.dtype) -> None:
        x = make(layout)
        xc = x.contiguous()
        d = layout.d
        mu_t, mu_i, mu_hat = _means(d, layout.seed)
        scale: float | torch.Tensor = 1.37
        if matrix:
            g = torch.Generator().manual_seed(layout.seed)
            scale = torch.eye(d, dtype=torch.float64) + 0.05 * torch.randn(d, d, generator=g, dtype=torch.float64)
        with _backend(backend):
            n, got_sum = K.realign_centroid(x, mu_t, mu_i, scale)
            got = K.realign_apply(x, mu_t, mu_i, scale, mu_hat, out_dtype=out_dtype)
        n_ref, want_sum = K.realign_centroid_ref(xc, mu_t, mu_i, scale)
        want = K.realign_apply_ref(xc, mu_t, mu_i, scale, mu_hat, out_dtype=torch.float64)
        assert n == n_ref == layout.n and got.dtype == out_dtype
        tol = 1e-5 if matrix else ATOL
        close(got_sum, want_sum, atol=tol * max(n, 1), rtol=1e-5, what=f"Σ h {layout}")
        atol, rtol = OUTPUT_TOLERANCE[out_dtype]
        close(got, want, atol=max(atol, tol), rtol=rtol, what=f"realign_apply → {out_dtype} {layout}")

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_shift_ops_any_layout(backend: str) -> None:
    """shift_rows and the baselines on top of it (mean_shift, c3, capdec, gap_shift)."""

    @_settings(backend)
    @_with_examples(op="c3", flags=(True, True), sigma=0.2, row_offset=3)
    @given(
        layout=layouts(),
        op=st.sampled_from(["shift_rows", "mean_shift", "c3", "capdec", "gap_shift"]),
        flags=st.tuples(st.booleans(), st.booleans()),
        sigma=st.sampled_from([0.0, 0.2]),
        row_offset=st.integers(0, 1000),
    )
    def check(layout: Layout, op: str, flags: tuple[bool, bool], sigma: float, row_offset: int) -> None:
        x = make(layout)
        xc = x.contiguous()
        mu, delta, _ = _means(layout.d, layout.seed)
        delta = delta + 0.01  # the gap vector must be non-zero
        noise = dict(seed=layout.seed, row_offset=row_offset, sigma=sigma)
        calls = {
            "shift_rows": lambda f, v: f(v, mu, normalize_in=flags[0], normalize_out=flags[1], **noise),
            "mean_shift": lambda f, v: f(v, mu, normalize=flags[0]),
            "c3": lambda f, v: f(v, mu, **noise),
            "capdec": lambda f, v: f(v, **noise),
            "gap_shift": lambda f, v: f(v, delta, 0.3, normalize=flags[0]),
        }
        with _backend(backend):
            got = calls[op](getattr(K, op), x)
        want = calls[op](getattr(K, f"{op}_ref"), xc)
        close(got, want, atol=2e-5, rtol=2e-5, what=f"{op} {layout}")

    check()


def test_a_wrong_reader_is_caught() -> None:
    """The check bites: reading the issue's view as contiguous (the old defect) fails it."""
    layout = EXAMPLES[0]
    x = make(layout)
    wrong = torch.as_strided(x, x.shape, (x.shape[1], 1))
    with pytest.raises(AssertionError, match="max"):
        close(K.normalize_rows_ref(wrong), K.normalize_rows_ref(x.contiguous()), atol=ATOL, rtol=RTOL, what="wrong")
