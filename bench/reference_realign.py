"""BASELINE ONLY — our re-implementation of the reference ReAlign script's approach, for bench_align.py.

Not used by revision itself. It follows the reference's way of working as described in
docs (../shared/reference/realign-spec.md): every pass loads each whole pickle with the plain
unpickler and turns its vectors into one float64 array; four passes over the text files (mean,
trace, centroid of the projected rows, apply + write) and two over the image files (mean, trace);
all arithmetic in float64 in blocks of `chunk_size` rows; μ_t and μ_i rounded to float32.
Run: python -m revision.bench.reference_realign --input_dir T --img_input_dir I --output_dir O
"""

from __future__ import annotations

import argparse
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)
    m = np.abs(v).max(axis=1, keepdims=True)
    safe = np.where(m > 0, m, 1.0)
    z = v / safe
    zn = np.linalg.norm(z, axis=1, keepdims=True)
    return np.where(zn * safe < 1e-10, v, z / np.where(zn > 0, zn, 1.0))


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.suffix == ".pkl")


def _load(path: Path) -> tuple[list[dict[str, Any]], np.ndarray]:
    with open(path, "rb") as fh:
        records = pickle.load(fh)
    kept = [r for r in records if r.get("embed") is not None]
    return kept, np.array([r["embed"] for r in kept], dtype=np.float64)


def _chunks(x: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for s in range(0, x.shape[0], size):
        yield x[s : s + size]


def _mean(files: list[Path], size: int) -> np.ndarray:
    total, n = None, 0
    for f in files:
        _, x = _load(f)
        for c in _chunks(x, size):
            s = _unit(c).sum(axis=0)
            total = s if total is None else total + s
            n += c.shape[0]
    assert total is not None
    return (total / n).astype(np.float32).astype(np.float64)


def _trace(files: list[Path], mu: np.ndarray, size: int) -> float:
    total, n = 0.0, 0
    for f in files:
        _, x = _load(f)
        for c in _chunks(x, size):
            total += float(((_unit(c) - mu) ** 2).sum())
            n += c.shape[0]
    return total / n


def run(input_dir: Path, img_input_dir: Path, output_dir: Path, chunk_size: int = 10_000) -> dict[str, Any]:
    texts, images = _files(input_dir), _files(img_input_dir)
    mu_t, mu_i = _mean(texts, chunk_size), _mean(images, chunk_size)
    tr_t, tr_i = _trace(texts, mu_t, chunk_size), _trace(images, mu_i, chunk_size)
    scale = float(np.sqrt(tr_i / (tr_t + 1e-10)))
    total, n = np.zeros_like(mu_t), 0
    for f in texts:
        _, x = _load(f)
        for c in _chunks(x, chunk_size):
            total += _unit(mu_i + scale * (_unit(c) - mu_t)).sum(axis=0)
            n += c.shape[0]
    mu_hat = total / n
    (output_dir / "trace").mkdir(parents=True, exist_ok=True)
    for f in texts:
        records, x = _load(f)
        out = np.concatenate(
            [_unit(_unit(mu_i + scale * (_unit(c) - mu_t)) - mu_hat + mu_i) for c in _chunks(x, chunk_size)]
        ).astype(np.float32)
        aligned = [{**r, "embed": out[k]} for k, r in enumerate(records)]
        with open(output_dir / "trace" / f"{f.stem}_trace.pkl", "wb") as fh:
            pickle.dump(aligned, fh, protocol=4)
    stats = {
        "mu_txt": mu_t.astype(np.float32),
        "mu_img": mu_i.astype(np.float32),
        "mu_hat": mu_hat.astype(np.float32),
        "scale": scale,
        "trace_txt": tr_t,
        "trace_img": tr_i,
        "strict_finite": True,
    }
    with open(output_dir / "trace_stats.pkl", "wb") as fh:
        pickle.dump(stats, fh, protocol=4)
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input_dir", type=Path, required=True)
    ap.add_argument("--img_input_dir", type=Path, required=True)
    ap.add_argument("--output_dir", type=Path, required=True)
    ap.add_argument("--chunk_size", type=int, default=10_000)
    a = ap.parse_args()
    os.makedirs(a.output_dir, exist_ok=True)
    run(a.input_dir, a.img_input_dir, a.output_dir, a.chunk_size)


if __name__ == "__main__":
    main()
