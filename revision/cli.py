"""The `revision` command line: one command, one module per subcommand in `revision.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys

from revision.errors import UserError
from revision.store import ConfigError, StoreError

# Order is the order shown in `revision --help`.
COMMANDS: tuple[str, ...] = (
    "demo",
    "embed",
    "ingest",
    "info",
    "fit",
    "apply",
    "align",
    "align_pkl",
    "diagnose",
    "export",
    "bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="revision",
        description="Out-of-core embedding store and modality-gap alignment (ReAlign).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"revision.commands.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, StoreError, ConfigError) as exc:
        print(f"revision {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `revision ... | head` closed our stdout: not an error worth a traceback.
        sys.stdout = None  # type: ignore[assignment]
        return 0
    except KeyboardInterrupt:
        print(f"revision {args.command}: interrupted; committed work is kept, re-run to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
