"""A private in-memory float64 oracle of the alignment methods, checked against the golden outputs.

The other align tests import `oracle_*` and `make_store` from here. Plain numpy, whole arrays in
memory, written straight from docs/realign-spec: slow and simple on purpose.
"""

from __future__ import annotations

import glob
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from revision.store import FeatureStore, StoreConfig

GOLDEN = Path(__file__).parent / "data" / "golden"
CASES = ("small-d64", "llm2clip-d1280")


def unit(v: np.ndarray) -> np.ndarray:
    """The reference's rule: NaN/Inf → 0, divide by max-abs first, rows with norm < 1e-10 unscaled."""
    v = np.nan_to_num(np.asarray(v, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    m = np.abs(v).max(axis=1, keepdims=True) if v.shape[1] else np.zeros((v.shape[0], 1))
    safe = np.where(m > 0, m, 1.0)
    z = v / safe
    zn = np.linalg.norm(z, axis=1, keepdims=True)
    return np.where(zn * safe < 1e-10, v, z / np.where(zn > 0, zn, 1.0))


def oracle_realign(text: np.ndarray, image: np.ndarray, *, round_means: bool = True) -> dict[str, Any]:
    t, i = unit(text), unit(image)
    mu_t, mu_i = t.mean(0), i.mean(0)
    if round_means:
        mu_t = mu_t.astype(np.float32).astype(np.float64)
        mu_i = mu_i.astype(np.float32).astype(np.float64)
    tr_t = ((t - mu_t) ** 2).sum(1).mean()
    tr_i = ((i - mu_i) ** 2).sum(1).mean()
    s = np.sqrt(tr_i / (tr_t + 1e-10))
    h = unit(mu_i + s * (t - mu_t))
    mu_hat = h.mean(0)
    out = unit(h - mu_hat + mu_i)
    return {"mu_t": mu_t, "mu_i": mu_i, "trace_t": tr_t, "trace_i": tr_i, "scale": s, "mu_hat": mu_hat, "out": out}


def _sqrtm(c: np.ndarray, power: float) -> np.ndarray:
    w, v = np.linalg.eigh((c + c.T) / 2)
    keep = w > 1e-12 * w.max()
    p = np.where(keep, np.clip(w, 1e-300, None) ** power, 0.0)
    return (v * p) @ v.T


def oracle_realign_ot(text: np.ndarray, image: np.ndarray, *, shrinkage: float = 0.0) -> dict[str, Any]:
    t, i = unit(text), unit(image)
    mu_t = t.mean(0).astype(np.float32).astype(np.float64)
    mu_i = i.mean(0).astype(np.float32).astype(np.float64)

    def cov(x: np.ndarray) -> np.ndarray:
        c = np.cov(x, rowvar=False, bias=True)
        return (1 - shrinkage) * c + shrinkage * np.trace(c) / c.shape[0] * np.eye(c.shape[0])

    ct, ci = cov(t), cov(i)
    r, ir = _sqrtm(ct, 0.5), _sqrtm(ct, -0.5)
    a = ir @ _sqrtm(r @ ci @ r, 0.5) @ ir
    h = unit(mu_i + (t - mu_t) @ a)
    mu_hat = h.mean(0)
    return {"matrix": a, "mu_hat": mu_hat, "out": unit(h - mu_hat + mu_i)}


def make_store(
    path: Path,
    x: np.ndarray,
    modality: str,
    *,
    chunk_rows: int = 64,
    dtype: str = "float16",
    prefix: str = "r",
    chunks_per_shard: int = 4,
) -> FeatureStore:
    ids = [f"{prefix}{k:07d}" for k in range(x.shape[0])]
    with FeatureStore.create(
        path, StoreConfig(modality=modality, dim=x.shape[1], dtype=dtype, chunk_rows=chunk_rows,
                          chunks_per_shard=chunks_per_shard),
        metadata_columns={"caption": "str"},
    ) as st:  # fmt: skip
        if x.shape[0]:
            st.append(x, ids, {"caption": [f"c{k}" for k in range(x.shape[0])]})
    return FeatureStore.open(path)


def load_case_vectors(case: str, part: str) -> np.ndarray:
    recs: list[dict[str, Any]] = []
    for f in sorted(glob.glob(str(GOLDEN / case / part / "*.pkl"))):
        with open(f, "rb") as fh:
            recs += pickle.load(fh)
    return np.stack([r["embed"] for r in recs])


def test_oracle_reproduces_golden() -> None:
    """The oracle itself is exact on the golden cases (so it may stand in for the reference elsewhere)."""
    for case in CASES:
        res = oracle_realign(load_case_vectors(case, "input/text"), load_case_vectors(case, "input/image"))
        expected = load_case_vectors(case, "expected/trace")
        diff = np.abs(res["out"].astype(np.float32) - expected)
        assert diff.max() < 1e-6, f"{case}: max {diff.max():.3g} mean {diff.mean():.3g}"
        with open(GOLDEN / case / "expected" / "trace_stats.pkl", "rb") as fh:
            stats = pickle.load(fh)
        assert abs(res["scale"] / stats["scale"] - 1) < 1e-9
        np.testing.assert_allclose(res["mu_hat"], stats["mu_hat"], atol=1e-7)


def test_oracle_without_rounding_differs() -> None:
    """The float32 rounding of the means is visible at float64 precision (the checks that use it can bite)."""
    t = load_case_vectors("small-d64", "input/text")
    i = load_case_vectors("small-d64", "input/image")
    a = oracle_realign(t, i)["out"]
    b = oracle_realign(t, i, round_means=False)["out"]
    assert np.abs(a - b).max() > 1e-10
