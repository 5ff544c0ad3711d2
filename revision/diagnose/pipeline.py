"""`diagnose()`: every gap metric for raw and aligned text against the image store, plus the report.

Streamed metrics (centroid gap, traces, RMG, spectrum) read every row once; sampled metrics
(k-NN mixing, top-1 cosines, separability, retrieval, figures) use seeded samples of
`sample` rows per modality. The image store is streamed and sampled once and shared by every
entry. Outputs go to `out/metrics.json` and `out/report.html`, each committed atomically.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from revision.diagnose import neighbours, sampled, streamed
from revision.diagnose.pairs import PairSet, pairs_by_ids, pairs_from_file
from revision.diagnose.sources import VectorSource, describe, open_source, read_unit_rows, sample_indices
from revision.errors import UserError

# 10k rows per modality keeps the sampled metrics to seconds on two cores at D = 768, with
# k-NN mixing and separability stable to about ±0.01 (binomial noise at this size).
DEFAULT_SAMPLE = 10_000
MIN_SAMPLE = 10
_IMAGE_SEED_OFFSET = 7919


@dataclass
class EntryFigures:
    """What the report draws for one entry beyond metrics.json: cosine draws and a 2-D PCA."""

    draws: dict[str, np.ndarray]
    pair_cosines: np.ndarray | None
    pca_text: np.ndarray
    pca_image: np.ndarray
    pca_explained: list[float]


@dataclass
class Diagnosis:
    """The result of `run_diagnosis`: metrics (as in metrics.json) and figure data by entry."""

    metrics: dict[str, dict[str, Any]]
    figures: dict[str, EntryFigures] = field(default_factory=dict)


def _sample_size(requested: int | None, sources: Mapping[str, VectorSource]) -> dict[str, int]:
    if requested is not None and requested < MIN_SAMPLE:
        raise UserError(f"--sample {requested}: need at least {MIN_SAMPLE} rows per modality")
    sizes: dict[str, int] = {}
    for flag, src in sources.items():
        if src.rows < MIN_SAMPLE:
            raise UserError(f"{flag}: {src.rows} rows, need at least {MIN_SAMPLE} for the diagnostics")
        if requested is not None and requested > src.rows:
            raise UserError(f"--sample {requested}: {flag} has only {src.rows} rows")
        sizes[flag] = min(requested or DEFAULT_SAMPLE, src.rows)
    return sizes


def _entry_names(aligned: Mapping[str, Any] | Sequence[Any] | None) -> list[tuple[str, str, Any]]:
    """(metrics key, label, spec) per aligned input; a single one is keyed "aligned"."""
    if aligned is None:
        return []
    items = (
        list(aligned.items())
        if isinstance(aligned, Mapping)
        else [(Path(str(a)).stem if isinstance(a, str | Path) else f"aligned{j}", a) for j, a in enumerate(aligned)]
    )
    if len(items) == 1:
        return [("aligned", str(items[0][0]), items[0][1])]
    keys = [str(name) for name, _ in items]
    if len(set(keys)) != len(keys) or "raw" in keys:
        raise UserError(f"--aligned: names must be distinct and not 'raw', got {keys}")
    return [(key, key, spec) for key, (_, spec) in zip(keys, items, strict=True)]


def run_diagnosis(
    text: Any,
    image: Any,
    *,
    aligned: Mapping[str, Any] | Sequence[Any] | None = None,
    sample: int | None = None,
    k: int = 10,
    seed: int = 0,
    pairs: bool = False,
    pairs_file: str | Path | None = None,
    exact_limit: int = neighbours.EXACT_LIMIT,
    gpu: bool = True,
    threads: int | None = None,
    log: Any = None,
) -> Diagnosis:
    """Compute every metric; see `diagnose` for the arguments."""
    if k < 1:
        raise UserError(f"--k {k}: must be at least 1")
    if pairs and pairs_file is not None:
        raise UserError("--pairs and --pairs-file are exclusive")
    say = log or (lambda msg: None)
    entries = [("raw", "raw", "--text", open_source(text, flag="--text"))]
    for key, label, spec in _entry_names(aligned):
        entries.append((key, label, f"--aligned {label}", open_source(spec, flag=f"--aligned {label}")))
    img = open_source(image, flag="--image")
    for _, _, flag, src in entries:
        if src.dim != img.dim:
            raise UserError(f"{flag} has dim {src.dim} but --image has dim {img.dim}: stores of different dim")
    sizes = _sample_size(sample, {"--image": img, **{flag: src for _, _, flag, src in entries}})

    t0 = time.perf_counter()
    say(f"streaming --image ({img.rows:,} rows)")
    img_sums = streamed.stream_sums(img)
    img_stream_s = time.perf_counter() - t0
    img_idx = sample_indices(img.rows, sizes["--image"], seed + _IMAGE_SEED_OFFSET)
    img_vecs = read_unit_rows(img, img_idx)

    result = Diagnosis(metrics={})
    for key, label, flag, src in entries:
        say(f"diagnosing {label} ({src.rows:,} text rows)")
        m, figs = _diagnose_entry(
            src, flag, img, img_sums, img_vecs,
            n_sample=sizes[flag], k=k, seed=seed, pairs=pairs, pairs_file=pairs_file,
            exact_limit=exact_limit, gpu=gpu, threads=threads,
        )  # fmt: skip
        m["label"] = label
        m["inputs"] = {"text": describe(src, flag), "image": describe(img, "--image")}
        m["seconds"]["stream_image"] = img_stream_s
        if key != "raw":
            m["residual_drift"] = m["centroid_gap"]
        result.metrics[key] = m
        result.figures[key] = figs
    return result


def _diagnose_entry(
    src: VectorSource,
    flag: str,
    img: VectorSource,
    img_sums: streamed.RowSums,
    img_vecs: np.ndarray,
    *,
    n_sample: int,
    k: int,
    seed: int,
    pairs: bool,
    pairs_file: str | Path | None,
    exact_limit: int,
    gpu: bool,
    threads: int | None,
) -> tuple[dict[str, Any], EntryFigures]:
    seconds: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        value = fn()
        seconds[name] = time.perf_counter() - t0
        return value

    sums = timed("stream_text", lambda: streamed.stream_sums(src))
    m: dict[str, Any] = streamed.gap_metrics(sums, img_sums)
    idx = timed("sample_text", lambda: sample_indices(src.rows, n_sample, seed))
    vecs = read_unit_rows(src, idx)
    if m["spectrum_text"] is None:  # D too large for a streamed D×D co-moment
        m["spectrum_text"] = sampled.sample_spectrum(vecs, streamed.SPECTRUM_TOP).tolist()
        m["spectrum_image"] = sampled.sample_spectrum(img_vecs, streamed.SPECTRUM_TOP).tolist()
        m["spectrum_from_sample"] = True
    m["sample"] = {"text_rows": len(vecs), "image_rows": len(img_vecs), "seed": seed}

    m.update(timed("knn", lambda: neighbours.knn_metrics(
        vecs, img_vecs, k=k, seed=seed, exact_limit=exact_limit, gpu=gpu, threads=threads)))  # fmt: skip
    m.update(timed("separability", lambda: sampled.linear_separability(vecs, img_vecs, seed=seed)))
    draws = sampled.cosine_draws(vecs, img_vecs, seed=seed)
    pca_t, pca_i, explained = timed("pca", lambda: sampled.pca_2d(vecs[:2000], img_vecs[:2000]))

    pair_cos: np.ndarray | None = None
    pairset: PairSet | None = None
    if pairs:
        pairset = timed("pairs", lambda: pairs_by_ids(src, img, sample=n_sample, seed=seed))
    elif pairs_file is not None:
        pairset = timed("pairs", lambda: pairs_from_file(pairs_file, src, img, sample=n_sample, seed=seed))
    if pairset is not None:
        t_vecs = _rows_in_order(src, pairset.text_rows)
        i_vecs = _rows_in_order(img, pairset.image_rows)
        pair_cos = np.einsum("ij,ij->i", t_vecs, i_vecs)
        m.update(timed("retrieval", lambda: sampled.retrieval(
            pairset.text_rows, pairset.image_rows, t_vecs, i_vecs)))  # fmt: skip
        # The text→image / image→text pair of numbers under the names: t2i is the headline.
        for r in (1, 5, 10):
            m[f"recall_at_{r}"] = m[f"recall_at_{r}_t2i"]
        m["median_rank"] = m["median_rank_t2i"]
        m["pairs"] = {
            "kind": pairset.kind, "sampled": pairset.size,
            "candidates": pairset.candidates, "unmatched": pairset.unmatched,
        }  # fmt: skip
        if pairset.kind == "identity":
            n_p, cos_sum = timed("rmg_paired", lambda: streamed.stream_paired_cosine(src, img))
            m["rmg_paired"] = streamed.paired_gap(n_p, cos_sum, sums, img_sums)
            m["rmg_paired_rows"] = n_p
        else:
            t_sums = streamed.sums_of_blocks([t_vecs], src.dim, with_covariance=False)
            i_sums = streamed.sums_of_blocks([i_vecs], src.dim, with_covariance=False)
            m["rmg_paired"] = streamed.paired_gap(len(pair_cos), float(pair_cos.sum(dtype=np.float64)),
                                                  t_sums, i_sums)  # fmt: skip
            m["rmg_paired_rows"] = len(pair_cos)
    m["seconds"] = seconds
    return m, EntryFigures(draws, pair_cos, pca_t, pca_i, explained)


def _rows_in_order(src: VectorSource, rows: np.ndarray) -> np.ndarray:
    """Unit rows for `rows` (any order, repeats allowed), reading each distinct row once."""
    uniq, inverse = np.unique(rows, return_inverse=True)
    return read_unit_rows(src, uniq)[inverse]


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary name, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def metrics_json(metrics: Mapping[str, Any]) -> str:
    """metrics.json text: non-finite numbers become null."""
    return json.dumps(_json_safe(dict(metrics)), indent=2, allow_nan=False) + "\n"
