"""row_stats: per-chunk moments (count, mean, M2, optional co-moment) of optionally normalised rows.

x: (n, D) fp16/bf16/fp32 → `Moments` in float64. Pass 1 of ReAlign calls this on every chunk of
both modalities and merges the results with `merge_moments`.
"""

from __future__ import annotations

import torch

from revision.kernels import native
from revision.kernels.backend import select_backend, triton_available
from revision.kernels.launch import check_rows, interpreter_or_cuda, kernel_rows
from revision.kernels.moments import Moments, merge_moments
from revision.kernels.nonfinite import first_bad_row
from revision.kernels.normalize import normalize_rows
from revision.kernels.rows_cpu import TileBuffers, map_row_parts, tiles, unit_rows_
from revision.kernels.unit_rule import unit_rows_ref

if triton_available():
    import triton
    import triton.language as tl

    from revision.kernels.triton_rows import (
        load_rows,
        reduction_grid,
        row_blocks,
        store_vector,
    )


def row_stats_ref(x: torch.Tensor, *, normalize: bool = True, second_moment: bool = False) -> Moments:
    """The specification, all in float64: rows → (unit rows if `normalize`) → n, mean, M2, co-moment."""
    n, d = x.shape
    if n == 0:
        return Moments.empty(d, second_moment=second_moment, device=x.device)
    v = unit_rows_ref(x) if normalize else x.to(torch.float64)
    total = v.sum(dim=0)
    mean = total / n
    c = v - mean
    m2 = (c * c).sum(dim=0)
    como = c.T @ c if second_moment else None
    return Moments(n, mean, m2, como, total)


#: The C kernels' sum-of-squares lanes (kernels/csrc/native.c, LANES): value j goes to lane j mod 64.
SUMSQ_LANES = 64

