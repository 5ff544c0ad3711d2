"""`revision align`: fit and apply in one go — text + image stores → an aligned text store."""

from __future__ import annotations

import argparse
from pathlib import Path

from revision.align.cli_flags import add_method_flags, add_run_flags, config_from_args
from revision.paths import check_outputs
from revision.store.objio import location

EPILOG = """example:
  revision align --text text.zarr --image image.zarr --out aligned.zarr
  revision align --text text.zarr --image image.zarr --out ot.zarr --method realign-ot
  revision export aligned.zarr trace/ --format reference-pkl   # back to the reference's pickles
The statistics are saved in the aligned store's attributes and beside it (<out>.stats.json).

distributed (statistics bit for bit those of one process; each process writes out/partRRR-of-WWW.zarr):
  torchrun --nproc-per-node 4 -m revision align --text 'text-*.zarr' --image image.zarr --out aligned/
--text and --image also take store sets: a glob, a directory of parts, or out/text.zarr when only
its parts out/text.partNNN-of-MMM.zarr exist (revision embed under torchrun).
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "align",
        help="align a text store to an image store (fit + apply)",
        description="Three streaming passes over the text store and one over the image store: statistics, "
        "centroid of the projected rows, aligned rows. Memory is bounded by a few blocks; an interrupted "
        "run resumes when re-run with the same flags.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--text", type=location, required=True, help="text feature store (the rows to align)")
    p.add_argument("--image", type=location, default=None, help="image feature store (the anchor distribution)")
    p.add_argument("--out", type=location, required=True, help="aligned feature store to write (or resume)")
    p.add_argument(
        "--export-trace-stats",
        type=Path,
        default=None,
        help="also write the reference's trace_stats.pkl here (realign and realign-ot)",
    )
    add_method_flags(p)
    add_run_flags(p, writes=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from revision import dist

    try:
        return _run(args)
    finally:
        # Under torchrun: a process group left to the interpreter's exit can abort in gloo's threads.
        dist.shutdown()


def _run(args: argparse.Namespace) -> int:
    from revision import dist
    from revision.align.engine import align_stores, stats_beside
    from revision.align.stats import export_trace_stats, sidecar_path

    cfg = config_from_args(args)
    # Every output path is checked before pass 1: a bad --export-trace-stats found after pass 3 would
    # leave a finished store behind an error.
    stats_path = stats_beside(args.out)
    check_outputs(
        [("--text", args.text), ("--image", args.image)],
        [
            ("--out", args.out, "dir"),
            ("the statistics beside --out,", stats_path, "file"),
            ("the matrices beside --out,", sidecar_path(stats_path) if cfg.method == "realign-ot" else None, "file"),
            ("--export-trace-stats", args.export_trace_stats, "file"),
        ],
    )
    result = align_stores(args.text, args.image, args.out, config=cfg)
    if dist.world().rank != 0:
        return 0  # rank 0 writes the files beside --out and reports
    if args.export_trace_stats is not None:
        export_trace_stats(result.stats, args.export_trace_stats, strict_finite=cfg.strict)
    if result.complete:
        print(f"{args.out}: already complete ({result.rows:,} rows); nothing to do")
        return 0
    if result.resumed_from:
        print(f"resumed at row {result.resumed_from:,}")
    print(f"align {cfg.method}: {result.rows:,} rows -> {args.out} (stats: {result.stats_path})")
    for t in result.timings:
        print(f"  {t.name}: {t.rows:,} rows in {t.seconds:.2f} s ({t.rows_per_s:,.0f} rows/s, {t.gb_per_s:.2f} GB/s)")
    return 0
