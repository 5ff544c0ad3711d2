"""`revision ingest SRC DEST --format ...`: read reference pickles, npy (+ parquet) or parquet into a store."""

from __future__ import annotations

import argparse
import json
import os

from revision.paths import check_outputs
from revision.store import CODECS, DTYPES
from revision.store.ingest import DEFAULT_BATCH_ROWS, FORMATS, NONFINITE, ingest

EPILOG = """examples:
  revision ingest embeds/text/ text.zarr --format reference-pkl
  revision ingest laion/ image.zarr --format npy --modality image     # img_emb/ + metadata/
  revision ingest part-0.parquet text.zarr --format parquet --modality text --embedding-column emb

A new DEST is built next to it and renamed into place when complete; re-running an interrupted
ingest with the same arguments resumes it. An existing DEST (same modality, dim and metadata
columns) is appended to, committed once at the end."""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "ingest",
        help="import embeddings into a feature store",
        description="Import embeddings (reference pickles, clip-retrieval npy + parquet, parquet) into a store.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", metavar="SRC", help="input file or directory")
    p.add_argument("dest", metavar="DEST", help="feature store to create (or append to, if it exists)")
    p.add_argument("--format", dest="fmt", required=True, choices=FORMATS, help="input format")
    p.add_argument(
        "--modality",
        choices=("text", "image"),
        default=None,
        help="text or image (default: from the file names, e.g. text_embeds_*.pkl / img_emb/)",
    )
    p.add_argument(
        "--nonfinite",
        choices=NONFINITE,
        default="error",
        help="rows with NaN/Inf: error (default, names the id), skip them, or zero the bad values",
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=tuple(DTYPES),
        help="storage dtype of a new store (default: the input's; float64 input → float32)",
    )
    p.add_argument("--codec", default="none", choices=CODECS, help="chunk compressor (default none)")
    p.add_argument("--chunk-rows", type=int, default=None, help="rows per chunk (default: auto, ≥ 1 MiB chunks)")
    p.add_argument("--chunks-per-shard", type=int, default=None, help="chunks per shard file (default: auto, ≈64 MiB)")
    p.add_argument(
        "--id-column",
        default=None,
        help="npy/parquet: column holding the ids (default: id, else image_path, else row numbers)",
    )
    p.add_argument(
        "--embedding-column",
        default=None,
        help="parquet: list column holding the vectors (default: embedding/embed/emb/vector, or the only list)",
    )
    p.add_argument(
        "--batch-rows",
        type=int,
        default=DEFAULT_BATCH_ROWS,
        help=f"rows read and appended at a time; bounds memory (default {DEFAULT_BATCH_ROWS})",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_outputs([("SRC", args.src)], [("DEST", args.dest, "dir")])
    summary = ingest(
        args.src,
        args.dest,
        fmt=args.fmt,
        modality=args.modality,
        nonfinite=args.nonfinite,
        dtype=args.dtype,
        codec=args.codec,
        chunk_rows=args.chunk_rows,
        chunks_per_shard=args.chunks_per_shard,
        id_column=args.id_column,
        embedding_column=args.embedding_column,
        batch_rows=args.batch_rows,
        show_progress=not args.json and not os.environ.get("REVISION_NO_PROGRESS"),
    )
    print(json.dumps(summary.to_json()) if args.json else summary.describe())
    return 0
