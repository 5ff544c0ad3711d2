"""`revision fit`: passes 1–2 of an alignment (statistics of text and image stores) → a stats file."""

from __future__ import annotations

import argparse
from pathlib import Path

from revision.align.cli_flags import add_method_flags, add_run_flags, config_from_args
from revision.align.engine import fit_stores
from revision.align.stats import export_trace_stats, save_stats

EPILOG = """example:
  revision fit --text text.zarr --image image.zarr --stats realign.json
  revision fit --text text.zarr --image image.zarr --stats ot.json --method realign-ot --shrinkage 0.01
  revision apply --text more_text.zarr --stats realign.json --out aligned.zarr   # later, frozen stats
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
    p.add_argument("--text", type=Path, required=True, help="text feature store (the rows to align)")
    p.add_argument("--image", type=Path, default=None, help="image feature store (the anchor distribution)")
    p.add_argument("--stats", type=Path, required=True, help="where to write the statistics (JSON)")
    p.add_argument(
        "--export-trace-stats",
        type=Path,
        default=None,
        help="also write the reference's trace_stats.pkl here (realign and realign-ot)",
    )
    add_method_flags(p)
    add_run_flags(p, writes=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    stats, timings = fit_stores(args.text, args.image, cfg)
    save_stats(stats, args.stats)
    if args.export_trace_stats is not None:
        export_trace_stats(stats, args.export_trace_stats, strict_finite=cfg.strict)
    scale = "" if stats.scale is None else f", scale {stats.scale:.6f}"
    print(f"fit {stats.method}: {stats.text.n:,} text rows{scale} -> {args.stats}")
    for t in timings:
        print(f"  {t.name}: {t.rows:,} rows in {t.seconds:.2f} s ({t.rows_per_s:,.0f} rows/s, {t.gb_per_s:.2f} GB/s)")
    return 0
