"""`revision demo`: the whole job on a built-in corpus — generate, align with every method, diagnose."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from revision.corpus import CorpusConfig, write_corpus

EPILOG = """example:
  revision demo                       # 200k + 200k rows at 768-d into ./revision-demo
  revision demo --rows 20000 --out /tmp/demo
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on a built-in synthetic corpus",
        description="Generate a paired corpus with a CLIP-like modality gap (two anisotropic cones on the "
        "unit sphere), write both feature stores, align the text with every method and diagnose the gap "
        "before and after. Re-running resumes and reuses what is already there.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("revision-demo"), help="output directory (default: %(default)s)")
    p.add_argument("--rows", type=int, default=200_000, help="rows per modality (default: %(default)s)")
    p.add_argument("--dim", type=int, default=768, help="embedding dimension (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="corpus seed (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = CorpusConfig(rows=args.rows, dim=args.dim, seed=args.seed)
    t0 = time.perf_counter()
    text, image = write_corpus(cfg, args.out)
    print(
        f"corpus: {cfg.rows:,} text + {cfg.rows:,} image rows at {cfg.dim}-d (fp16) "
        f"-> {text}, {image} [{time.perf_counter() - t0:.1f} s]"
    )
    return 0