if triton_available():

    @triton.jit
    def _halve(acc, BLOCK_M: tl.constexpr, W: tl.constexpr):
        """(BLOCK_M, 2W) → (BLOCK_M, W): lane k + lane k + W, as the C kernels' combine_lanes pairs them."""
        return tl.sum(tl.reshape(acc, (BLOCK_M, 2, W)), axis=1)

    @triton.jit
    def _lane_sumsq(X_ptr, rows, row_ok, stride_x, dim, BLOCK_M: tl.constexpr, LANES: tl.constexpr):
        """Σ x² of each row (BLOCK_M,) fp32, summed in the C kernels' order: each lane in sequence over the
        row's spans of LANES values, then the lanes combined by halves. A tree sum would round differently,
        and the unit factor, hence every statistic, would differ from the CPU path's in the last bit."""
        lanes = tl.arange(0, LANES)
        acc = tl.zeros((BLOCK_M, LANES), dtype=tl.float32)
        for j0 in range(0, dim, LANES):
            cols = j0 + lanes
            v = tl.load(X_ptr + rows[:, None] * stride_x + cols[None, :],
                        mask=row_ok[:, None] & (cols < dim)[None, :], other=0.0).to(tl.float32)  # fmt: skip
            acc += v * v
        acc = _halve(acc, BLOCK_M, 32)
        acc = _halve(acc, BLOCK_M, 16)
        acc = _halve(acc, BLOCK_M, 8)
        acc = _halve(acc, BLOCK_M, 4)
        acc = _halve(acc, BLOCK_M, 2)
        return tl.reshape(_halve(acc, BLOCK_M, 1), (BLOCK_M,))

    @triton.jit
    def _reference_rows(xa, xb, fast, ya, yb):
        """Rows not `fast` (BLOCK_M,) replaced by the reference's unit rule in float64, as the C kernels'
        unit_rule_row: NaN/±Inf → 0, divide by the max-abs, then by the norm, rows whose norm is below 1e-10
        left as they are; one rounding to fp32. Rows held as two tiles (xa, xb), masked lanes 0."""
        va = tl.where(tl.abs(xa) < float("inf"), xa, 0.0).to(tl.float64)
        vb = tl.where(tl.abs(xb) < float("inf"), xb, 0.0).to(tl.float64)
        m = tl.maximum(tl.max(tl.abs(va), axis=1), tl.max(tl.abs(vb), axis=1))
        safe = tl.where(m > 0.0, m, 1.0)
        za = va / safe[:, None]
        zb = vb / safe[:, None]
        zn = tl.sqrt(tl.sum(za * za, axis=1) + tl.sum(zb * zb, axis=1))
        keep = (zn * safe < 1e-10)[:, None]
        div = tl.where(zn > 0.0, zn, 1.0)[:, None]
        ra = tl.where(keep, va, za / div).to(tl.float32)
        rb = tl.where(keep, vb, zb / div).to(tl.float32)
        return tl.where(fast[:, None], ya, ra), tl.where(fast[:, None], yb, rb)

    @triton.jit
    def _c_unit_rows(X_ptr, rows, row_ok, stride_x, dim, xa, xb, BLOCK_M: tl.constexpr, LANES: tl.constexpr):
        """Unit rows by the C kernels' rule, bit for bit: x · fp32(1 / sqrt(Σ x²)) for norms in [1e-9, 1e18]
        (IEEE sqrt and division, as C's sqrtf and 1.0f / norm), the float64 reference rule for the rest
        (NaN/±Inf, zero, tiny or huge rows), which runs only in blocks that hold such a row."""
        norm = tl.sqrt_rn(_lane_sumsq(X_ptr, rows, row_ok, stride_x, dim, BLOCK_M, LANES))
        norm64 = norm.to(tl.float64)
        fast = (norm64 >= 1e-9) & (norm64 <= 1e18)
        r = tl.div_rn(tl.full((BLOCK_M,), 1.0, tl.float32), tl.where(fast, norm, 1.0))
        ya = xa * r[:, None]
        yb = xb * r[:, None]
        if tl.sum((row_ok & ~fast).to(tl.int32), axis=0) > 0:
            ya, yb = _reference_rows(xa, xb, fast, ya, yb)
        return ya, yb

    @triton.jit
    def _chan_update(total, mean, m2, count, cnt, x, valid):
        """Merge one block's columns (x: (BLOCK_M, W) fp32, valid: its mask) into the float64 state
        (column totals, mean, M2) of `count` rows.

        The block's column sums are float64 (exact for values of like magnitude, so totals and the means
        taken from them do not depend on how rows fall into blocks and programs: the CPU paths' means, bit
        for bit); its M2 is fp32 about the fp32-rounded block mean, corrected to the exact mean in float64;
        Chan's formula merges it in float64.
        """
        bsum = tl.sum(x.to(tl.float64), axis=0)
        cnt64 = cnt.to(tl.float64)
        bmean = bsum / cnt64
        centre = bmean.to(tl.float32)
        dev = tl.where(valid, x - centre[None, :], 0.0)
        off = bmean - centre.to(tl.float64)
        bm2 = tl.sum(dev * dev, axis=0).to(tl.float64) - cnt64 * off * off
        bm2 = tl.where(bm2 > 0.0, bm2, 0.0)
        n = count + cnt64
        delta = bmean - mean
        mean += delta * (cnt64 / n)
        m2 += bm2 + delta * delta * (count * (cnt64 / n))
        return total + bsum, mean, m2

    @triton.jit
    def _row_stats_kernel(
        X_ptr,  # (n_rows, dim) fp16/bf16/fp32, row stride stride_x
        COUNT_ptr,  # (n_programs,) int64: rows seen by each program
        TOTAL_ptr,  # (n_programs, dim) f64: each program's column sums
        M2_ptr,  # (n_programs, dim) f64: each program's Σ (x − mean)²
        n_rows,
        dim,
        stride_x,
        rows_per_program,
        NORMALIZE: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_A: tl.constexpr,
        BLOCK_B: tl.constexpr,
        LANES: tl.constexpr,
    ):
        pid = tl.program_id(0)
        ca = tl.arange(0, BLOCK_A)
        cb = BLOCK_A + tl.arange(0, BLOCK_B)
        first = pid.to(tl.int64) * rows_per_program
        last = tl.minimum(first + rows_per_program, n_rows)
        count = tl.zeros((1,), dtype=tl.float64)
        total_a = tl.zeros((BLOCK_A,), dtype=tl.float64)
        mean_a = tl.zeros((BLOCK_A,), dtype=tl.float64)
        m2_a = tl.zeros((BLOCK_A,), dtype=tl.float64)
        total_b = tl.zeros((BLOCK_B,), dtype=tl.float64)
        mean_b = tl.zeros((BLOCK_B,), dtype=tl.float64)
        m2_b = tl.zeros((BLOCK_B,), dtype=tl.float64)
        for start in range(first, last, BLOCK_M):
            rows = start + tl.arange(0, BLOCK_M).to(tl.int64)
            row_ok = rows < last
            xa, xb = load_rows(X_ptr, rows, row_ok, stride_x, dim, BLOCK_A, BLOCK_B)
            if NORMALIZE:
                xa, xb = _c_unit_rows(X_ptr, rows, row_ok, stride_x, dim, xa, xb, BLOCK_M, LANES)
            cnt = tl.sum(row_ok.to(tl.float32), axis=0)
            valid_a = row_ok[:, None] & (ca < dim)[None, :]
            valid_b = row_ok[:, None] & (cb < dim)[None, :]
            total_a, mean_a, m2_a = _chan_update(total_a, mean_a, m2_a, count, cnt, xa, valid_a)
            total_b, mean_b, m2_b = _chan_update(total_b, mean_b, m2_b, count, cnt, xb, valid_b)
            count += cnt.to(tl.float64)
        tl.store(COUNT_ptr + pid + tl.arange(0, 1), count.to(tl.int64))
        base = pid.to(tl.int64) * dim
        store_vector(TOTAL_ptr + base, dim, total_a, total_b, BLOCK_A, BLOCK_B)
        store_vector(M2_ptr + base, dim, m2_a, m2_b, BLOCK_A, BLOCK_B)


