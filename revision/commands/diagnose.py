"""`revision diagnose`: modality-gap metrics of raw (and aligned) text against images, with a report."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from revision.errors import UserError
from revision.paths import check_outputs

_EPILOG = """\
example:
  revision diagnose --text text.zarr --image image.zarr --aligned aligned.zarr --pairs --out diag/
  revision diagnose --text t.zarr --image i.zarr --aligned realign=a.zarr c3=c.zarr --sample 20000 --out diag/
  torchrun --nproc-per-node 4 -m revision diagnose --text 'text-*.zarr' --image image.zarr --out diag/

Writes DIR/metrics.json ({"raw": {...}, "aligned": {...}}) and DIR/report.html (self-contained),
and prints the metrics table. Under torchrun the ranks stream disjoint runs of chunks and read
their own sampled rows; rank 0 computes the sampled metrics and writes; the metrics equal a
one-process run's (see docs/scaling.md, "Distributed diagnose")."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "diagnose",
        help="measure the modality gap (raw vs aligned) and write an HTML report",
        description="Gap metrics of text vs image stores: exact streamed statistics over all rows "
        "(centroid gap, traces, relative modality gap, spectrum) and FAISS / classifier metrics on "
        "seeded samples (k-NN mixing, separability, retrieval recall).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--text",
        required=True,
        metavar="STORE",
        help="text feature store (raw), or a store set (glob, directory of parts)",
    )
    p.add_argument("--image", required=True, metavar="STORE", help="image feature store")
    p.add_argument(
        "--aligned",
        nargs="+",
        default=None,
        metavar="[NAME=]STORE",
        help="aligned text store(s); NAME defaults to the folder name",
    )
    pairing = p.add_mutually_exclusive_group()
    pairing.add_argument(
        "--pairs", action="store_true", help="text and image rows with equal ids are pairs (adds recall@k)"
    )
    pairing.add_argument(
        "--pairs-file", metavar="F", help="CSV/TSV/Parquet with columns text_id, image_id (adds recall@k)"
    )
    p.add_argument(
        "--sample",
        type=int,
        default=None,
        metavar="N",
        help="rows per modality for the sampled metrics (default: min(5000, rows))",
    )
    p.add_argument("--k", type=int, default=10, help="neighbours for k-NN mixing (default: 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of every sample (default: 0)")
    p.add_argument(
        "--threads", type=int, default=None, help="FAISS threads (default: the fastest of a quick measurement)"
    )
    p.add_argument(
        "--exact-limit",
        type=int,
        default=200_000,
        metavar="N",
        help="exact FAISS search up to N pooled sampled rows, IVF beyond, its recall reported (default: 200000)",
    )
    p.add_argument(
        "--full-spectrum",
        action="store_true",
        help="covariance spectrum over all rows (a D×D float64 matrix, O(rows·D²) time); default: from the sample",
    )
    p.add_argument(
        "--block-rows",
        type=int,
        default=None,
        metavar="N",
        help="rows per streamed block (default: ~16 MiB of the store's chunks); memory is a few blocks",
    )
    p.add_argument("--no-gpu", action="store_true", help="never use a FAISS GPU index")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    p.set_defaults(func=run)


def _aligned(specs: list[str] | None) -> dict[str, str] | None:
    if not specs:
        return None
    named: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec.rstrip("/")).stem, spec
        if not name or not path:
            raise UserError(f"--aligned {spec}: expected STORE or NAME=STORE")
        if name in named:
            raise UserError(f"--aligned {spec}: the name {name!r} is given twice; use NAME=STORE")
        named[name] = path
    return named


def run(args: argparse.Namespace) -> int:
    from revision import dist

    try:
        return _run(args)
    finally:
        # Under torchrun: a process group left to the interpreter's exit can abort in gloo's threads.
        # (Outside torchrun nothing was made, and torch stays unloaded.)
        if dist.world().distributed:
            dist.shutdown()


def _run(args: argparse.Namespace) -> int:
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out}: exists and is not a folder")
    aligned = _aligned(args.aligned)
    # Checked before the work, not only when writing, so a typo costs no time. The report folder may
    # hold the inputs (`--out .`); the two files written into it may not be or lie inside one.
    check_outputs(
        [("--text", args.text), ("--image", args.image), ("--pairs-file", args.pairs_file)]
        + [(f"--aligned {name}", path) for name, path in (aligned or {}).items()],
        [("--out", Path(args.out) / "metrics.json", "file"), ("--out", Path(args.out) / "report.html", "file")],
    )
    if args.exact_limit < 1:
        raise UserError(f"--exact-limit {args.exact_limit}: must be at least 1")
    if args.block_rows is not None and args.block_rows < 1:
        raise UserError(f"--block-rows {args.block_rows}: must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads}: must be at least 1")
    from revision import dist
    from revision.diagnose import write_outputs
    from revision.diagnose.pipeline import run_diagnosis
    from revision.diagnose.report import text_table
    from revision.store import open_readable

    # Under torchrun rank 0 speaks for the job (every rank would print each message).
    log = (
        None
        if args.quiet or dist.world().rank != 0
        else (lambda msg: print(f"revision diagnose: {msg}", file=sys.stderr))
    )
    with ExitStack() as opened:
        # Store sets (globs, directories of parts) are opened here; the pipeline reads them like stores.
        def source(flag: str, spec: str) -> Any:
            return opened.enter_context(open_readable(spec, flag=flag))

        named = None if aligned is None else {name: source(f"--aligned {name}", p) for name, p in aligned.items()}
        result = run_diagnosis(
            source("--text", args.text), source("--image", args.image), aligned=named, sample=args.sample,
            k=args.k, seed=args.seed, pairs=args.pairs, pairs_file=args.pairs_file, gpu=not args.no_gpu,
            threads=args.threads, full_spectrum=args.full_spectrum, exact_limit=args.exact_limit,
            block_rows=args.block_rows, log=log,
        )  # fmt: skip
    if not result.root:
        return 0  # under torchrun rank 0 computes the sampled metrics and writes the outputs
    metrics_path, report_path = write_outputs(result, args.out)
    print(text_table(result.metrics))
    print(f"\nmetrics: {metrics_path}\nreport:  {report_path}")
    return 0
