"""Start-up of the `revision` command: help and argument errors load no heavy library; Ctrl-C is quiet.

Each case runs in a fresh interpreter (this test process has torch loaded already).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from revision.cli import COMMANDS

HEAVY = ("torch", "matplotlib", "faiss", "transformers")

# Runs main(argv) and reports the modules it left loaded, whatever the exit.
_PROBE = """
import json, sys
from revision.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def _probe(*argv: str) -> dict[str, object]:
    import json

    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.stdout.strip(), proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    loaded = set(res.pop("modules"))
    res["heavy"] = [m for m in HEAVY if m in loaded]
    return res


@pytest.mark.parametrize(
    "argv",
    [
        ("--help",),
        (),
        ("nosuchcommand",),
        ("align",),  # a required flag missing
        ("align", "--help"),
        ("apply",),
        ("align-pkl",),
        ("info",),
        ("diagnose",),
        ("demo", "--help"),
        ("embed",),
        ("bench", "--help"),
    ],
    ids=lambda a: " ".join(a) or "no-args",
)
def test_help_and_argument_errors_import_nothing_heavy(argv: tuple[str, ...]) -> None:
    res = _probe(*argv)
    assert res["code"] in (0, 2), res
    assert res["heavy"] == [], f"revision {' '.join(argv)} imported {res['heavy']}"


def test_every_command_parser_builds_and_lists_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    from revision.cli import build_parser

    parser = build_parser()  # all subcommands complete
    choices = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert list(choices) == [c.name for c in COMMANDS]
    for cmd in COMMANDS:
        assert choices[cmd.name].epilog, f"{cmd.name} has no example epilog"


def test_sigint_during_startup_is_quiet(tmp_path: Path) -> None:
    # `revision align` on stores that do not exist: main() starts importing torch for the run, which
    # takes long enough for the signal to land inside the import.
    code = (
        "import sys; from revision.cli import main; print('ready', flush=True); "
        "sys.exit(main(['align', '--text', 't.zarr', '--image', 'i.zarr', '--out', 'a.zarr']))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    assert proc.returncode == 130, (proc.returncode, err)
    assert "interrupted" in err
    assert not list(tmp_path.iterdir())


def test_sigint_right_after_start_is_quiet(tmp_path: Path) -> None:
    # The signal lands while the interpreter itself or our first imports load: no traceback either way.
    proc = subprocess.Popen(
        [sys.executable, "-m", "revision", "info", "missing.zarr"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.15)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    assert proc.returncode in (130, 2, -signal.SIGINT), (proc.returncode, err)