def combine_partials(counts: torch.Tensor, totals: torch.Tensor, m2s: torch.Tensor) -> Moments:
    """Exact combination of P partial moments: counts (P,), column totals (P, D), M2 (P, D), in float64, in
    a fixed order. The mean is the grand total over the count, as the CPU paths take it."""
    counts64 = counts.to(torch.float64)
    n = int(counts.sum().item())
    if n == 0:
        return Moments.empty(totals.shape[1], device=totals.device)
    total = totals.sum(dim=0)
    mean = total / n
    means = totals / counts64.clamp_min(1.0)[:, None]
    dev = means - mean
    m2 = m2s.sum(dim=0) + (counts64[:, None] * dev * dev).sum(dim=0)
    return Moments(n, mean, m2, None, total)


def row_stats_triton(x: torch.Tensor, *, normalize: bool = True, second_moment: bool = False) -> Moments:
    """The Triton kernel; the co-moment (second_moment) is a float64 GEMM of the centred unit rows."""
    check_rows("row_stats_triton", x=x)
    interpreter_or_cuda("row_stats_triton", x)
    n, d = x.shape
    if n == 0:
        return Moments.empty(d, second_moment=second_moment, device=x.device)
    if second_moment:
        return _with_comoment(x, normalize)
    block_m, block_a, block_b, warps = row_blocks(d, elems=4096)
    programs, per_program = reduction_grid(n, block_m, x.device)
    counts = torch.empty(programs, dtype=torch.int64, device=x.device)
    totals = torch.empty(programs, d, dtype=torch.float64, device=x.device)
    m2s = torch.empty(programs, d, dtype=torch.float64, device=x.device)
    # No fused multiply-adds: the C kernels build with -ffp-contract=off, and Σ x² must round as theirs.
    _row_stats_kernel[(programs,)](
        x, counts, totals, m2s, n, d, x.stride(0), per_program,
        NORMALIZE=normalize, BLOCK_M=block_m, BLOCK_A=block_a, BLOCK_B=block_b, LANES=SUMSQ_LANES,
        num_warps=warps, enable_fp_fusion=False,
    )  # fmt: skip
    return combine_partials(counts, totals, m2s)


def _block_comoment(v: torch.Tensor) -> Moments:
    """Two-pass float64 moments of one block of rows, with the co-moment as one float64 GEMM."""
    v64 = v.to(torch.float64)
    total = v64.sum(dim=0)
    mean = total / v.shape[0]
    v64 -= mean
    como = v64.T @ v64
    m2 = torch.diagonal(como).clone()
    return Moments(v.shape[0], mean, m2, como, total)


# Rows per float64 block of the co-moment pass: bounds its temporaries (8 bytes × rows × D).
COMOMENT_BLOCK_ROWS = 16384


