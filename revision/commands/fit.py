"""`revision fit`: passes 1–2 of an alignment (statistics of text and image stores) → a stats file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from revision.align.cli_flags import METHOD_PARAM_FLAGS, add_method_flags, add_run_flags, config_from_args
from revision.errors import UserError
from revision.paths import check_outputs
from revision.store.objio import location

if TYPE_CHECKING:
    from revision.align.passes import PassTiming
    from revision.align.stats import AlignStats

EPILOG = """example:
  revision fit --text text.zarr --image image.zarr --stats realign.json
  revision fit --text text.zarr --image image.zarr --stats ot.json --method realign-ot --shrinkage 0.01
  revision apply --text more_text.zarr --stats realign.json --out aligned.zarr   # later, frozen stats

sharded (each shard on its own machine; the result equals one fit on all rows, bit for bit):
  revision fit --text t1.zarr --image i1.zarr --stats p1.json --pass1-only     # per shard
  revision fit --merge p1.json p2.json --stats pass1.json                       # pass-1 merge
  revision fit --text t1.zarr --centroid-from pass1.json --stats c1.json       # per shard
  revision fit --merge c1.json c2.json --stats realign.json                     # final statistics

distributed (one job; the statistics equal one process's bit for bit; rank 0 writes --stats):
  torchrun --nproc-per-node 4 -m revision fit --text 'text-*.zarr' --image image.zarr --stats realign.json

Degenerate statistics: a modality with fewer than 2 rows, or whose rows are all alike (a trace of
at most 1e-9 of the rows' mean squared norm), is refused (a warning under --no-strict); fewer than
100 rows is a warning.
"""

#: Methods whose statistics the reference's trace_stats.pkl can hold.
TRACE_STATS_METHODS = ("realign", "realign-ot")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "fit",
        help="fit alignment statistics (passes 1-2) and save them",
        description="Read the text and image stores once (means, traces, scale; covariances for realign-ot), "
        "then the text once more (centroid of the projected rows), and save the statistics as JSON "
        "(plus a .npz sidecar for matrices). `revision apply` uses them to align text later.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--text", type=location, default=None, help="text feature store (the rows to align)")
    p.add_argument("--image", type=location, default=None, help="image feature store (the anchor distribution)")
    p.add_argument("--stats", type=location, required=True, help="where to write the statistics (JSON)")
    p.add_argument(
        "--export-trace-stats",
        type=Path,
        default=None,
        help="also write the reference's trace_stats.pkl here (realign and realign-ot, complete statistics)",
    )
    p.add_argument("--pass1-only", action="store_true", help="shards: stop after pass 1 (no centroid)")
    p.add_argument(
        "--centroid-from",
        type=Path,
        default=None,
        help="shards: run pass 2 of --text against these merged pass-1 statistics (method and parameters "
        "come from them)",
    )
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="shards: merge these stats files (all pass-1 only, or all pass-2 against the same pass 1); "
        "method and parameters come from them",
    )
    add_method_flags(p)
    add_run_flags(p, writes=False)
    p.set_defaults(func=run)


def _given_method_flags(args: argparse.Namespace) -> list[str]:
    """The method flags set on the command line (their defaults are None, so unset is visible)."""
    return [flag for flag, name in METHOD_PARAM_FLAGS.items() if getattr(args, name, None) is not None]


def _check_flags(args: argparse.Namespace) -> None:
    """Refuse combinations where a flag would be silently ignored."""
    if args.merge:
        ignored = [f for f, on in (("--text", args.text), ("--image", args.image), ("--pass1-only", args.pass1_only),
                                   ("--centroid-from", args.centroid_from)) if on]  # fmt: skip
        ignored += _given_method_flags(args)
        if ignored:
            raise UserError(
                f"--merge takes the rows, method and parameters from the stats files; {', '.join(ignored)} "
                "would be ignored: drop it"
            )
        return
    if args.text is None:
        raise UserError("--text is required (or --merge)")
    if args.centroid_from is not None:
        ignored = [f for f, on in (("--image", args.image), ("--pass1-only", args.pass1_only),
                                   ("--export-trace-stats", args.export_trace_stats)) if on]  # fmt: skip
        ignored += _given_method_flags(args)
        if ignored:
            raise UserError(
                f"--centroid-from runs pass 2 of one shard with the method and parameters of "
                f"{args.centroid_from}; {', '.join(ignored)} would be ignored or wrong there (export the "
                "trace stats from the final --merge): drop it"
            )
        return
    if args.export_trace_stats is not None:
        method = args.method or "realign"
        if method not in TRACE_STATS_METHODS:
            raise UserError(
                f"--export-trace-stats: trace_stats.pkl holds ReAlign statistics (realign, realign-ot); "
                f"--method {method} has none"
            )
        if args.pass1_only:
            raise UserError("--export-trace-stats needs complete statistics; --pass1-only stops before the centroid")


def _merge(paths: list[Path], *, strict: bool) -> AlignStats:
    from revision.align.config import AlignConfig
    from revision.align.shards import merge_centroids, merge_pass1
    from revision.align.stats import load_stats

    seen: dict[Path, Path] = {}
    for p in paths:
        key = p.resolve()
        if key in seen:
            raise UserError(f"--merge: {p} is the same file as {seen[key]}; each shard's statistics count once")
        seen[key] = p
    parts = [load_stats(p) for p in paths]
    first = parts[0]
    if all(p.sum_h is None for p in parts):
        params = {k: v for k, v in first.params.items() if k in AlignConfig.__dataclass_fields__}
        cfg = AlignConfig(method=first.method, strict=strict, progress=False, **params)
        return merge_pass1(parts, cfg, names=[str(p) for p in paths])
    if all(p.sum_h is not None for p in parts):
        return merge_centroids(parts, names=[str(p) for p in paths])
    raise UserError(f"--merge: mixes pass-1-only files and files with a centroid ({', '.join(map(str, paths))})")


def run(args: argparse.Namespace) -> int:
    from revision import dist

    try:
        return _run(args)
    finally:
        # Under torchrun: a process group left to the interpreter's exit can abort in gloo's threads.
        dist.shutdown()


def _run(args: argparse.Namespace) -> int:
    from revision.align.engine import centroid_pass, fit_stores
    from revision.align.stats import load_stats, save_stats, sidecar_path, trace_stats_record, write_pickle

    _check_flags(args)
    # Before the passes: a bad output path found after them costs the work and leaves a stats file.
    check_outputs(
        [("--text", args.text), ("--image", args.image), ("--centroid-from", args.centroid_from)]
        + [("--merge", p) for p in args.merge or ()],
        [
            ("--stats", args.stats, "file"),
            ("the matrices beside --stats,", sidecar_path(args.stats), "file"),
            ("--export-trace-stats", args.export_trace_stats, "file"),
        ],
    )
    timings: list[PassTiming] = []
    if args.merge:
        stats = _merge(args.merge, strict=args.strict)
        strict = args.strict
    elif args.centroid_from is not None:
        pass1 = load_stats(args.centroid_from)
        cfg = config_from_args(args, method=pass1.method)
        stats, timing = centroid_pass(args.text, pass1, cfg)
        timings.append(timing)
        strict = cfg.strict
    else:
        cfg = config_from_args(args)
        stats, timings = fit_stores(args.text, args.image, cfg, centroid=not args.pass1_only)
        strict = cfg.strict
    record = None
    if args.export_trace_stats is not None:
        if stats.mu_hat is None:
            raise UserError(
                f"--export-trace-stats: these statistics have no centroid ({stats.method}, pass 1 only); "
                "trace_stats.pkl needs complete ReAlign statistics"
            )
        # Built before anything is written: a refusal leaves no stats file behind either.
        record = trace_stats_record(stats, strict_finite=strict)
    from revision import dist

    if dist.world().rank != 0:
        return 0  # every rank holds the same statistics; rank 0 writes them
    save_stats(stats, args.stats)
    if record is not None:
        write_pickle(args.export_trace_stats, record)
    scale = "" if stats.scale is None else f", scale {stats.scale:.6f}"
    print(f"fit {stats.method}: {stats.text.n:,} text rows{scale} -> {args.stats}")
    for t in timings:
        print(f"  {t.name}: {t.rows:,} rows in {t.seconds:.2f} s ({t.rows_per_s:,.0f} rows/s, {t.gb_per_s:.2f} GB/s)")
    return 0
