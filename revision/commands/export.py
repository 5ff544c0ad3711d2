"""`revision export STORE DEST --format ...`: write a store as reference pickles, npy + parquet, parquet or memmap."""

from __future__ import annotations

import argparse
import json
import os

from revision.errors import UserError
from revision.paths import check_outputs
from revision.store.export import DEFAULT_ROWS_PER_FILE, EXPORT_FORMATS, ExportSummary, export

EPILOG = """examples:
  revision export text.zarr embeds/text --format reference-pkl   # text_embeds_{k}.pkl, ≤ 200,000 rows each
  revision export image.zarr laion/ --format npy                  # img_emb/img_emb_N.npy + metadata/
  revision export text.zarr text.parquet --format parquet
  revision export text.zarr text.mm --format memmap              # the training view

DEST must not exist; it appears only once complete."""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "export",
        help="write a feature store to another format",
        description="Export a store to reference pickles, clip-retrieval npy + parquet, parquet, or a memmap.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("store", metavar="STORE", help="feature store to read")
    p.add_argument("dest", metavar="DEST", help="output directory (a file for --format parquet)")
    p.add_argument("--format", dest="fmt", required=True, choices=EXPORT_FORMATS, help="output format")
    p.add_argument(
        "--rows-per-file",
        type=int,
        default=None,
        help=f"rows per output file (default {DEFAULT_ROWS_PER_FILE['reference-pkl']:,} for reference-pkl, "
        f"{DEFAULT_ROWS_PER_FILE['npy']:,} for npy)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.rows_per_file is not None:
        if args.fmt not in DEFAULT_ROWS_PER_FILE:
            raise UserError(
                f"--rows-per-file: --format {args.fmt} writes a single file; the flag applies to "
                f"{' and '.join(DEFAULT_ROWS_PER_FILE)}"
            )
        if args.rows_per_file < 1:
            raise UserError(f"--rows-per-file {args.rows_per_file}: must be at least 1")
    single_file = args.fmt == "parquet"
    if single_file and args.dest.endswith(("/", os.sep)):
        raise UserError(f"DEST {args.dest}: names a directory, but --format parquet writes a file (e.g. out.parquet)")
    check_outputs([("STORE", args.store)], [("DEST", args.dest, "any")])
    # memmap: the export itself decides (a finished export of this same store is a no-op re-run).
    if os.path.lexists(args.dest) and args.fmt != "memmap":
        hint = ""
        if single_file and os.path.isdir(args.dest):
            hint = f"; --format parquet writes one file, e.g. {os.path.join(args.dest, 'export.parquet')}"
        raise UserError(f"{args.dest}: DEST already exists; remove it or choose another path{hint}")
    result = export(
        args.store,
        args.dest,
        fmt=args.fmt,
        rows_per_file=args.rows_per_file,
        show_progress=not args.json and not os.environ.get("REVISION_NO_PROGRESS"),
    )
    if isinstance(result, ExportSummary):
        print(json.dumps(result.to_json()) if args.json else result.describe())
    else:
        print(json.dumps(result, default=str) if args.json else f"exported {args.store} to {args.dest} ({args.fmt})")
    return 0