def _with_comoment(x: torch.Tensor, normalize: bool) -> Moments:
    """Moments with the D×D co-moment (realign-ot), block by block, merged with Chan's formula.

    The pass is compute-bound (D² multiply-adds per row) and runs in float64 GEMMs; memory is
    bounded by the block, never by the chunk. On CPU each thread takes whole tiles.
    """
    n, d = x.shape
    total = Moments.empty(d, second_moment=True, device=x.device)
    if x.device.type == "cpu":

        def work(first: int, last: int) -> Moments:
            part = Moments.empty(d, second_moment=True)
            for s, e in tiles(last, d, first=first):
                piece = x[s:e]
                v = unit_rows_(piece.to(torch.float32, copy=True)) if normalize else piece
                part = merge_moments(part, _block_comoment(v))
            return part

        for part in map_row_parts(n, d, work):
            total = merge_moments(total, part)
        return total
    for s in range(0, n, COMOMENT_BLOCK_ROWS):
        piece = x[s : s + COMOMENT_BLOCK_ROWS]
        total = merge_moments(total, _block_comoment(normalize_rows(piece) if normalize else piece))
    return total


def row_stats_torch(x: torch.Tensor, *, normalize: bool = True, second_moment: bool = False) -> Moments:
    """The fast torch path: per cache-sized tile, fp32 unit rows → float64 tile moments → Chan merge."""
    check_rows("row_stats", x=x, require_contiguous=False)
    n, d = x.shape
    if n == 0:
        return Moments.empty(d, second_moment=second_moment, device=x.device)
    if second_moment:
        return _with_comoment(x, normalize)
    if x.device.type != "cpu":
        return row_stats_ref(x, normalize=normalize)

    def work(first: int, last: int) -> Moments:
        buffers = TileBuffers(d, f64=True)
        assert buffers.f64 is not None
        count = 0
        mean = torch.zeros(d, dtype=torch.float64)
        m2 = torch.zeros(d, dtype=torch.float64)
        sums = torch.zeros(d, dtype=torch.float64)
        tile_sum = torch.empty(d, dtype=torch.float64)
        tile_m2 = torch.empty(d, dtype=torch.float64)
        for s, e in tiles(last, d, first=first):
            t = e - s
            tile = buffers.load(x[s:e])
            if normalize:
                unit_rows_(tile)
            t64 = buffers.f64[:t]
            t64.copy_(tile)
            torch.sum(t64, dim=0, out=tile_sum)
            sums += tile_sum
            tile_mean = tile_sum / t
            t64 -= tile_mean
            t64 *= t64
            torch.sum(t64, dim=0, out=tile_m2)
            total = count + t
            delta = tile_mean - mean
            mean.add_(delta, alpha=t / total)
            m2.add_(tile_m2).add_(delta * delta, alpha=count * (t / total))
            count = total
        return Moments(count, sums / count, m2, None, sums)

    result = Moments.empty(d)
    for part in map_row_parts(n, d, work):
        result = merge_moments(result, part)
    return result


def row_stats(x: torch.Tensor, *, normalize: bool = True, second_moment: bool = False, screen: bool = False) -> Moments:
    """x: (n, D) fp16/bf16/fp32 → Moments(n, mean f64 (D,), m2 f64 (D,), comoment f64 (D, D) | None).

    Rows are first normalised by the reference's rule when `normalize`; per-row values never
    depend on the chunking and all sums are float64.
    screen: raise `BadRowError` for the first row holding NaN/±Inf or only zeros (strict mode).
    The native kernel checks rows as it normalises them; other paths screen in a sweep first.
    """
    backend = select_backend(x)
    if backend == "native" and not second_moment and native.supports(x):
        return native.row_stats_native(x, normalize=normalize, screen=screen)
    if screen and (bad := first_bad_row(x)) is not None:
        raise bad
    if backend == "triton":
        return row_stats_triton(kernel_rows(x), normalize=normalize, second_moment=second_moment)
    if backend == "ref":
        return row_stats_ref(x, normalize=normalize, second_moment=second_moment)
    return row_stats_torch(x, normalize=normalize, second_moment=second_moment)


__all__ = ["row_stats", "row_stats_ref", "row_stats_torch", "row_stats_triton", "combine_partials"]
