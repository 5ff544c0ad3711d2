"""`revision fit`: passes 1–2 of an alignment (statistics of text and image stores) → a stats file."""

from __future__ import annotations

import argparse
from pathlib import Path

from revision.align.cli_flags import add_method_flags, add_run_flags, config_from_args
from revision.align.config import AlignConfig
from revision.align.engine import centroid_pass, fit_stores
from revision.align.passes import PassTiming
from revision.align.shards import merge_centroids, merge_pass1
from revision.align.stats import AlignStats, export_trace_stats, load_stats, save_stats
from revision.errors import UserError

EPILOG = """example:
  revision fit --text text.zarr --image image.zarr --stats realign.json
  revision fit --text text.zarr --image image.zarr --stats ot.json --method realign-ot --shrinkage 0.01
  revision apply --text more_text.zarr --stats realign.json --out aligned.zarr   # later, frozen stats

sharded (each shard on its own machine; the result equals one fit on all rows):
  revision fit --text t1.zarr --image i1.zarr --stats p1.json --pass1-only     # per shard
  revision fit --merge p1.json p2.json --stats pass1.json                       # pass-1 merge
  revision fit --text t1.zarr --centroid-from pass1.json --stats c1.json       # per shard
  revision fit --merge c1.json c2.json --stats realign.json                     # final statistics
"""


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
    p.add_argument("--text", type=Path, default=None, help="text feature store (the rows to align)")
    p.add_argument("--image", type=Path, default=None, help="image feature store (the anchor distribution)")
    p.add_argument("--stats", type=Path, required=True, help="where to write the statistics (JSON)")
    p.add_argument(
        "--export-trace-stats",
        type=Path,
        default=None,
        help="also write the reference's trace_stats.pkl here (realign and realign-ot)",
    )
    p.add_argument("--pass1-only", action="store_true", help="shards: stop after pass 1 (no centroid)")
    p.add_argument(
        "--centroid-from",
        type=Path,
        default=None,
        help="shards: run pass 2 of --text against these merged pass-1 statistics",
    )
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="shards: merge these stats files (all pass-1 only, or all pass-2 against the same pass 1)",
    )
    add_method_flags(p)
    add_run_flags(p, writes=False)
    p.set_defaults(func=run)


def _merge(paths: list[Path]) -> AlignStats:
    parts = [load_stats(p) for p in paths]
    first = parts[0]
    if all(p.sum_h is None for p in parts):
        params = {k: v for k, v in first.params.items() if k in AlignConfig.__dataclass_fields__}
        return merge_pass1(parts, AlignConfig(method=first.method, progress=False, **params))
    if all(p.sum_h is not None for p in parts):
        return merge_centroids(parts)
    raise UserError(f"--merge: mixes pass-1-only files and files with a centroid ({', '.join(map(str, paths))})")


def run(args: argparse.Namespace) -> int:
    timings: list[PassTiming] = []
    if args.merge:
        stats = _merge(args.merge)
        cfg = AlignConfig(method=stats.method, strict=args.strict, progress=False)
    elif args.text is None:
        raise UserError("--text is required (or --merge)")
    elif args.centroid_from is not None:
        pass1 = load_stats(args.centroid_from)
        cfg = config_from_args(args, method=pass1.method)
        stats, timing = centroid_pass(args.text, pass1, cfg)
        timings.append(timing)
    else:
        cfg = config_from_args(args)
        stats, timings = fit_stores(args.text, args.image, cfg, centroid=not args.pass1_only)
    save_stats(stats, args.stats)
    if args.export_trace_stats is not None and stats.mu_hat is not None:
        export_trace_stats(stats, args.export_trace_stats, strict_finite=cfg.strict)
    scale = "" if stats.scale is None else f", scale {stats.scale:.6f}"
    print(f"fit {stats.method}: {stats.text.n:,} text rows{scale} -> {args.stats}")
    for t in timings:
        print(f"  {t.name}: {t.rows:,} rows in {t.seconds:.2f} s ({t.rows_per_s:,.0f} rows/s, {t.gb_per_s:.2f} GB/s)")
    return 0
