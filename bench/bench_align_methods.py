"""Which alignment method when: every method on two kinds of data, with the numbers the README quotes.

Datasets (small, in memory, written to temporary stores and aligned with `align_stores`):
  - cones: the golden small-d64 case (two anisotropic cones on the sphere, centroid gap ≈ 0.65), the
    geometry of real CLIP-like embeddings;
  - shapes: text and image cones whose covariance *shapes* differ (variance falling along the axes for
    text, rising for images), the case where matching centroid and trace is not enough.
Metrics (after alignment, against the unit image rows):
  gap        ‖mean(out) − μ_i‖ (0 = centroids match);
  trace      T(out) / T(image) (1 = same spread);
  cov_err    ‖Σ_out − Σ_i‖_F / ‖Σ_i‖_F (0 = same covariance);
  mix        share of each aligned text row's 10 nearest neighbours in text ∪ image that are images
             (0.5 = fully mixed, 0 = modality-pure neighbourhoods);
  keep       share of each text row's 10 nearest text neighbours kept after alignment (1 = the
             text's own structure untouched).
Baseline: the unaligned text (method "none") in the same run.
Run: python -m revision.bench.bench_align_methods [--rows 1500] [--dim 32]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from revision.bench.harness import print_table, write_results

METHODS = ("none", "realign", "realign-ot", "mean-shift", "c3", "capdec", "gap-shift")
# Parameter settings the align README quotes, as (label, method, AlignConfig overrides).
VARIANTS: list[tuple[str, str, dict[str, Any]]] = [("realign-ot shrunk", "realign-ot", {"shrinkage": 0.3})]
GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "data" / "golden" / "small-d64" / "input"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)


def _knn(q: np.ndarray, pts: np.ndarray, k: int, skip_self: bool) -> np.ndarray:
    d2 = (q * q).sum(1)[:, None] - 2 * q @ pts.T + (pts * pts).sum(1)[None, :]
    if skip_self:
        np.fill_diagonal(d2, np.inf)
    return np.argpartition(d2, k, axis=1)[:, :k]


def metrics(text: np.ndarray, out: np.ndarray, image: np.ndarray, k: int = 10, sample: int = 800) -> dict[str, float]:
    cov_i = np.cov(image, rowvar=False, bias=True)
    q, im = out[:sample], image[:sample]
    nn = _knn(q, np.concatenate([q, im]), k, skip_self=True)
    before = _knn(text[:sample], text[:sample], k, skip_self=True)
    after = _knn(q, q, k, skip_self=True)
    keep = np.mean([len(set(a) & set(b)) / k for a, b in zip(before, after, strict=True)])
    return {
        "gap": float(np.linalg.norm(out.mean(0) - image.mean(0))),
        "trace": float(((out - out.mean(0)) ** 2).sum(1).mean() / ((image - image.mean(0)) ** 2).sum(1).mean()),
        "cov_err": float(np.linalg.norm(np.cov(out, rowvar=False, bias=True) - cov_i) / np.linalg.norm(cov_i)),
        "mix": float((nn >= len(q)).mean()),
        "keep": float(keep),
    }


def _golden() -> tuple[np.ndarray, np.ndarray]:
    import pickle

    def load(d: Path) -> np.ndarray:
        recs: list[dict[str, Any]] = []
        for f in sorted(d.glob("*.pkl")):
            with open(f, "rb") as fh:
                recs += pickle.load(fh)
        return np.stack([r["embed"] for r in recs]).astype(np.float32)

    return load(GOLDEN / "text"), load(GOLDEN / "image")


def _shapes(rows: int, dim: int, seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mt, mi = np.zeros(dim), np.zeros(dim)
    mt[0], mi[1] = 5.0, 5.0
    t = mt + rng.normal(size=(rows, dim)) * np.linspace(1.0, 0.1, dim)
    i = mi + rng.normal(size=(rows, dim)) * np.linspace(0.1, 1.0, dim)
    return t.astype(np.float32), i.astype(np.float32)


def evaluate(name: str, text: np.ndarray, image: np.ndarray, work: Path) -> list[dict[str, Any]]:
    from revision.align import align_stores
    from revision.store import FeatureStore, StoreConfig

    paths = {}
    for modality, x in (("text", text), ("image", image)):
        p = work / f"{name}-{modality}.zarr"
        with FeatureStore.create(p, StoreConfig(modality=modality, dim=x.shape[1], dtype="float32")) as st:
            st.append(x, [f"{modality}{k}" for k in range(len(x))])
        paths[modality] = p
    ut, ui = _unit(text.astype(np.float64)), _unit(image.astype(np.float64))
    rows = []
    for label, method, overrides in [*((m, m, {}) for m in METHODS), *VARIANTS]:
        if method == "none":
            out = ut
        else:
            dst = work / f"{name}-{label}.zarr"
            align_stores(paths["text"], paths["image"], dst, method=method, progress=False, **overrides)
            out = FeatureStore.open(dst).read().astype(np.float64)
        rows.append({"data": name, "method": label, **overrides, **metrics(ut, out, ui)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1500, help="rows per modality of the shapes data (default: 1500)")
    ap.add_argument("--dim", type=int, default=32, help="dimension of the shapes data (default: %(default)s)")
    ap.add_argument("--json-out", type=Path, default=None, help="default: bench/results/align-methods.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-methods-") as tmp:
        work = Path(tmp)
        table = evaluate("cones", *_golden(), work) + evaluate("shapes", *_shapes(args.rows, args.dim), work)
    print_table(table, ["data", "method", "gap", "trace", "cov_err", "mix", "keep"])
    print(f"results: {write_results('align-methods', {'table': table}, args.json_out)}")


if __name__ == "__main__":
    main()
