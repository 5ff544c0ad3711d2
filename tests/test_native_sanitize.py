"""kernels/csrc/native.c under AddressSanitizer and UndefinedBehaviorSanitizer (issue 11, defect 10).

The extension is compiled again, with `-fsanitize=address,undefined -fno-sanitize-recover=all`, into a
temporary directory; a subprocess (libasan preloaded, as Python itself is not instrumented) loads that
build in place of the installed one and runs every C entry point on awkward inputs: 1x1, 7x257 and
1023x1280 rows, strided, offset and misaligned views, fp16/bf16/fp32, NaN/Inf/zero/tiny/huge rows,
each compared with the float64 torch references. Any sanitizer report fails the test.

A second check compiles native.c with GCC's most eager strict-aliasing warning: the kernels used to
write decoded floats through `uint32_t *` (undefined at -O3, where GCC may reorder such stores past the
float loads that read them back); type punning now goes through memcpy only.

Run as a script (`python tests/test_native_sanitize.py BUILD.so`), this file is the subprocess.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "kernels" / "csrc" / "native.c"
# setup.py's flags (contraction off, errno off), at -O1 so the sanitizers see every access.
FLAGS = ["-ffp-contract=off", "-fno-math-errno", "-Wall"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g", "-O1"]


def _compiler() -> str | None:
    for name in ("gcc", "cc"):
        if path := shutil.which(name):
            return path
    return None


def _runtime(cc: str, name: str) -> str | None:
    """The sanitizer runtime's path, or None where the toolchain does not carry it."""
    out = subprocess.run([cc, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return out if os.path.isabs(out) and os.path.exists(out) else None


def _include() -> list[str]:
    paths = sysconfig.get_paths()
    return [f"-I{p}" for p in dict.fromkeys((paths["include"], paths["platinclude"]))]


def test_no_type_punning_through_pointers(tmp_path: Path) -> None:
    """-Wstrict-aliasing=1 flags every cast that may break strict aliasing: none may come from native.c."""
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler on this machine")
    # The warning comes from the front end: -O1 finds the same casts as -O3, in a fraction of the time.
    cmd = [cc, "-O1", "-fstrict-aliasing", "-Wstrict-aliasing=1", *FLAGS, *_include(), "-c", str(SOURCE)]
    done = subprocess.run([*cmd, "-o", str(tmp_path / "native.o")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # Python's own headers trip the same warning; only native.c's lines count.
    ours = [line for line in done.stderr.splitlines() if "native.c:" in line and "warning" in line]
    assert not ours, "\n".join(ours)


@pytest.fixture(scope="module")
def sanitized_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler on this machine")
    asan = _runtime(cc, "libasan.so")
    if asan is None or _runtime(cc, "libubsan.so") is None:
        pytest.skip(f"{cc} has no libasan/libubsan here (Debian: apt-get install libasan8 libubsan1)")
    out = tmp_path_factory.mktemp("asan") / f"_native{sysconfig.get_config_var('EXT_SUFFIX')}"
    cmd = [cc, "-shared", "-fPIC", *SANITIZE, *FLAGS, *_include(), str(SOURCE), "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stderr}"
    return out, asan


def test_sanitized_kernels_match_the_references(sanitized_build: tuple[Path, str]) -> None:
    build, asan = sanitized_build
    env = dict(os.environ)
    env.update(
        LD_PRELOAD=asan,
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
        REVISION_KERNELS="native",
        OMP_NUM_THREADS="2",
    )
    done = subprocess.run(
        [sys.executable, __file__, str(build)], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )
    report = f"rc {done.returncode}\nstdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-8000:]}"
    assert done.returncode == 0, report
    assert "runtime error" not in done.stderr and "AddressSanitizer" not in done.stderr, report
    assert "checked" in done.stdout, report


# ---- the subprocess ---------------------------------------------------------------------------------


def _load(build: str) -> None:
    """Registers the sanitized build as revision.kernels._native before the package imports it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("revision.kernels._native", build)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["revision.kernels._native"] = module


def _exercise() -> int:
    import numpy as np
    import torch

    import revision.kernels as K
    from revision.kernels import native
    from revision.kernels.compare import OUTPUT_TOLERANCE, assert_close

    lib = native._module()
    assert lib is sys.modules["revision.kernels._native"], "the installed build was loaded, not the sanitized one"

    def rows(n: int, d: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        x = 0.3 * torch.randn(n, d, generator=g) + torch.randn(d, generator=g)
        if n >= 9:
            x[2] = 0.0
            x[3] *= 1e-12 if dtype != torch.float16 else 1e-6
            if dtype != torch.float16:
                x[6] *= 1e25
            x[4, d // 2] = float("nan")
            x[5, 0] = float("-inf")
            x[7, -1] = float("inf")
        return x.to(dtype)

    def at_odd_address(x: torch.Tensor) -> torch.Tensor:
        """A contiguous copy of x one byte past an element boundary, as a packed numpy buffer gives."""
        item = x.element_size()
        raw = np.frombuffer(bytearray(x.numel() * item + 1), dtype=np.uint8, offset=1)
        odd = torch.from_numpy(raw.view(np.uint16 if item == 2 else np.float32)).view(x.dtype).view(x.shape)
        return odd.copy_(x)

    def views(x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """x, a copy at an odd byte address, a row-strided view and an offset into a larger buffer."""
        n, d = x.shape
        wide = torch.zeros(n, d + 5, dtype=x.dtype)
        wide[:, 3 : 3 + d] = x
        flat = torch.zeros(n * d + 11, dtype=x.dtype)
        flat[7 : 7 + n * d] = x.flatten()
        odd = at_odd_address(x)
        every = [("contiguous", x), ("misaligned", odd), ("strided", wide[:, 3 : 3 + d]),
                 ("offset", flat[7 : 7 + n * d].view(n, d))]  # fmt: skip
        # The large case (for the 256-row blocks and 64-lane sums) only twice: it dominates the run time.
        return every if n * d < 10**6 else every[:2]

    checked = 0
    for n, d in [(1, 1), (7, 257), (1023, 1280), (300, 64), (13, 3)]:
        g = torch.Generator().manual_seed(n + d)
        mu_t, mu_i, mu_hat = 0.05 * torch.randn(3, d, generator=g, dtype=torch.float64)
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            base = rows(n, d, dtype, n * d)
            for name, x in views(base):
                assert native.supports(x), name
                what = f"{n}x{d} {dtype} {name}"
                for normalize in (True, False):
                    v = x if normalize else torch.nan_to_num(x, nan=0.0, posinf=2.0, neginf=-2.0)
                    got = native.row_stats_native(v, normalize=normalize)
                    want = K.row_stats_ref(v, normalize=normalize)
                    scale = float(want.mean.abs().max()) if not normalize else 1.0
                    assert got.n == want.n, what
                    assert_close(got.mean, want.mean, atol=1e-7 * scale, rtol=1e-6, what=f"mean {what}")
                    assert_close(got.m2, want.m2, atol=1e-6 * n * scale**2, rtol=1e-5, what=f"m2 {what}")
                bad = K.first_bad_row(x)
                try:
                    native.row_stats_native(x, screen=True)
                    assert bad is None, what
                except K.BadRowError as err:
                    assert bad is not None and (err.row, err.nonfinite) == (bad.row, bad.nonfinite), what
                count, sums = K.realign_centroid_native(x, mu_t, mu_i, 1.37)
                _, want_sums = K.realign_centroid_ref(x, mu_t, mu_i, 1.37)
                assert_close(sums, want_sums, atol=3e-6 * n, rtol=1e-5, what=f"Σ h {what}")
                want_rows = K.realign_apply_ref(x, mu_t, mu_i, 0.81, mu_hat, out_dtype=torch.float64)
                for out_dtype in (torch.float32, torch.float16, torch.bfloat16):
                    out = K.realign_apply_native(x, mu_t, mu_i, 0.81, mu_hat, out_dtype=out_dtype)
                    atol, rtol = OUTPUT_TOLERANCE[out_dtype]
                    assert_close(out, want_rows, atol=max(atol, 3e-6), rtol=rtol, what=f"apply → {out_dtype} {what}")
                    # The output buffer may sit at an odd address too (the caller's reused buffer).
                    odd_out = at_odd_address(torch.zeros_like(out))
                    K.realign_apply_native(x, mu_t, mu_i, 0.81, mu_hat, out_dtype=out_dtype, out=odd_out)
                    assert torch.equal(odd_out.view(torch.uint8), out.view(torch.uint8)), f"odd out {what}"
                checked += 1
        # The dispatch's fallback for layouts the C code must not read (defect 4): a column step.
        x = rows(n, 2 * d, torch.float16, 5)[:, ::2]
        assert_close(K.row_stats(x).mean, K.row_stats_ref(x).mean, atol=1e-7, rtol=1e-6, what="column step")
    # The argument checks of the C entry points, which raise before touching memory.
    for args in [(0, 7, 1, 1, 4), (0, 0, 1, 0, 4), (0, 0, 2, 4, 8)]:
        try:
            lib.centroid(*args, 0, 1.0, 0)
        except ValueError:
            checked += 1
        else:
            raise AssertionError(f"centroid{args} did not raise")
    print(f"checked {checked} cases")
    return 0


if __name__ == "__main__":
    _load(sys.argv[1])
    sys.exit(_exercise())
