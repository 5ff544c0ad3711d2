"""`revision caption`: a trained run + feature rows → one JSON line {"id", "text"} per row.

torch and transformers are imported inside `run`, so `revision --help` stays light.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

EPILOG = """examples:
  revision caption --run runs/pre --features image.zarr --out captions.jsonl
  revision caption --run runs/ft --features image.mm --ids val_ids.txt --prompt "<image>\\nWhat is shown?" \\
      --out answers.jsonl --max-new-tokens 64

Greedy decoding, batched. A re-run appends only the ids not yet in OUT (resumable)."""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "caption",
        help="generate text from feature rows with a trained run",
        description="Batched greedy generation from feature rows with a `revision train` run.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", required=True, type=Path, help="finished `revision train` run directory")
    p.add_argument("--features", required=True, type=Path, help="feature store (Zarr) or memmap view")
    p.add_argument("--out", required=True, type=Path, help="JSON Lines output, one {id, text} per row")
    p.add_argument("--ids", type=Path, help="file of ids, one a line (default: every row)")
    p.add_argument("--prompt", help="user prompt with one <image> (finetune runs; default: describe briefly)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per row at most (default 32)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per generation batch (default 64)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from revision.train.generate import CaptionConfig, caption
    from revision.train.template import DEFAULT_PROMPT

    cfg = CaptionConfig(
        run=args.run,
        features=args.features,
        out=args.out,
        ids=args.ids,
        prompt=args.prompt or DEFAULT_PROMPT,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        progress=not args.json and not os.environ.get("REVISION_NO_PROGRESS"),
    )
    summary = caption(cfg)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"captioned {summary['written']:,} rows into {summary['out']} ({summary['skipped']:,} already there)")
    return 0
