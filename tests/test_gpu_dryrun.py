"""The GPU check's dry run: `make gpu-dryrun` installs everything offline into a stand-in for the GPU
image and stops at the CUDA point with exit 4; the requirement check it relies on bites.

Needs a package index (or pip's cache) for the stand-in image and the wheel folders, as CI has. About
3 minutes on a 2-core machine, most of it installing torch into the fresh virtualenv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _make_dryrun(dryrun: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    return subprocess.run(
        ["make", "--no-print-directory", "gpu-dryrun", f"DRYRUN={dryrun}", f"PYTHON={sys.executable}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )


@pytest.fixture(scope="module")
def dryrun(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("make") is None:
        pytest.skip("needs make")
    path = tmp_path_factory.mktemp("gpu") / "dryrun"
    res = _make_dryrun(path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"make gpu-dryrun exited {res.returncode}:\n{out[-6000:]}"
    assert "gpu_check: no CUDA device" in out, out[-3000:]
    return path


def test_dryrun_installs_offline_and_stops_at_cuda(dryrun: Path) -> None:
    env = json.loads((dryrun / "results" / "env.json").read_text())
    assert env["revision_from"] == str(dryrun / "site" / "revision")
    assert env["native_kernels_built"] is True
    assert env["distributions"]["zarr"] == "3.1.6"
    # Nothing of the image came in through the wheel folder: it holds torch and the rest itself.
    site = {p.name.split("-")[0].lower() for p in (dryrun / "site").iterdir()}
    assert not site & {"torch", "numpy", "triton", "packaging", "typing_extensions", "yaml"}, site
    # The GPU machine's folder (CPython 3.12) was fetched and fits the limit (gpu_wheels.sh enforces it).
    manifest = (dryrun / "wheels-3.12" / "manifest.txt").read_text().split("\n")
    assert manifest[0] == "python 3.12"
    total = int(next(line.split()[1] for line in manifest if line.startswith("total ")))
    assert 0 < total <= 60 * 2**20
    assert not (dryrun / "results" / "summary.json").exists()  # no step ran


def test_requirement_check_names_a_missing_wheel(dryrun: Path, tmp_path: Path) -> None:
    """The check that replaces pip's resolver: a wheel left out of the folder is named, exit 3."""
    site = tmp_path / "site"
    shutil.copytree(dryrun / "site", site, symlinks=True)
    for p in site.glob("donfig*"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    res = subprocess.run(
        [str(dryrun / "venv" / "bin" / "python"), "-P", "bench/gpu_env.py", "installed", "--out", str(tmp_path / "e")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 3, res.stdout + res.stderr
    assert "zarr needs donfig>=0.8 (not installed)" in res.stderr


def test_wheels_script_rejects_bad_usage() -> None:
    res = subprocess.run(["bash", "bench/gpu_wheels.sh", "--python-version", "3"], cwd=ROOT, capture_output=True,
                         text=True, check=False)  # fmt: skip
    assert res.returncode == 2 and "expected 3.N" in res.stderr


def test_check_refuses_a_folder_for_another_python(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "manifest.txt").write_text("python 2.7\ntotal 0\n")
    res = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=ROOT, env={**os.environ, "PYTHON": sys.executable,
                         "GPU_WHEELS": str(wheels), "GPU_RESULTS": str(tmp_path / "r")},
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert res.returncode == 2 and "holds wheels for Python 2.7" in res.stderr
