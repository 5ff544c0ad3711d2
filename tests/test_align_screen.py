"""Strict screening finds the first non-finite or all-zero row, whatever the dtype and tile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from revision.align.passes import screen_block
from revision.errors import UserError


class _Store:
    path = "t.zarr"

    def read_ids(self, lo: int, hi: int) -> list[str]:
        return [f"id{i}" for i in range(lo, hi)]


def _first_bad(x: torch.Tensor) -> tuple[int, str] | None:
    """The plain reference: float64 per-row checks."""
    x64 = x.double()
    finite = torch.isfinite(x64).all(dim=1)
    nonzero = (x64 != 0).any(dim=1)
    bad = torch.nonzero(~finite | ~nonzero).flatten()
    if not bad.numel():
        return None
    r = int(bad[0])
    return r, ("a NaN or infinite value" if not bool(finite[r]) else "an all-zero row")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("seed", range(6))
def test_screen_matches_reference(dtype: torch.dtype, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(1, 3000)), int(rng.choice([1, 7, 257, 1280]))
    x = torch.from_numpy(rng.standard_normal((n, d)).astype(np.float32)).to(dtype)
    for _ in range(int(rng.integers(0, 3))):
        r, c = int(rng.integers(0, n)), int(rng.integers(0, d))
        kind = rng.integers(0, 5)
        if kind == 0:
            x[r, c] = float("nan")
        elif kind == 1:
            x[r, c] = float("inf")
        elif kind == 2:
            x[r, c] = float("-inf")
        elif kind == 3:
            x[r] = 0.0
        else:
            x[r] = -0.0
    x[0, 0] = 2**-14 if dtype != torch.bfloat16 else 2**-126  # a tiny but nonzero value is fine
    expected = _first_bad(x)
    row0 = int(rng.integers(0, 10**9))
    if expected is None:
        screen_block(x, row0, _Store())  # type: ignore[arg-type]
        return
    with pytest.raises(UserError) as err:
        screen_block(x, row0, _Store())  # type: ignore[arg-type]
    r, what = expected
    assert f"row {row0 + r} " in str(err.value) and f"id{row0 + r}" in str(err.value) and what in str(err.value)
