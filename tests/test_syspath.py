"""`python -m revision` in a source checkout must not let the checkout's kernels/ (installed as
revision.kernels) shadow the top-level `kernels` that transformers >= 5.25 imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from revision.syspath import is_checkout_root, without_checkout_root

ROOT = Path(__file__).resolve().parents[1]


def _fake(root: Path, files: list[str]) -> Path:
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("")
    return root


def test_only_a_checkout_root_is_dropped(tmp_path: Path) -> None:
    checkout = _fake(tmp_path / "co", ["pyproject.toml", "kernels/__init__.py", "revision/__init__.py"])
    # An installed environment holds revision/ and Hugging Face's kernels/ side by side, but no pyproject.
    site = _fake(tmp_path / "site", ["kernels/__init__.py", "revision/__init__.py"])
    other = _fake(tmp_path / "other", ["pyproject.toml"])
    assert is_checkout_root(str(checkout)) and is_checkout_root(str(ROOT))
    assert not is_checkout_root(str(site)) and not is_checkout_root(str(other))
    path = [str(checkout), str(site), str(other), str(checkout)]
    assert without_checkout_root(path) == [str(site), str(other)]


def test_the_empty_entry_is_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(tmp_path, ["pyproject.toml", "kernels/__init__.py", "revision/__init__.py"])
    monkeypatch.chdir(tmp_path)
    assert without_checkout_root(["", "/nonexistent"]) == ["/nonexistent"]


_PROBE = """
import importlib.util, runpy, sys
if sys.argv[1] == "cli":
    sys.argv = ["revision", "--help"]
    try:
        runpy.run_module("revision", run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
spec = importlib.util.find_spec("kernels")
print(spec.origin if spec else None)
"""


def _kernels_seen_from_root(mode: str) -> str:
    # `-c` puts the working directory first on sys.path, as `-m` does; the suite's PYTHONSAFEPATH is unset.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    res = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()[-1]


def test_python_m_revision_from_the_checkout_root_unshadows_kernels() -> None:
    ours = str(ROOT / "kernels" / "__init__.py")
    assert _kernels_seen_from_root("plain") == ours  # the hazard is real in a checkout
    assert _kernels_seen_from_root("cli") != ours
