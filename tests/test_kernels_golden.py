"""The kernels reproduce the reference implementation's ReAlign output on the golden case.

Uses the reference's own statistics (mu_txt, mu_img rounded to float32, scale) from
trace_stats.pkl: pass 1 over the text gives mu_txt and trace_txt, pass 2 gives mu_hat, pass 3
gives rows within 1e-5 of the reference's aligned rows (the golden README's tolerance).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import revision.kernels as K
from revision.kernels.compare import assert_close

CASE = Path(__file__).parent / "data" / "golden" / "small-d64"


def _load(path: Path) -> list[dict]:
    with path.open("rb") as f:
        return pickle.load(f)


@pytest.fixture(scope="module")
def golden() -> dict:
    if not (CASE / "expected" / "trace_stats.pkl").exists():
        pytest.skip(f"golden case missing: {CASE}")
    files = sorted((CASE / "input" / "text").glob("*.pkl"))
    records = [r for f in files for r in _load(f) if r["embed"] is not None]
    expected = [r for f in files for r in _load(CASE / "expected" / "trace" / f"{f.stem}_trace.pkl")]
    return {
        "text": torch.from_numpy(np.stack([r["embed"] for r in records])),
        "expected": torch.from_numpy(np.stack([r["embed"] for r in expected])),
        "stats": _load(CASE / "expected" / "trace_stats.pkl"),
    }


@pytest.mark.parametrize("backend", ["native", "torch", "ref"])
@pytest.mark.parametrize("chunk", [97, 1 << 20])
def test_golden_realign(golden: dict, backend: str, chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    if backend == "native" and not K.native.available():
        pytest.skip("the C extension is not built")
    monkeypatch.setenv("REVISION_KERNELS", backend)
    text, stats = golden["text"], golden["stats"]
    assert text.dtype == torch.float16
    pieces = list(torch.split(text, chunk))

    moments = K.Moments.empty(text.shape[1])
    for piece in pieces:
        moments = K.merge_moments(moments, K.row_stats(piece))
    assert_close(moments.mean, torch.from_numpy(stats["mu_txt"]).double(), atol=1e-6, rtol=0, what="mu_txt")
    assert abs(moments.trace - stats["trace_txt"]) <= 1e-6 * stats["trace_txt"]

    mu_t = torch.from_numpy(stats["mu_txt"]).double()  # float32-rounded, as the reference uses them
    mu_i = torch.from_numpy(stats["mu_img"]).double()
    scale = float(stats["scale"])
    total, count = torch.zeros(text.shape[1], dtype=torch.float64), 0
    for piece in pieces:
        n, s = K.realign_centroid(piece, mu_t, mu_i, scale)
        total, count = total + s, count + n
    mu_hat = total / count
    assert_close(mu_hat, torch.from_numpy(stats["mu_hat"]).double(), atol=1e-6, rtol=0, what="mu_hat")

    out = torch.cat([K.realign_apply(piece, mu_t, mu_i, scale, mu_hat) for piece in pieces])
    assert out.dtype == torch.float32
    assert_close(out, golden["expected"], atol=1e-5, rtol=0, what="aligned rows")
    wrong = torch.cat([K.realign_apply(p, mu_t, mu_i, scale, mu_i) for p in pieces])  # no centroid fix
    with pytest.raises(AssertionError):
        assert_close(wrong, golden["expected"], atol=1e-5, rtol=0, what="aligned rows without mu_hat")
