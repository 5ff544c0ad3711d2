"""fit / apply / align over feature stores: the orchestration of the three passes, resumable.

fit   = pass 1 (text and image once → μ_t, μ_i, traces, s) + pass 2 (text → μ̂); saves the stats.
apply = pass 3 (text → aligned rows) with frozen stats, committed chunk by chunk: a killed job resumes
        from its last commit to a byte-identical result.
align = fit + apply, the stats saved in the aligned store's attrs["alignment"] and beside it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeAlias

import torch

from revision import dist
from revision.align.config import AlignConfig
from revision.align.methods import Method, get_method, torch_dtype
from revision.align.output import (
    COMMIT_SECONDS,
    CommitClock,
    check_before_work,
    default_commit_rows,
    finished_run,
    open_output,
    output_part,
    progress_record,
    run_identity,
)
from revision.align.passes import PassTiming, iter_blocks, moments_pass, pass_segments, screen_block
from revision.align.stats import AlignStats, check_degenerate, load_stats, save_stats
from revision.align.writebehind import WriteBehind
from revision.errors import UserError
from revision.store import FeatureStore, Readable, StoreSet, open_readable
from revision.store.atomic import WriteError
from revision.store.objio import RemotePath, location

StoreLike: TypeAlias = "FeatureStore | StoreSet | str | os.PathLike[str]"

#: Test hook for the kill-and-resume test: sleep this long after each commit of pass 3.
_PAUSE_ENV = "REVISION_ALIGN_PAUSE_AFTER_COMMIT"


@dataclass
class AlignResult:
    """What an align/apply run produced."""

    out: Path | None
    stats: AlignStats
    stats_path: Path | None
    rows: int
    timings: list[PassTiming] = field(default_factory=list)
    resumed_from: int = 0
    complete: bool = False  # the output was already complete: nothing was done

    @property
    def seconds(self) -> float:
        return sum(t.seconds for t in self.timings)

    def summary(self) -> str:
        parts = [f"{t.name}: {t.rows:,} rows in {t.seconds:.2f} s ({t.rows_per_s:,.0f} rows/s)" for t in self.timings]
        return "; ".join(parts)


def _open(store: StoreLike, flag: str, owned: ExitStack) -> Readable:
    """The store (or set) itself, or the store or set at that path opened here and closed when `owned`
    unwinds.

    A caller's open store stays open; a store opened by a pass is closed by it (on errors too), so
    its shard files are not left to the garbage collector while a traceback still holds the frame.
    The ids of a set are checked once per job: by rank 0 (torchrun stops the others if it fails).
    """
    if isinstance(store, FeatureStore | StoreSet):
        return store
    return owned.enter_context(open_readable(store, flag=flag, check_ids=dist.world().rank == 0))


def _check_inputs(text: Readable, image: Readable | None, method: Method) -> None:
    if text.rows == 0:
        raise UserError(f"--text {text.path}: empty store (0 rows)")
    if text.modality != "text":
        raise UserError(f"--text {text.path}: a {text.modality} store; pass the text store with --text")
    if image is None:
        if method.needs_image:
            raise UserError(f"--method {method.name} needs the image store (--image)")
        return
    if image.rows == 0:
        raise UserError(f"--image {image.path}: empty store (0 rows)")
    if image.modality != "image":
        raise UserError(f"--image {image.path}: a {image.modality} store; pass the image store with --image")
    if image.dim != text.dim:
        raise UserError(f"--text {text.path} has dim {text.dim} but --image {image.path} has dim {image.dim}")


def _store_ref(st: Readable) -> dict[str, Any]:
    return {"path": str(st.path), "rows": st.rows, "dim": st.dim, "dtype": st.dtype, "chunk_rows": st.chunk_rows}


def centroid_pass(text: StoreLike, stats: AlignStats, config: AlignConfig) -> tuple[AlignStats, PassTiming]:
    """Pass 2 over `text` with fixed pass-1 statistics: the column sums of the projected rows.

    On a shard of a larger text set, run it with the merged pass-1 statistics of all shards, then
    `revision.align.shards.merge_centroids` the results.
    """
    with ExitStack() as owned:
        return _centroid_pass(_open(text, "--text", owned), stats, config)


Sums: TypeAlias = "tuple[int, torch.Tensor]"


def _add_sums(a: Sums, b: Sums) -> Sums:
    return a[0] + b[0], a[1] + b[1]


def _centroid_pass(t: Readable, stats: AlignStats, config: AlignConfig) -> tuple[AlignStats, PassTiming]:
    method = get_method(stats.method)
    if stats.dim != t.dim:
        raise UserError(f"--text {t.path} has dim {t.dim}, the statistics have dim {stats.dim}")
    t0 = time.perf_counter()
    device = config.torch_device()
    # Sums per segment, then over segments, in order: the same bits for any number of ranks (dist.py).
    segs = pass_segments(t, config.block_rows, 8 * t.dim)
    lo, hi = dist.span(segs)

    def partials() -> Iterator[Sums]:
        ends = iter([b for _, b in segs])
        end = next(ends, hi)
        n_seg, sum_seg = 0, torch.zeros(t.dim, dtype=torch.float64)
        for row0, block in iter_blocks(
            t, start=lo, stop=hi, block_rows=config.block_rows, desc="pass 2 centroid", progress=config.progress,
            device=device,
        ):  # fmt: skip
            n, s = method.centroid_sums(block, stats)
            n_seg += n
            sum_seg += s.to("cpu")
            if row0 + block.shape[0] >= end:
                yield n_seg, sum_seg
                n_seg, sum_seg = 0, torch.zeros(t.dim, dtype=torch.float64)
                end = next(ends, hi)

    n_hat, sum_h = dist.fold_in_order(partials(), (0, torch.zeros(t.dim, dtype=torch.float64)), _add_sums)
    if not bool(torch.isfinite(sum_h).all()):
        raise UserError(f"--text {t.path}: the projected rows hold non-finite values (pass 2)")
    nbytes = (hi - lo) * t.dim * t.np_dtype.itemsize
    return stats.with_centroid(n_hat, sum_h), PassTiming("pass 2 centroid", hi - lo, nbytes, time.perf_counter() - t0)


def fit_stores(
    text: StoreLike,
    image: StoreLike | None,
    config: AlignConfig,
    *,
    stats_path: str | os.PathLike[str] | None = None,
    centroid: bool = True,
) -> tuple[AlignStats, list[PassTiming]]:
    """Passes 1–2: the method's statistics (saved to `stats_path` when given) and the pass timings.

    `centroid=False` stops after pass 1 (for shards: merge with `shards.merge_pass1`, then run
    `centroid_pass` per shard against the merged statistics).
    """
    method = get_method(config.method)
    with ExitStack() as owned:
        t = _open(text, "--text", owned)
        i = _open(image, "--image", owned) if image is not None else None
        _check_inputs(t, i, method)
        common: dict[str, Any] = {
            "strict": config.strict,
            "block_rows": config.block_rows,
            "progress": config.progress,
            "device": config.torch_device(),
        }
        tm, t_time = moments_pass(t, second_moment=method.covariance, desc="pass 1 text", **common)
        timings = [t_time]
        im = None
        if i is not None:
            im, i_time = moments_pass(i, second_moment=method.covariance, desc="pass 1 image", **common)
            timings.append(i_time)
        stats = method.derive(tm, im, config, where=f"--text {t.path}")
        if centroid:
            # A shard's pass 1 alone may be tiny; only complete statistics are judged.
            check_degenerate(stats, strict=config.strict, where=f"--text {t.path}")
        if method.centroid and centroid:
            stats, timing = _centroid_pass(t, stats, config)
            timings.append(timing)
        stats = replace(
            stats,
            inputs={"text": _store_ref(t), "image": None if i is None else _store_ref(i)},
            config=config.to_json(),
        )
    if stats_path is not None and dist.world().rank == 0:
        save_stats(stats, stats_path)
    return stats, timings


def _check_stats(stats: AlignStats, text: Readable, config: AlignConfig, stats_where: str) -> Method:
    method = get_method(stats.method)
    if stats.dim != text.dim:
        raise UserError(f"{stats_where}: statistics of dim {stats.dim}, but --text {text.path} has dim {text.dim}")
    if config.method != stats.method:
        raise UserError(f"{stats_where}: statistics fitted for --method {stats.method}, not {config.method}")
    if method.centroid and stats.mu_hat is None:
        raise UserError(f"{stats_where}: no centroid (pass 2) in these statistics; run `revision fit` again")
    return method


#: Output blocks pass 3 keeps queued for the writer thread.
PASS3_QUEUE_BLOCKS = 8


class OutputRing:
    """`size` reusable (rows, D) output buffers, handed out in turn (grown when a block is larger)."""

    def __init__(self, size: int, dim: int, dtype: torch.dtype) -> None:
        self.size, self.dim, self.dtype = size, dim, dtype
        self._bufs: list[torch.Tensor] = []
        self._next = 0

    def take(self, rows: int) -> torch.Tensor:
        if not self._bufs or self._bufs[0].shape[0] < rows:
            self._bufs = [torch.empty(rows, self.dim, dtype=self.dtype) for _ in range(self.size)]
        buf = self._bufs[self._next]
        self._next = (self._next + 1) % self.size
        return buf[:rows]


def apply_stats(
    text: StoreLike,
    stats: AlignStats,
    out: str | os.PathLike[str],
    config: AlignConfig,
    *,
    screen: bool = True,
    stats_path: Path | None = None,
    run: dict[str, Any] | None = None,
    commit_seconds: float = COMMIT_SECONDS,
) -> AlignResult:
    """Pass 3: write the aligned rows of `text` to the store `out`, resuming an interrupted run.

    Commits come every `config.commit_rows` rows (default: about 1 GiB of output) or every
    `commit_seconds`, whichever is first; the output records its progress from its creation on, so
    a run interrupted at any moment resumes. `run` (align's inputs and settings) is recorded so a
    re-run of a finished align is recognised. Under torchrun each rank writes its own contiguous
    rows to its own part `out/partRRR-of-WWW.zarr` (the parts read as one store set) and resumes it.
    """
    with ExitStack() as owned:
        t = _open(text, "--text", owned)
        target, span = output_part(location(out), t)
        result = _apply(
            t,
            stats,
            target,
            config,
            screen=screen,
            stats_path=stats_path,
            run=run,
            commit_seconds=commit_seconds,
            span=span,
        )
    dist.barrier()  # the output is complete only when every part is
    result.out, result.rows = location(out), t.rows
    return result


def _apply(
    t: Readable,
    stats: AlignStats,
    out: str | os.PathLike[str],
    config: AlignConfig,
    *,
    screen: bool,
    stats_path: Path | None,
    run: dict[str, Any] | None,
    commit_seconds: float,
    span: tuple[int, int] | None = None,
) -> AlignResult:
    """Pass 3 of text rows [lo, hi) = `span` (all rows when None) into the store `out`."""
    if t.rows == 0:
        raise UserError(f"--text {t.path}: empty store (0 rows)")
    method = _check_stats(stats, t, config, str(stats_path) if stats_path else "statistics")
    # Settings that can fail are resolved before the output exists, so a refusal leaves nothing behind.
    device = config.torch_device()
    pause = float(os.environ.get(_PAUSE_ENV, "0") or 0)
    out_p = location(out)
    lo, hi = span or (0, t.rows)
    created = not out_p.exists()
    dst = open_output(out_p, t, method, config, stats, run, span=span)
    resumed = dst.rows
    start = lo + resumed
    if not created and dst.progress and dst.progress.get("done"):
        dst.close()
        return AlignResult(out_p, stats, stats_path, hi - lo, [], resumed_from=resumed, complete=True)
    # Counted in output rows, so commits fall on the output's shard boundaries.
    clock = CommitClock(resumed, config.commit_rows or default_commit_rows(dst), commit_seconds)
    out_dtype = torch_dtype(config.out_dtype)
    columns = list(t.metadata_columns)
    t0 = time.perf_counter()
    # A deep write queue: with 2 blocks in flight the writer starved whenever the kernel paused it for
    # write-back (20 ms more per block cost 2.6 s on 5 GB here); 8 blocks of ~30 MB ride it out.
    writes = WriteBehind(depth=PASS3_QUEUE_BLOCKS)
    # Output blocks cycle through a few reused buffers: allocating one per block made glibc keep freed
    # blocks in per-thread arenas (peak RSS 0.7 → 2 GB on 1M rows). Once `submit` returns, at most
    # `depth` writes are pending, so a buffer is free again `depth + 1` blocks later.
    ring = OutputRing(writes.depth + 2, t.dim, out_dtype) if device.type == "cpu" else None
    try:
        for row0, block in iter_blocks(
            t,
            start=start,
            stop=hi,
            block_rows=config.block_rows,
            desc="pass 3 apply",
            progress=config.progress,
            device=device,
        ):
            if screen and config.strict:
                screen_block(block, row0, t)
            n = block.shape[0]
            aligned = method.apply(block, row0, stats, out_dtype, out=ring.take(n) if ring else None).to("cpu")
            meta = {name: t.read_metadata(name, row0, row0 + n) for name in columns}
            writes.submit(dst.append, aligned, t.read_ids(row0, row0 + n), meta)
            done = row0 + n
            if done < hi and clock.due(done - lo):
                writes.submit(dst.commit, progress=progress_record(stats, t, done, run, span=span))
                if pause:
                    writes.drain()
                    print(f"committed {done} rows", flush=True)
                    time.sleep(pause)
        final = progress_record(stats, t, hi, run, span=span)
        writes.submit(dst.commit, progress=final, attrs={"alignment": stats.header()})
        writes.drain()
    except UserError as exc:
        writes.close()
        if created and not isinstance(exc, WriteError):
            # Bad input found mid-way (strict screening): a store this run created is removed (while
            # still holding its lock), so no half-aligned output is left behind. A resumed store, or
            # one whose write failed (disk full: a re-run resumes it), keeps its committed rows.
            if isinstance(out_p, RemotePath):
                # The commit object first, so no reader finds a store whose objects are going away.
                (out_p / "zarr.json").unlink(missing_ok=True)
                out_p.delete_tree()
            else:
                shutil.rmtree(out_p, ignore_errors=True)
        dst.close()
        raise
    finally:
        writes.close()
        dst.close()
    nbytes = (hi - start) * t.dim * t.np_dtype.itemsize
    timing = PassTiming("pass 3 apply", hi - start, nbytes, time.perf_counter() - t0)
    return AlignResult(out_p, stats, stats_path, hi - lo, [timing], resumed_from=resumed)


def stats_beside(out: str | os.PathLike[str]) -> Path:
    """Where `align` saves the stats of an aligned store: `<out>.stats.json` next to it."""
    p = location(out)
    return p.with_name(p.name + ".stats.json")


def align_stores(
    text: StoreLike,
    image: StoreLike | None,
    out: str | os.PathLike[str],
    *,
    method: str | None = None,
    config: AlignConfig | None = None,
    **overrides: Any,
) -> AlignResult:
    """The one-call API: fit on `text` (+ `image`) and write the aligned text store `out`.

    `method` defaults to realign (or `config.method`).
    `config` (or keyword overrides of AlignConfig fields) sets the method's parameters. An
    interrupted run resumes: the stats are refitted (deterministic) and pass 3 continues from the
    output's last commit.
    """
    base = config or AlignConfig()
    rank = dist.world().rank
    if method is not None:
        overrides["method"] = method
    cfg = replace(base, **overrides) if overrides else base
    sp = stats_beside(out)
    out_p = location(out)
    with ExitStack() as owned:
        t = _open(text, "--text", owned)
        i = _open(image, "--image", owned) if image is not None else None
        run = run_identity(t, i, cfg)
        target, span = output_part(out_p, t)
        done = finished_run(target, run)
        if done is not None:
            done.close()
        # Every rank takes the same branch: one skipping passes 1-2 would leave the others waiting.
        if dist.all_ranks(done is not None and sp.is_file()):
            # The same command again after it finished: say so instead of redoing passes 1-2.
            return AlignResult(out_p, load_stats(sp), sp, t.rows, [], resumed_from=t.rows, complete=True)
        check_before_work(target, t, span=span)
        stats, timings = fit_stores(t, i, cfg)
        result = apply_stats(t, stats, out, cfg, screen=False, stats_path=sp, run=run)
    # Saved once the store (every part) is complete, so a refused or failed run never overwrites the
    # stats of another store at that path.
    if rank == 0:
        save_stats(stats, sp)
    result.timings = timings + result.timings
    return result
