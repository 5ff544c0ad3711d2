"""The flags that fit, apply and align share, and their translation into an AlignConfig."""

from __future__ import annotations

import argparse
from typing import Any

from revision.align.config import DEFAULT_NOISE_STD, METHOD_NAMES, OUT_DTYPES, AlignConfig

#: The method flags and their AlignConfig fields. Their parser defaults are None (AlignConfig holds
#: the real defaults), so a command can tell which were given and refuse those it would ignore.
METHOD_PARAM_FLAGS: dict[str, str] = {
    "--method": "method",
    "--gap-lambda": "gap_lambda",
    "--noise-std": "noise_std",
    "--seed": "seed",
    "--shrinkage": "shrinkage",
}


def add_method_flags(p: argparse.ArgumentParser) -> None:
    """--method and the parameters of the methods that have some."""
    defaults = AlignConfig()
    p.add_argument(
        "--method",
        default=None,
        choices=METHOD_NAMES,
        help=f"alignment method (default: {defaults.method}); see the README for when each is the right choice",
    )
    p.add_argument(
        "--gap-lambda",
        type=float,
        default=None,
        help="gap-shift: distance ≥ 0 to move along the unit gap direction (default: the gap's length ‖μ_i − μ_t‖)",
    )
    p.add_argument(
        "--noise-std",
        type=float,
        default=None,
        help=f"c3/capdec: Gaussian noise std per coordinate (default: sqrt(0.016) ≈ {DEFAULT_NOISE_STD:.4f})",
    )
    p.add_argument("--seed", type=int, default=None, help=f"c3/capdec: noise seed (default: {defaults.seed})")
    p.add_argument(
        "--shrinkage",
        type=float,
        default=None,
        help=f"realign-ot: covariance shrinkage α in [0, 1] toward (tr Σ / D)·I (default: {defaults.shrinkage:g})",
    )


def add_run_flags(p: argparse.ArgumentParser, *, writes: bool) -> None:
    """Strictness, block size, progress; output dtype and commit interval for commands that write rows."""
    p.add_argument(
        "--no-strict",
        dest="strict",
        action="store_false",
        help="accept NaN/±Inf values (counted as 0) and all-zero rows (left as they are), as the reference "
        "does; by default either is an error naming the store and row",
    )
    p.add_argument(
        "--block-rows",
        type=int,
        default=None,
        help="rows per read block (default: ~16 MiB of the store's chunks); memory is a few blocks",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="where the per-chunk arithmetic runs: auto (CUDA + Triton kernels when available), cpu, cuda, "
        "cuda:N (default: %(default)s)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    if writes:
        p.add_argument(
            "--out-dtype",
            default="float32",
            choices=OUT_DTYPES,
            help="storage dtype of the aligned rows (default: %(default)s, as the reference)",
        )
        p.add_argument(
            "--commit-rows",
            type=int,
            default=None,
            help="rows between commits of the output (default: whole shards, about 1 GiB of output); a killed "
            "run resumes from the last commit",
        )


def config_from_args(args: argparse.Namespace, **fixed: Any) -> AlignConfig:
    """An AlignConfig from parsed flags (flags a command does not have keep their defaults)."""
    names = (
        "method",
        "strict",
        "out_dtype",
        "gap_lambda",
        "noise_std",
        "seed",
        "shrinkage",
        "block_rows",
        "commit_rows",
        "device",
        "progress",
    )
    values = {n: getattr(args, n) for n in names if hasattr(args, n) and getattr(args, n) is not None}
    values.update(fixed)
    return AlignConfig(**values)


def parse_methods(spec: str) -> tuple[str, ...]:
    """`--methods`: "all", or a comma-separated list of method names (demo, experiment)."""
    from revision.errors import UserError

    if spec == "all":
        return tuple(METHOD_NAMES)
    chosen = tuple(m.strip() for m in spec.split(",") if m.strip())
    unknown = [m for m in chosen if m not in METHOD_NAMES]
    if unknown or not chosen:
        raise UserError(f"--methods: unknown {unknown or spec!r}; choose from {', '.join(METHOD_NAMES)}")
    return chosen
