"""`revision bench NAME [ARGS...]`: run one of the benchmark scripts in `revision.bench`."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import pkgutil
import runpy
import sys
from pathlib import Path

import revision.bench
from revision.errors import UserError

EPILOG = """examples:
  revision bench store --rows 200000 --dim 256
  revision bench align -- --help
Results are written as JSON to bench/results/ (see each script's --help)."""


def available() -> list[str]:
    return sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules(revision.bench.__path__)
        if m.name.startswith("bench_")
    )


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "bench", help="run a benchmark script", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "name", nargs="?", default=None, help=f"benchmark to run: {', '.join(available()) or 'none installed'}"
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark script")
    p.set_defaults(func=run)


def summary(name: str) -> str:
    """The first line of a benchmark's docstring, read from its source: importing it would load torch."""
    spec = importlib.util.find_spec(f"revision.bench.bench_{name}")
    if spec is None or spec.origin is None:
        return ""
    try:
        doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8")))
    except (OSError, SyntaxError, ValueError):
        return ""
    return (doc or "").strip().splitlines()[0] if doc and doc.strip() else ""


def run(args: argparse.Namespace) -> int:
    names = available()
    if args.name is None:
        # Asked with no name: the list is the answer, not an error.
        width = max((len(n) for n in names), default=0)
        print("benchmarks (revision bench NAME [ARGS]; NAME -- --help for its flags):")
        for n in names:
            print(f"  {n:<{width}}  {summary(n)}")
        return 0
    if args.name not in names:
        raise UserError(f"unknown benchmark {args.name!r}; choose from {', '.join(names)}")
    forwarded = [a for a in args.args if a != "--"] if args.args[:1] == ["--"] else list(args.args)
    sys.argv = [f"bench_{args.name}", *forwarded]
    runpy.run_module(f"revision.bench.bench_{args.name}", run_name="__main__")
    return 0
