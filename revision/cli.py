"""The `revision` command line: one command, one module per subcommand in `revision.commands`.

Start-up stays fast because only the chosen subcommand's module is imported: the other subcommands
appear in `revision --help` from the registry below (name, module, one-line help). A command module's
`register()` must import nothing heavy (torch, faiss, matplotlib, transformers); its `run()` imports
what the work needs.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from typing import NamedTuple


class Command(NamedTuple):
    name: str
    """What the user types: `revision NAME`."""
    module: str
    """`revision.commands.<module>`, which has register(subparsers) and run(args)."""
    help: str
    """The line shown in `revision --help` (the module's own add_parser help should say the same)."""


# Order is the order shown in `revision --help`. Adding a command is adding one line here.
COMMANDS: tuple[Command, ...] = (
    Command("demo", "demo", "run the whole pipeline on a built-in synthetic corpus"),
    Command("embed", "embed", "embed images and texts with a dual encoder (CLIP, SigLIP, LLM2CLIP) into stores"),
    Command("ingest", "ingest", "import embeddings into a feature store"),
    Command("info", "info", "describe a feature store"),
    Command("fit", "fit", "fit alignment statistics (passes 1-2) and save them"),
    Command("apply", "apply", "align a text store with saved statistics (pass 3)"),
    Command("align", "align", "align a text store to an image store (fit + apply)"),
    Command("align-pkl", "align_pkl", "ReAlign on reference pickle directories (drop-in for the reference script)"),
    Command("diagnose", "diagnose", "measure the modality gap (raw vs aligned) and write an HTML report"),
    Command("export", "export", "write a feature store to another format"),
    Command("train", "train", "train a projector + causal LM on feature rows (ReVision)"),
    Command("caption", "caption", "generate text from feature rows with a trained run"),
    Command(
        "experiment",
        "experiment",
        "train captioners on aligned text and score them on real images (the offline ReVision test)",
    ),
    Command("bench", "bench", "run a benchmark script"),
)


def _chosen(argv: list[str]) -> Command | None:
    """The subcommand argv names: the first argument that is not an option (the top level has no
    options taking a value), if it is a known command."""
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return next((c for c in COMMANDS if c.name == arg), None)
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser, complete for the subcommand `argv` names (all of them when `argv` is None); the
    others are listed with their help line only, so their modules are not imported."""
    parser = argparse.ArgumentParser(
        prog="revision",
        description="Out-of-core embedding store and modality-gap alignment (ReAlign).",
        epilog="`revision COMMAND --help` describes a command, with examples.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = None if argv is None else _chosen(argv)
    for cmd in COMMANDS:
        if argv is None or cmd is chosen:
            importlib.import_module(f"revision.commands.{cmd.module}").register(sub)
        else:
            sub.add_parser(cmd.name, help=cmd.help)
    return parser


class _SigintSeen:
    """Python's own Ctrl-C handler (raise KeyboardInterrupt) that also remembers it ran, and while
    `defer` is set only remembers.

    Raised inside an import, a KeyboardInterrupt can be lost: in a C extension's import it comes
    back as an ImportError (numpy's PyCapsule_Import of datetime), in importlib's module-lock
    callback it is printed as "Exception ignored" and the command runs on. So the parser's imports
    run deferred, and the flag tells an ImportError of the run phase from a real one.
    """

    def __init__(self) -> None:
        self.seen = False
        self.defer = False

    def __call__(self, signum: int, frame: object) -> None:
        self.seen = True
        if not self.defer:
            raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = "?"
    sigint = _SigintSeen()
    # Only where Ctrl-C has Python's default meaning: an ignored SIGINT or a caller's handler stays.
    ours = threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    if ours:
        signal.signal(signal.SIGINT, sigint)
    try:
        # Everything, the imports of the chosen command included, runs inside this try: Ctrl-C while
        # torch loads is an interruption like any other, not a traceback.
        sigint.defer = True
        parser = build_parser(argv)
        sigint.defer = False
        if sigint.seen:
            raise KeyboardInterrupt
        args = parser.parse_args(argv)
        command = args.command
        return _run(args)
    except KeyboardInterrupt:
        return _interrupted(command)
    except ImportError:
        if sigint.seen:
            return _interrupted(command)
        raise
    finally:
        if ours:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _interrupted(command: str) -> int:
    if command == "?":
        print("revision: interrupted", file=sys.stderr)
    else:
        print(f"revision {command}: interrupted; committed work is kept, re-run to resume", file=sys.stderr)
    return 130


def _run(args: argparse.Namespace) -> int:
    from revision.errors import UserError
    from revision.store import ConfigError

    try:
        return int(args.func(args) or 0)
    except (UserError, ConfigError) as exc:
        # StoreError is a UserError. One line: a message spanning lines would read as a traceback.
        message = str(exc).replace("\n", " ")
        print(f"revision {args.command}: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `revision ... | head` closed our stdout: not an error worth a traceback.
        sys.stdout = None  # type: ignore[assignment]
        return 0


if __name__ == "__main__":
    sys.exit(main())
