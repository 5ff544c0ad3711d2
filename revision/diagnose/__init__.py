"""Nearest-neighbour and statistical diagnostics of the modality gap, and the HTML report.

One call does it all::

    from revision.diagnose import diagnose
    metrics = diagnose("text.zarr", "image.zarr", aligned={"realign": "aligned.zarr"},
                       out="report_dir", sample=5_000, k=10)

`metrics` is what `report_dir/metrics.json` holds: {"raw": {...}, "aligned": {...}} (one
entry per aligned store, keyed "aligned" when there is one, else by name). Each entry compares
one text-like store with the image store; rows are L2-normalised (float32) first.

Over all rows, exact (one streaming pass, float64 sums):
  centroid_gap ‖μ_i − μ_t‖, centroid_cosine, trace_text / trace_image (mean ‖x − μ‖²),
  trace_ratio (text / image), mean_cross_cosine, mean_intra_cosine_{text,image} (pairs a ≠ b),
  rmg: relative modality gap with d = (1 − cos)/2: mean cross d / (mean of the two mean intra
  d + mean cross d); 0.5 = no gap. residual_drift (aligned entries) = ‖μ_aligned − μ_i‖.
  rmg_paired (with pairs): Schrodi et al.'s paired form; over all rows when row r of text pairs
  with row r of image (ids equal in order), else over the sampled pairs (`rmg_paired_rows`).
On seeded samples (`sample`: rows per modality and seed):
  linear_separability (held-out accuracy, 80/20, balanced; 0.5 = no gap),
  knn_mixing (fraction of a text row's k nearest in the pooled sample that are images) and
  knn_mixing_ideal = n_img / (n_txt + n_img − 1), neighbour_image_counts,
  top1_cross_cosine / top1_intra_cosine (mean best image / other-text cosine per text row),
  recall_at_{1,5,10}_{t2i,i2t}, median_rank_{t2i,i2t} among the sampled pairs (recall_at_k and
  median_rank repeat t2i), spectrum_{text,image} (top covariance eigenvalues; `spectrum_source`),
  anisotropy_{text,image} (top1_fraction, effective_rank, mean_cosine).
Also: faiss (index, threads and the timings that chose them, nprobe and recall_vs_exact for IVF;
in IVF mode a modality with fewer than 39 sampled rows is searched exactly, and `index` then names
both, e.g. "flat-ip (text) / ivf64-flat-ip (image)"), pairs, inputs, seconds (per stage).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from revision.diagnose.pipeline import DEFAULT_SAMPLE, Diagnosis, metrics_json, run_diagnosis, write_atomic
from revision.diagnose.sources import ArraySource, VectorSource
from revision.errors import UserError

__all__ = ["DEFAULT_SAMPLE", "ArraySource", "Diagnosis", "VectorSource", "diagnose", "write_outputs"]


def write_outputs(result: Diagnosis, out: str | Path) -> tuple[Path, Path]:
    """Write metrics.json and report.html into `out` (created if needed); returns both paths.

    Only rank 0 of a torchrun job holds the metrics; calling this elsewhere is a ValueError.
    """
    from revision.diagnose.report import render_html

    if not result.root:
        raise ValueError("write_outputs: this Diagnosis is from a rank other than 0 and holds no metrics")

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    metrics_path, report_path = out / "metrics.json", out / "report.html"
    write_atomic(metrics_path, metrics_json(result.metrics))
    write_atomic(report_path, render_html(result.metrics, result.figures))
    return metrics_path, report_path


def diagnose(
    text: Any,
    image: Any,
    *,
    aligned: Mapping[str, Any] | Sequence[Any] | None = None,
    out: str | Path | None = None,
    sample: int | None = None,
    k: int = 10,
    seed: int = 0,
    pairs: bool = False,
    pairs_file: str | Path | None = None,
    gpu: bool = True,
    threads: int | None = None,
    full_spectrum: bool = False,
    log: Any = None,
) -> dict[str, dict[str, Any]]:
    """Gap metrics of raw (and aligned) text against images; writes the report when `out` is given.

    text, image, aligned values: store paths, open FeatureStores or (n, dim) NumPy arrays.
    sample: rows per modality for the sampled metrics (None → min(5,000, rows); more rows
        than a store holds is an error). k: neighbours for k-NN mixing. seed: all sampling.
    Stores opened from paths are closed before this returns or raises.
    k: at most the sampled text rows − 1 + the sampled image rows (more is a UserError naming the cap).
    pairs: pair rows by equal ids; pairs_file: CSV/TSV/Parquet with text_id, image_id.
    gpu: use a FAISS GPU index when faiss has one; threads: FAISS threads (None → the fastest of a
        probe, up to the CPUs in this process's affinity mask); FAISS's own setting is restored.
    full_spectrum: accumulate the D×D covariance over all rows in the stream (slower: O(N·D²));
        by default the spectrum comes from the samples.
    log: a callable taking progress messages (e.g. print), or None.
    Under torchrun every rank calls this; the metrics (and the files) come back on rank 0 only,
    the other ranks get {}.
    Raises revision.errors.UserError on bad input.
    """
    result = run_diagnosis(
        text, image, aligned=aligned, sample=sample, k=k, seed=seed, pairs=pairs,
        pairs_file=pairs_file, gpu=gpu, threads=threads, full_spectrum=full_spectrum, log=log,
    )  # fmt: skip
    if out is not None and result.root:
        write_outputs(result, out)
    return result.metrics
