"""`revision experiment`: the ReVision claim tested end to end on the built-in world (see
`revision.experiment.pipeline`), flags → ExperimentConfig → `run_experiment`."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from revision.errors import UserError

EPILOG = """examples:
  revision experiment --out runs/exp --quick            # one seed, small splits: about 10 minutes on 2 cores
  revision experiment --out runs/exp --seeds 3          # the full grid, 3 seeds: about 40 minutes
  revision experiment --out runs/exp --methods realign,c3 --feature-noise 0.05

Re-running the same command resumes: the world, the encoder, the stores, the aligned stores and
every finished captioner run are reused."""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "experiment",
        help="train captioners on aligned text and score them on real images (the offline ReVision test)",
        description="Generate the built-in world, train its dual encoder, embed, align the unpaired text with "
        "every method, diagnose the gap, train a captioner on each aligned text store (with and without "
        "train-time feature noise), caption held-out test images and score the captions against the truth. "
        "Writes OUT/results.json and OUT/report.html.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="output directory (created; re-run to resume)")
    p.add_argument("--seeds", type=int, default=None, help="captioner seeds 0..N-1 (default 3; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="one seed, smaller splits, shorter training (≤ 10 min)")
    p.add_argument(
        "--feature-noise",
        default="auto",
        help="train-time feature noise sigma: 'auto' (calibrated on held-out pairs), a number, or 0 for no "
        "noise rows (default: %(default)s)",
    )
    p.add_argument("--methods", default="all", help="comma-separated alignment methods, or 'all' (default: all)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per captioner (default: the preset's)")
    p.set_defaults(func=run)


def _noise(spec: str) -> float | str | None:
    if spec == "auto":
        return "auto"
    try:
        value = float(spec)
    except ValueError:
        raise UserError(f"--feature-noise: {spec!r} is neither 'auto' nor a number") from None
    return value or None


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run, flags in a fixed order (recorded in results.json)."""
    parts = ["revision", "experiment", "--out", str(args.out)]
    parts += ["--quick"] if args.quick else []
    parts += ["--seeds", str(args.seeds)] if args.seeds is not None else []
    parts += ["--feature-noise", args.feature_noise] if args.feature_noise != "auto" else []
    parts += ["--methods", args.methods] if args.methods != "all" else []
    parts += ["--steps", str(args.steps)] if args.steps is not None else []
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    from revision.align.cli_flags import parse_methods
    from revision.experiment.config import full_config, quick_config
    from revision.experiment.pipeline import run_experiment
    from revision.paths import check_outputs

    overrides: dict[str, object] = {"methods": parse_methods(args.methods), "feature_noise": _noise(args.feature_noise)}
    if args.seeds is not None:
        if args.seeds < 1:
            raise UserError(f"--seeds must be at least 1, got {args.seeds}")
        overrides["seeds"] = tuple(range(args.seeds))
    if args.steps is not None:
        overrides["steps"] = args.steps
    cfg = quick_config(**overrides) if args.quick else full_config(**overrides)
    check_outputs([], [("--out", args.out, "dir")])
    run_experiment(cfg, args.out, command=command_line(args))
    return 0
