"""`revision apply`: pass 3 of an alignment — align a text store with frozen statistics (resumable)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from revision.align.cli_flags import add_run_flags, config_from_args
from revision.align.config import METHOD_NAMES
from revision.errors import UserError
from revision.modality import require_modality
from revision.paths import check_outputs
from revision.store.objio import location

if TYPE_CHECKING:
    from revision.dist import World

EPILOG = """example:
  revision fit --text text.zarr --image image.zarr --stats realign.json
  revision apply --text text.zarr --stats realign.json --out aligned.zarr
  revision apply --text new_text.zarr --stats realign.json --out new_aligned.zarr --out-dtype float16
Re-running an interrupted apply with the same flags resumes from its last commit.
  torchrun --nproc-per-node 4 -m revision apply --text text.zarr --stats realign.json --out aligned/
    (each process writes its rows to aligned/partRRR-of-004.zarr; read them back as the set aligned/)
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "apply",
        help="align a text store with saved statistics (pass 3)",
        description="Write the aligned rows of a text store to a new feature store, chunk by chunk with "
        "atomic commits, using statistics from `revision fit`. The method and its parameters come from "
        "the statistics file.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--text", type=location, required=True, help="text feature store to align")
    p.add_argument("--stats", type=location, required=True, help="statistics JSON written by `revision fit`")
    p.add_argument("--out", type=location, required=True, help="aligned feature store to write (or resume)")
    p.add_argument(
        "--method",
        default=None,
        choices=METHOD_NAMES,
        help="optional check: refuse statistics fitted for another method (default: take the stats' method)",
    )
    add_run_flags(p, writes=True)
    p.set_defaults(func=run)


def _rank_prefix(w: World) -> str:
    """Each rank of a torchrun job reports its own part."""
    return f"rank {w.rank}/{w.size}: " if w.distributed else ""


def run(args: argparse.Namespace) -> int:
    from revision import dist

    try:
        return _run(args)
    finally:
        # Under torchrun: a process group left to the interpreter's exit can abort in gloo's threads.
        dist.shutdown()


def _run(args: argparse.Namespace) -> int:
    from revision import dist
    from revision.align.engine import apply_stats
    from revision.align.stats import load_stats, sidecar_path
    from revision.store import open_readable

    check_outputs(
        [("--text", args.text), ("--stats", args.stats), ("the sidecar of --stats,", sidecar_path(args.stats))],
        [("--out", args.out, "dir")],
    )
    stats = load_stats(args.stats)
    with open_readable(args.text, flag="--text", check_ids=False) as text:
        # The engine aligns whatever rows it is given: an image store here would be written out as
        # "aligned" images.
        require_modality("--text", args.text, text.modality, "text")
    if args.method is not None and args.method != stats.method:
        raise UserError(f"--stats {args.stats}: statistics fitted for --method {stats.method}, not {args.method}")
    cfg = config_from_args(args, method=stats.method)
    result = apply_stats(args.text, stats, args.out, cfg, stats_path=args.stats)
    where = _rank_prefix(dist.world())
    if result.complete:
        print(f"{where}{args.out}: already complete ({result.rows:,} rows); nothing to do")
        return 0
    if result.resumed_from:
        print(f"{where}resumed at row {result.resumed_from:,}")
    print(f"{where}apply {stats.method}: {result.rows:,} rows -> {args.out}")
    for t in result.timings:
        print(f"  {t.name}: {t.rows:,} rows in {t.seconds:.2f} s ({t.rows_per_s:,.0f} rows/s, {t.gb_per_s:.2f} GB/s)")
    return 0
