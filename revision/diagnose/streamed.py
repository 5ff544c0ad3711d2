"""Exact gap statistics from one streaming pass over every row: centroids, traces, RMG, spectrum.

Everything here comes from per-modality sums over the unit rows, accumulated in float64:
the count, the vector sum, the sum of squared norms and, when asked for (D ≤
`MAX_COVARIANCE_DIM`), the centred co-moment matrix, merged chunk by chunk with Chan's formula.
Memory is one chunk plus at most a D×D matrix, whatever the number of rows.

The blocks of a store are cut into segments (revision/dist.py, as fit's passes are): blocks are
merged in order inside a segment, segment results in order after. Under torchrun each rank reads
its own contiguous run of segments and the segment results are gathered on every rank, so the sums
are the same bits for any number of processes (with equal threads per process: the covariance's
float32 product runs on BLAS threads). The gathered results of a pass stay under
dist.SEGMENT_BUDGET_BYTES (fewer segments when each holds a D×D matrix).

The relative modality gap (Schrodi et al., 2024) with d(u, v) = (1 − cos(u, v)) / 2 is exact
from those sums: over all cross pairs, mean cos = (Σt · Σi) / (N_t N_i); over pairs i ≠ j of
one modality, mean cos = (‖Σx‖² − Σ‖x‖²) / (N (N − 1)).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from revision import dist
from revision.diagnose.sources import VectorSource, rank_segments, unit_rows

P = TypeVar("P")

# A float64 D×D co-moment is 32 MiB at D = 2048; beyond that the spectrum comes from the sample.
MAX_COVARIANCE_DIM = 2048
SPECTRUM_TOP = 64
#: Seconds to sleep after each streamed segment: lets the tests kill a rank in the middle of a pass.
_PAUSE_ENV = "REVISION_DIAGNOSE_PAUSE_AFTER_SEGMENT"


@dataclass
class RowSums:
    """Sums over unit rows of one modality (float64). `comoment` is Σ (x − mean)(x − mean)ᵀ."""

    dim: int
    n: int = 0
    total: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sq_norms: float = 0.0
    comoment: np.ndarray | None = None
    with_covariance: bool = True

    def __post_init__(self) -> None:
        if self.total.size == 0:
            self.total = np.zeros(self.dim, dtype=np.float64)
        if self.with_covariance and self.comoment is None:
            self.comoment = np.zeros((self.dim, self.dim), dtype=np.float64)

    @property
    def mean(self) -> np.ndarray:
        return self.total / max(self.n, 1)

    def add(self, x: np.ndarray) -> None:
        """Fold in a block of unit float32 rows."""
        m = len(x)
        if m == 0:
            return
        block_total = x.sum(axis=0, dtype=np.float64)
        self.sq_norms += float(np.einsum("ij,ij->", x, x, dtype=np.float64))
        if self.comoment is not None:
            block_mean = block_total / m
            # Centre in float32 around the block's own mean, multiply in float32 (4x faster than
            # float64 on CPUs), and merge in float64: the error stays at the block's scale.
            centred = x - block_mean.astype(np.float32)
            block_m2 = (centred.T @ centred).astype(np.float64)
            delta = block_mean - self.mean
            n = self.n
            self.comoment += block_m2 + np.outer(delta, delta) * (n * m / (n + m))
        self.total += block_total
        self.n += m

    def merge(self, other: RowSums) -> RowSums:
        """The sums of both sets of rows (Chan's merge for the co-moment)."""
        out = RowSums(self.dim, with_covariance=self.comoment is not None and other.comoment is not None)
        out.n = self.n + other.n
        out.total = self.total + other.total
        out.sq_norms = self.sq_norms + other.sq_norms
        if out.comoment is not None and self.comoment is not None and other.comoment is not None:
            delta = other.mean - self.mean
            w = self.n * other.n / max(out.n, 1)
            out.comoment = self.comoment + other.comoment + np.outer(delta, delta) * w
        return out

    @property
    def trace(self) -> float:
        """Total variance (population form): mean ‖x − μ‖²."""
        if self.n == 0:
            return float("nan")
        return self.sq_norms / self.n - float(self.mean @ self.mean)

    def mean_intra_cosine(self) -> float:
        """Mean cos(x_a, x_b) over ordered pairs a ≠ b."""
        if self.n < 2:
            return float("nan")
        return (float(self.total @ self.total) - self.sq_norms) / (self.n * (self.n - 1))

    def eigenvalues(self) -> np.ndarray | None:
        """Covariance eigenvalues, largest first (None when the co-moment was not kept)."""
        if self.comoment is None or self.n == 0:
            return None
        vals = np.linalg.eigvalsh(self.comoment / self.n)[::-1]
        return np.clip(vals, 0.0, None)


def sums_of_blocks(blocks: Iterable[np.ndarray], dim: int, *, with_covariance: bool = True) -> RowSums:
    """RowSums of unit rows given block by block."""
    acc = RowSums(dim, with_covariance=with_covariance)
    for block in blocks:
        acc.add(block)
    return acc


def _rowsums_bytes(dim: int, with_covariance: bool) -> int:
    return 8 * (dim + 2 + (dim * dim if with_covariance else 0))


def _fold_segments(
    src: VectorSource,
    *,
    block_rows: int | None,
    partial_bytes: int,
    empty: Callable[[], P],
    add: Callable[[P, int, np.ndarray], None],
    merge: Callable[[P, P], P],
) -> P:
    """Fold `add` over this rank's blocks of `src`, segment by segment, and every rank's segment
    results in segment order (revision/dist.py): the same float64 operations for any number of
    processes, so the same bits. This process reads only its own run of segments."""
    segs = rank_segments(src, block_rows, partial_bytes)
    lo, hi = dist.span(segs)
    pause = float(os.environ.get(_PAUSE_ENV) or 0)

    def partials() -> Iterator[P]:
        ends = iter([b for _, b in segs])
        end = next(ends, hi)
        part = empty()
        for row0, block in src.iter_chunks(lo, hi, block_rows=block_rows):
            if row0 < end < row0 + len(block):  # block ranges are a function of the store alone
                raise RuntimeError(f"rows [{row0}, {row0 + len(block)}) cross the segment end {end}")
            add(part, row0, block)
            if row0 + len(block) >= end:
                yield part
                part, end = empty(), next(ends, hi)
                if pause:
                    time.sleep(pause)

    return dist.fold_in_order(partials(), empty(), merge)


def stream_sums(
    src: VectorSource,
    *,
    covariance: bool = False,
    block_rows: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> RowSums:
    """One pass over every row of `src`: the RowSums of its unit rows. `progress(rows)` per block.

    Under torchrun each rank reads its own run of segments and every rank gets the merged sums,
    the same bits as one process (see `_fold_segments`).
    """
    with_cov = covariance and src.dim <= MAX_COVARIANCE_DIM

    def add(acc: RowSums, _row0: int, block: np.ndarray) -> None:
        acc.add(unit_rows(block, src.dtype))
        if progress is not None:
            progress(len(block))

    return _fold_segments(
        src,
        block_rows=block_rows,
        partial_bytes=_rowsums_bytes(src.dim, with_cov),
        empty=lambda: RowSums(src.dim, with_covariance=with_cov),
        add=add,
        merge=RowSums.merge,
    )


@dataclass
class TextPass:
    """What one pass gives for a text-like store: its sums, and with identity pairs Σ cos(t_r, i_r)."""

    sums: RowSums
    pair_rows: int = 0
    pair_cos_sum: float = 0.0

    def merge(self, other: TextPass) -> TextPass:
        return TextPass(
            self.sums.merge(other.sums), self.pair_rows + other.pair_rows, self.pair_cos_sum + other.pair_cos_sum
        )


@dataclass
class _Stepped:
    """The image sums and those of the text stores read in step with it, over some rows."""

    image: RowSums
    texts: list[TextPass]

    def merge(self, other: _Stepped) -> _Stepped:
        return _Stepped(
            self.image.merge(other.image), [a.merge(b) for a, b in zip(self.texts, other.texts, strict=True)]
        )


def stream_together(
    image: VectorSource,
    texts: Sequence[VectorSource],
    paired: Sequence[bool],
    *,
    covariance: bool = False,
    block_rows: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> tuple[RowSums, list[TextPass]]:
    """Sums of the image store and of every text store, reading each store once.

    Text stores paired row by row with the images (`paired[j]`, equal row counts) are read in
    step with the image blocks, which also gives the exact Σ cos(text_r, image_r) over all rows;
    the others are streamed on their own. Under torchrun every pass is split by segments and
    merged in segment order, so every rank gets the one-process bits.
    """
    with_cov = covariance and image.dim <= MAX_COVARIANCE_DIM
    stepped = [j for j, p in enumerate(paired) if p]
    for j in stepped:
        if texts[j].rows != image.rows:
            raise ValueError(f"row-by-row pairing needs equal row counts, got {texts[j].rows} and {image.rows}")

    def empty() -> _Stepped:
        return _Stepped(RowSums(image.dim, with_covariance=with_cov), [
            TextPass(RowSums(texts[j].dim, with_covariance=with_cov)) for j in stepped
        ])  # fmt: skip

    def add(acc: _Stepped, lo: int, block: np.ndarray) -> None:
        i_unit = unit_rows(block, image.dtype)
        acc.image.add(i_unit)
        for j, tp in zip(stepped, acc.texts, strict=True):
            t_unit = unit_rows(texts[j].read(lo, lo + len(block)), texts[j].dtype)
            tp.sums.add(t_unit)
            tp.pair_rows += len(t_unit)
            tp.pair_cos_sum += float(np.einsum("ij,ij->", t_unit, i_unit, dtype=np.float64))
        if progress is not None:
            progress(len(block) * (1 + len(stepped)))

    together = _fold_segments(
        image,
        block_rows=block_rows,
        partial_bytes=(1 + len(stepped)) * _rowsums_bytes(image.dim, with_cov),
        empty=empty,
        add=add,
        merge=_Stepped.merge,
    )
    out: list[TextPass] = []
    for j, src in enumerate(texts):
        if paired[j]:
            out.append(together.texts[stepped.index(j)])
        else:
            out.append(TextPass(stream_sums(src, covariance=with_cov, block_rows=block_rows, progress=progress)))
    return together.image, out


def dissimilarity(cos: float) -> float:
    """d(u, v) = (1 − cos) / 2, in [0, 1]."""
    return (1.0 - cos) / 2.0


def relative_gap(cross_cos: float, intra_cos_a: float, intra_cos_b: float) -> float:
    """RMG = d_cross / (mean(d_intra_a, d_intra_b) + d_cross); 0.5 means no gap."""
    cross = dissimilarity(cross_cos)
    intra = (dissimilarity(intra_cos_a) + dissimilarity(intra_cos_b)) / 2.0
    denom = intra + cross
    return cross / denom if denom > 0 else float("nan")


def anisotropy(eigs: np.ndarray | None, mean_cos: float) -> dict[str, float | None]:
    """How far a modality is from isotropic: top-eigenvalue share, effective rank, mean cosine."""
    out: dict[str, float | None] = {"mean_cosine": mean_cos, "top1_fraction": None, "effective_rank": None}
    if eigs is not None and eigs.sum() > 0:
        p = eigs / eigs.sum()
        nz = p[p > 0]
        out["top1_fraction"] = float(p[0])  # of the eigenvalues given (all of them: the trace)
        out["effective_rank"] = float(math.exp(-(nz * np.log(nz)).sum()))
    return out


def gap_metrics(text: RowSums, image: RowSums) -> dict[str, Any]:
    """The streamed metrics for one text-like set against the image set."""
    mu_t, mu_i = text.mean, image.mean
    gap = float(np.linalg.norm(mu_i - mu_t))
    nt, ni = float(np.linalg.norm(mu_t)), float(np.linalg.norm(mu_i))
    cross_cos = float(mu_t @ mu_i)
    intra_t, intra_i = text.mean_intra_cosine(), image.mean_intra_cosine()
    out = {
        "rows_text": text.n,
        "rows_image": image.n,
        "centroid_gap": gap,
        "centroid_cosine": cross_cos / (nt * ni) if nt > 0 and ni > 0 else float("nan"),
        "trace_text": text.trace,
        "trace_image": image.trace,
        "trace_ratio": text.trace / image.trace if image.trace > 0 else float("nan"),
        "mean_cross_cosine": cross_cos,
        "mean_intra_cosine_text": intra_t,
        "mean_intra_cosine_image": intra_i,
        "rmg": relative_gap(cross_cos, intra_t, intra_i),
    }
    eig_t, eig_i = text.eigenvalues(), image.eigenvalues()
    if eig_t is not None and eig_i is not None:
        out.update(spectrum_metrics(eig_t, eig_i, text, image))
    return out


def spectrum_metrics(eig_t: np.ndarray, eig_i: np.ndarray, text: RowSums, image: RowSums) -> dict[str, Any]:
    """Top covariance eigenvalues and anisotropy figures of both modalities.

    eig_t, eig_i: all available covariance eigenvalues, largest first (streamed or from a sample).
    """
    return {
        "spectrum_text": eig_t[:SPECTRUM_TOP].tolist(),
        "spectrum_image": eig_i[:SPECTRUM_TOP].tolist(),
        "anisotropy_text": anisotropy(eig_t, text.mean_intra_cosine()),
        "anisotropy_image": anisotropy(eig_i, image.mean_intra_cosine()),
    }


def paired_gap(n_pairs: int, sum_pair_cos: float, text: RowSums, image: RowSums) -> float:
    """Schrodi et al.'s paired RMG: mean matched-pair d over (mean intra d + that term)."""
    if n_pairs == 0:
        return float("nan")
    return relative_gap(sum_pair_cos / n_pairs, text.mean_intra_cosine(), image.mean_intra_cosine())
