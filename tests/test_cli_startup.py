"""Start-up of the `revision` command: help and argument errors load no heavy library; Ctrl-C is quiet.

Each case runs in a fresh interpreter (this test process has torch loaded already).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
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
        ("fit",),
        ("train",),
        ("caption",),
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


def _tiny_pair(root: Path, rows: int = 20, dim: int = 32) -> tuple[Path, Path]:
    from test_align_oracle import make_store

    rng = np.random.default_rng(0)
    make_store(root / "t.zarr", (rng.normal(size=(rows, dim)) + 1).astype(np.float32), "text", chunk_rows=16).close()
    make_store(root / "i.zarr", (rng.normal(size=(rows, dim)) - 1).astype(np.float32), "image", chunk_rows=16).close()
    return root / "t.zarr", root / "i.zarr"


def test_diagnose_of_a_small_store_loads_no_torch(tmp_path: Path) -> None:
    t, i = _tiny_pair(tmp_path)
    res = _probe("diagnose", "--text", str(t), "--image", str(i), "--out", str(tmp_path / "d"), "--quiet", "--pairs")
    assert res["code"] == 0, res
    assert "torch" not in res["heavy"], res
    assert (tmp_path / "d" / "report.html").is_file()
    # Refused before the work: matplotlib, needed only to draw the report's figures, is not loaded.
    res = _probe("diagnose", "--text", str(t), "--image", str(i), "--out", str(tmp_path / "e"), "--sample", "5")
    assert res["code"] == 2 and not {"torch", "matplotlib"} & set(res["heavy"]), res


@pytest.mark.parametrize(("n", "d", "gap"), [(40, 8, 0.0), (300, 16, 0.3), (500, 64, 3.0)])
def test_separability_fit_reaches_the_torch_lbfgs_optimum(n: int, d: int, gap: float) -> None:
    import torch

    from revision.diagnose.sampled import _L2, _fit_logistic

    rng = np.random.default_rng(n)
    x = np.hstack([rng.normal(size=(2 * n, d)), np.ones((2 * n, 1))])
    y = np.repeat([0.0, 1.0], n)
    x[n:, 0] += gap
    w = _fit_logistic(x, y, _L2)

    # The previous implementation, kept here as the reference: torch's L-BFGS with strong Wolfe.
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    wt = torch.zeros(d + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([wt], lr=1.0, max_iter=200, history_size=20, line_search_fn="strong_wolfe")

    def loss_of(v: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(xt @ v, yt) + _L2 * (v[:-1] @ v[:-1])

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_of(wt)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        ours, ref = float(loss_of(torch.from_numpy(w))), float(loss_of(wt))
        assert ours <= ref + 1e-7 * max(1.0, abs(ref)), (ours, ref)
        agree = float(((xt @ torch.from_numpy(w) > 0) == (xt @ wt > 0)).double().mean())
    assert agree >= 0.99, agree
    assert np.abs(w - wt.detach().numpy()).max() < 1e-3 * max(1.0, np.abs(w).max())


def _import_like_numpy() -> None:
    # What numpy's C import does when Ctrl-C lands inside it: the KeyboardInterrupt becomes an
    # ImportError and the interruption itself is lost.
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1.0)
    except KeyboardInterrupt:
        raise ImportError('PyCapsule_Import could not import module "datetime"') from None


@pytest.fixture
def default_sigint(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # main() takes Ctrl-C over only where it has Python's default meaning; pytest's may differ.
    monkeypatch.setattr(signal, "getsignal", lambda _s: signal.default_int_handler)
    previous = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("default_sigint")
def test_ctrl_c_turned_into_an_import_error_is_an_interruption(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from revision import cli

    monkeypatch.setattr(cli, "_run", lambda args: _import_like_numpy())
    assert cli.main(["info", "x.zarr"]) == 130
    assert "revision info: interrupted" in capsys.readouterr().err


@pytest.mark.usefixtures("default_sigint")
def test_ctrl_c_while_the_parser_imports_waits_for_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from revision import cli

    finished = []

    def imports(argv: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # nothing is raised in here: an import interrupted half-way can lose the signal
        finished.append(True)

    monkeypatch.setattr(cli, "build_parser", imports)
    assert cli.main(["info", "x.zarr"]) == 130
    assert finished == [True]
    assert "revision: interrupted" in capsys.readouterr().err


def test_an_import_error_without_ctrl_c_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    from revision import cli

    def broken(argv: object) -> None:
        raise ImportError("no module named nothing")

    monkeypatch.setattr(cli, "build_parser", broken)
    with pytest.raises(ImportError, match="nothing"):
        cli.main(["info", "x.zarr"])
