"""`revision demo`: the whole job on a built-in corpus — generate, align with every method, diagnose —
then the quick experiment (`revision experiment --quick` into OUT/experiment): embed → store → align →
diagnose → train → caption → score on the built-in world of rendered images."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from revision.corpus import CorpusConfig, write_corpus
from revision.errors import UserError
from revision.paths import check_outputs
from revision.store import FeatureStore

EPILOG = """example:
  revision demo                       # 200k + 200k rows at 768-d into ./revision-demo
  revision demo --rows 20000 --out /tmp/demo
  revision demo --no-experiment       # the alignment part only (skips the ~10-minute quick experiment)
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on a built-in synthetic corpus",
        description="Generate a paired corpus with a CLIP-like modality gap (two anisotropic cones on the "
        "unit sphere), write both feature stores, align the text with every method and diagnose the gap "
        "before and after. Then run the quick experiment into OUT/experiment: captioners trained on each "
        "method's aligned text, scored on real (rendered) images. Re-running resumes and reuses what is already "
        "there.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("revision-demo"), help="output directory (default: %(default)s)")
    p.add_argument("--rows", type=int, default=200_000, help="rows per modality (default: %(default)s)")
    p.add_argument("--dim", type=int, default=768, help="embedding dimension (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="corpus seed (default: %(default)s)")
    p.add_argument(
        "--methods", default="all", help="comma-separated alignment methods to run, or 'all' (default: %(default)s)"
    )
    p.add_argument(
        "--sample",
        type=int,
        default=None,
        help="rows per modality for the sampled diagnostics (default: min(5000, rows))",
    )
    p.add_argument(
        "--no-experiment",
        action="store_true",
        help="stop after the alignment and diagnostics (skip the quick experiment, about 10 minutes on 2 cores)",
    )
    p.set_defaults(func=run)


def _check_sizes(args: argparse.Namespace) -> None:
    """Refuse sizes the corpus or the diagnostics would refuse, before minutes of generating and aligning."""
    from revision.diagnose.pipeline import MIN_SAMPLE

    latent = CorpusConfig().latent
    # The corpus puts its shared meaning in `latent` dimensions and needs more than twice that.
    min_dim = 2 * (latent + 1)
    if args.dim < min_dim:
        raise UserError(f"--dim {args.dim}: the demo corpus needs at least {min_dim} dimensions")
    if args.rows < MIN_SAMPLE:
        raise UserError(f"--rows {args.rows}: the diagnostics need at least {MIN_SAMPLE} rows per modality")
    if args.sample is not None and not MIN_SAMPLE <= args.sample <= args.rows:
        raise UserError(f"--sample {args.sample}: must lie between {MIN_SAMPLE} and --rows ({args.rows})")


def _complete(path: Path, rows: int) -> bool:
    if not path.exists():
        return False
    st = FeatureStore.open(path)
    return st.rows == rows and bool(st.attrs.get("alignment"))


def run(args: argparse.Namespace) -> int:
    from revision.align import align_stores
    from revision.align.cli_flags import parse_methods
    from revision.diagnose import diagnose
    from revision.diagnose.report import text_table

    methods = parse_methods(args.methods)
    _check_sizes(args)
    check_outputs([], [("--out", args.out, "dir")])
    cfg = CorpusConfig(rows=args.rows, dim=args.dim, seed=args.seed)
    t0 = time.perf_counter()
    text, image = write_corpus(cfg, args.out)
    print(
        f"1. corpus: {cfg.rows:,} text + {cfg.rows:,} image rows at {cfg.dim}-d (fp16), paired by id, "
        f"-> {text}, {image} [{time.perf_counter() - t0:.1f} s]"
    )

    aligned: dict[str, Path] = {}
    print(f"2. align the text to the images with {len(methods)} method(s):")
    for method in methods:
        out = args.out / f"aligned-{method}.zarr"
        t1 = time.perf_counter()
        if _complete(out, cfg.rows):
            print(f"   {method:<11} already done -> {out}")
        else:
            res = align_stores(text, image, out, method=method, progress=False)
            print(f"   {method:<11} {res.rows:,} rows in {time.perf_counter() - t1:.1f} s -> {out}")
        aligned[method] = out

    t2 = time.perf_counter()
    report_dir = args.out / "report"
    metrics = diagnose(text, image, aligned=aligned, out=report_dir, sample=args.sample, pairs=True)
    print(f"3. diagnose raw vs aligned [{time.perf_counter() - t2:.1f} s]:\n")
    print(text_table(metrics))
    print(f"\nreport: {report_dir / 'report.html'}  metrics: {report_dir / 'metrics.json'}")
    if not args.no_experiment:
        _experiment(args, methods)
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


def _experiment(args: argparse.Namespace, methods: tuple[str, ...]) -> None:
    """Step 4: the quick experiment, its steps indented under the demo's."""
    from revision.experiment.config import quick_config
    from revision.experiment.pipeline import run_experiment

    out = args.out / "experiment"
    print(f"\n4. quick experiment -> {out}: do captioners trained on aligned text describe real images?")
    command = f"revision experiment --out {out} --quick" + (
        f" --methods {args.methods}" if args.methods != "all" else ""
    )
    run_experiment(quick_config(methods=methods), out, command=command, log=lambda line: print("   " + line))
