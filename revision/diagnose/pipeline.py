"""`diagnose()`: every gap metric for raw and aligned text against the image store, plus the report.

Streamed metrics (centroid gap, traces, RMG, spectrum) read every row once; sampled metrics
(k-NN mixing, top-1 cosines, separability, retrieval, figures) use seeded samples of
`sample` rows per modality. The image store is streamed and sampled once and shared by every
entry. Outputs go to `out/metrics.json` and `out/report.html`, each committed atomically.

Under torchrun (`torchrun --nproc-per-node N -m revision diagnose ...`) every rank streams its own
contiguous run of segments of each store and gets the merged sums, the bits of one process
(streamed.py). Which rows are sampled is a function of (seed, sample size, rows) alone
(`sample_indices`), never of the world size or the chunking; each rank reads the sampled rows inside
its own rows and rank 0 joins them in row order, so rank 0 computes the sampled metrics from the
same arrays as one process would, and only rank 0 has metrics (`Diagnosis.root`) and writes them.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from revision import dist
from revision.diagnose import neighbours, sampled, streamed
from revision.diagnose.pairs import PairSet, pairs_by_ids, pairs_from_file
from revision.diagnose.sources import VectorSource, describe, gather_unit_rows, open_source, sample_indices
from revision.errors import UserError
from revision.modality import require_modality

# 5k rows per modality: the sampled metrics of one store take a few seconds on two cores at
# D = 768 (k-NN is quadratic in the sample), so the demo's raw + five aligned stores at 200k rows
# stay well under a minute of sampled work; k-NN mixing and separability are stable to about
# ±0.01 at this size (binomial noise).
DEFAULT_SAMPLE = 5_000
PCA_POINTS = 2_000
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
    root: bool = True
    """False on ranks other than 0 of a torchrun job: they stream and read their share of the
    samples, rank 0 computes the sampled metrics and writes the outputs; their `metrics` is empty."""


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


def _check_modality(flag: str, src: VectorSource, expected: str, wanted: str | None = None) -> None:
    """Stores record their modality (aligned stores are text); arrays carry none and pass."""
    modality = getattr(src, "modality", None)
    if modality is not None:
        require_modality(flag, getattr(src, "path", ""), modality, expected, wanted)


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
    full_spectrum: bool = False,
    block_rows: int | None = None,
    log: Any = None,
) -> Diagnosis:
    """Compute every metric; see `diagnose` for the arguments (block_rows: rows per streamed block,
    None → each store's default). Stores opened from paths here are closed before it returns or raises."""
    with ExitStack() as owned:
        return _run_diagnosis(
            text, image, aligned=aligned, sample=sample, k=k, seed=seed, pairs=pairs, pairs_file=pairs_file,
            exact_limit=exact_limit, gpu=gpu, threads=threads, full_spectrum=full_spectrum, block_rows=block_rows,
            log=log, owned=owned,
        )  # fmt: skip


def _opened(spec: Any, flag: str, owned: ExitStack) -> VectorSource:
    """open_source, with a store it opens from a path closed when `owned` unwinds (a caller's open
    store or array stays the caller's)."""
    src = open_source(spec, flag=flag)
    if isinstance(spec, str | Path):
        owned.callback(getattr(src, "close", lambda: None))
    return src


def _knn_cap(sizes: Mapping[str, int], text_flags: Sequence[str]) -> int:
    """The most neighbours a sampled text row has: the other sampled text rows and the image rows."""
    return min(sizes[flag] - 1 for flag in text_flags) + sizes["--image"]


def _run_diagnosis(
    text: Any,
    image: Any,
    *,
    aligned: Mapping[str, Any] | Sequence[Any] | None,
    sample: int | None,
    k: int,
    seed: int,
    pairs: bool,
    pairs_file: str | Path | None,
    exact_limit: int,
    gpu: bool,
    threads: int | None,
    full_spectrum: bool,
    block_rows: int | None,
    log: Any,
    owned: ExitStack,
) -> Diagnosis:
    if k < 1:
        raise UserError(f"--k {k}: must be at least 1")
    if pairs and pairs_file is not None:
        raise UserError("--pairs and --pairs-file are exclusive")
    say = log or (lambda msg: None)
    entries = [("raw", "raw", "--text", _opened(text, "--text", owned))]
    for key, label, spec in _entry_names(aligned):
        entries.append((key, label, f"--aligned {label}", _opened(spec, f"--aligned {label}", owned)))
    img = _opened(image, "--image", owned)
    for _, _, flag, src in entries:
        _check_modality(flag, src, "text", "the text store" if flag == "--text" else "an aligned text store")
    _check_modality("--image", img, "image")
    for _, _, flag, src in entries:
        if src.dim != img.dim:
            raise UserError(f"{flag} has dim {src.dim} but --image has dim {img.dim}: stores of different dim")
    sizes = _sample_size(sample, {"--image": img, **{flag: src for _, _, flag, src in entries}})
    cap = _knn_cap(sizes, [flag for _, _, flag, _ in entries])
    if k > cap:
        raise UserError(
            f"--k {k}: a sampled text row has only {cap} neighbours (the other sampled text rows and "
            f"{sizes['--image']:,} image rows); pass --k {cap} or less, or a larger --sample"
        )

    pairsets: list[PairSet | None] = []
    t0 = time.perf_counter()
    for _, label, flag, src in entries:
        if pairs:
            say(f"pairing {label} with --image by id")
            pairsets.append(pairs_by_ids(src, img, sample=sizes[flag], seed=seed))
        elif pairs_file is not None:
            say(f"pairing {label} with --image from {pairs_file}")
            pairsets.append(pairs_from_file(pairs_file, src, img, sample=sizes[flag], seed=seed))
        else:
            pairsets.append(None)
    pair_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    say(f"streaming every row: --image ({img.rows:,} rows) and {len(entries)} text store(s)")
    from tqdm import tqdm

    # Under torchrun a rank streams only its share: a bar of all rows would stop short of its total.
    total_rows = img.rows + sum(src.rows for *_, src in entries)
    quiet_bar = log is None or dist.world().distributed
    with tqdm(total=total_rows, unit="row", unit_scale=True, disable=quiet_bar, leave=False) as bar:
        img_sums, passes = streamed.stream_together(
            img,
            [src for *_, src in entries],
            [p is not None and p.kind == "identity" for p in pairsets],
            covariance=full_spectrum,
            block_rows=block_rows,
            progress=bar.update,
        )
    stream_s = time.perf_counter() - t0

    # Every rank reads the sampled rows inside its own rows; rank 0 gets them all, in row order, and
    # computes the sampled metrics (one entry's sample at a time: memory as in one process).
    t0 = time.perf_counter()
    img_vecs = gather_unit_rows(img, sample_indices(img.rows, sizes["--image"], seed + _IMAGE_SEED_OFFSET), block_rows)
    read_s = time.perf_counter() - t0
    img_spectrum = None if full_spectrum or img_vecs is None else sampled.sample_spectrum(img_vecs)

    result = Diagnosis(metrics={}, root=img_vecs is not None)
    for (key, label, flag, src), tp, pairset in zip(entries, passes, pairsets, strict=True):
        t0 = time.perf_counter()
        vecs = gather_unit_rows(src, sample_indices(src.rows, sizes[flag], seed), block_rows)
        paired = None
        if pairset is not None:
            t_vecs = _rows_in_order(src, pairset.text_rows, block_rows)
            i_vecs = _rows_in_order(img, pairset.image_rows, block_rows)
            paired = None if t_vecs is None or i_vecs is None else (pairset, t_vecs, i_vecs)
        if img_vecs is None or vecs is None:
            continue  # not rank 0
        say(f"sampled metrics of {label}")
        sample_of = _EntrySample(vecs, time.perf_counter() - t0, paired)
        m, figs = _diagnose_entry(
            src, tp, sample_of, img_sums, img_vecs, img_spectrum,
            k=k, seed=seed, exact_limit=exact_limit, gpu=gpu, threads=threads,
        )  # fmt: skip
        m["label"] = label
        m["inputs"] = {"text": describe(src, flag), "image": describe(img, "--image")}
        m["seconds"] = {
            "stream_all_stores": stream_s, "pair_all_stores": pair_s, "read_image_sample": read_s, **m["seconds"],
        }  # fmt: skip
        if key != "raw":
            m["residual_drift"] = m["centroid_gap"]
        result.metrics[key] = m
        result.figures[key] = figs
    return result


@dataclass
class _EntrySample:
    """The sampled unit rows of one text-like store (on rank 0), and its paired rows when paired."""

    vecs: np.ndarray
    read_seconds: float
    pairs: tuple[PairSet, np.ndarray, np.ndarray] | None


def _diagnose_entry(
    src: VectorSource,
    tp: streamed.TextPass,
    sample_of: _EntrySample,
    img_sums: streamed.RowSums,
    img_vecs: np.ndarray,
    img_spectrum: np.ndarray | None,
    *,
    k: int,
    seed: int,
    exact_limit: int,
    gpu: bool,
    threads: int | None,
) -> tuple[dict[str, Any], EntryFigures]:
    seconds: dict[str, float] = {"read_sample": sample_of.read_seconds}

    def timed(name: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        value = fn()
        seconds[name] = time.perf_counter() - t0
        return value

    m: dict[str, Any] = streamed.gap_metrics(tp.sums, img_sums)
    vecs = sample_of.vecs
    if "spectrum_text" in m:
        m["spectrum_source"] = "all rows"
    else:
        # Sample spectra (the default, and whenever D is too large for a streamed D×D matrix).
        m.update(timed("spectrum", lambda: streamed.spectrum_metrics(
            sampled.sample_spectrum(vecs), img_spectrum if img_spectrum is not None
            else sampled.sample_spectrum(img_vecs), tp.sums, img_sums)))  # fmt: skip
        m["spectrum_source"] = f"a sample of {len(vecs):,} text and {len(img_vecs):,} image rows"
    m["sample"] = {"text_rows": len(vecs), "image_rows": len(img_vecs), "seed": seed}

    m.update(timed("knn", lambda: neighbours.knn_metrics(
        vecs, img_vecs, k=k, seed=seed, exact_limit=exact_limit, gpu=gpu, threads=threads)))  # fmt: skip
    m.update(timed("separability", lambda: sampled.linear_separability(vecs, img_vecs, seed=seed)))
    draws = sampled.cosine_draws(vecs, img_vecs, seed=seed)
    # A random subset, not the first rows: the sample is sorted by row, and row order may carry meaning.
    rng = np.random.default_rng(seed)
    pick_t = rng.choice(len(vecs), min(PCA_POINTS, len(vecs)), replace=False)
    pick_i = rng.choice(len(img_vecs), min(PCA_POINTS, len(img_vecs)), replace=False)
    pca_t, pca_i, explained = timed("pca", lambda: sampled.pca_2d(vecs[pick_t], img_vecs[pick_i]))

    pair_cos: np.ndarray | None = None
    if sample_of.pairs is not None:
        pairset, t_vecs, i_vecs = sample_of.pairs
        pair_cos = np.einsum("ij,ij->i", t_vecs, i_vecs)
        m.update(timed("retrieval", lambda: sampled.retrieval(
            pairset.text_rows, pairset.image_rows, t_vecs, i_vecs)))  # fmt: skip
        # The names for the headline direction, text→image.
        for r in (1, 5, 10):
            m[f"recall_at_{r}"] = m[f"recall_at_{r}_t2i"]
        m["median_rank"] = m["median_rank_t2i"]
        m["pairs"] = {
            "kind": pairset.kind, "sampled": pairset.size,
            "candidates": pairset.candidates, "unmatched": pairset.unmatched,
        }  # fmt: skip
        if pairset.kind == "identity":
            m["rmg_paired"] = streamed.paired_gap(tp.pair_rows, tp.pair_cos_sum, tp.sums, img_sums)
            m["rmg_paired_rows"] = tp.pair_rows
        else:
            t_sums = streamed.sums_of_blocks([t_vecs], src.dim, with_covariance=False)
            i_sums = streamed.sums_of_blocks([i_vecs], src.dim, with_covariance=False)
            m["rmg_paired"] = streamed.paired_gap(len(pair_cos), float(pair_cos.sum(dtype=np.float64)),
                                                  t_sums, i_sums)  # fmt: skip
            m["rmg_paired_rows"] = len(pair_cos)
    m["seconds"] = seconds
    return m, EntryFigures(draws, pair_cos, pca_t, pca_i, explained)


def _rows_in_order(src: VectorSource, rows: np.ndarray, block_rows: int | None) -> np.ndarray | None:
    """Unit rows for `rows` (any order, repeats allowed), reading each distinct row once (by the
    ranks that own them under torchrun; None on ranks other than 0)."""
    uniq, inverse = np.unique(rows, return_inverse=True)
    vecs = gather_unit_rows(src, uniq, block_rows)
    return None if vecs is None else vecs[inverse]


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
