"""Kill-and-resume: an `apply` killed with SIGKILL mid-way resumes to a byte-identical aligned store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from test_align_oracle import make_store

from revision.cli import main
from revision.store import FeatureStore


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_killed_apply_resumes_byte_identical(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    n, d = 1500, 24
    text = (rng.normal(size=(n, d)) + 1.0).astype(np.float32)
    image = (rng.normal(size=(900, d)) - 0.5).astype(np.float32)
    make_store(tmp_path / "t.zarr", text, "text", chunk_rows=16, chunks_per_shard=4)
    make_store(tmp_path / "i.zarr", image, "image", chunk_rows=32)
    stats = tmp_path / "s.json"
    assert main(["fit", "--text", str(tmp_path / "t.zarr"), "--image", str(tmp_path / "i.zarr"),
                 "--stats", str(stats), "--no-progress"]) == 0  # fmt: skip
    flags = ["--text", str(tmp_path / "t.zarr"), "--stats", str(stats), "--commit-rows", "100",
             "--block-rows", "64", "--no-progress"]  # fmt: skip
    assert main(["apply", *flags, "--out", str(tmp_path / "clean.zarr")]) == 0

    killed = tmp_path / "killed.zarr"
    env = {**os.environ, "REVISION_ALIGN_PAUSE_AFTER_COMMIT": "60"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "revision", "apply", *flags, "--out", str(killed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        seen = 0
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("committed"):
                seen += 1
                # Let it append past the commit before killing: uncommitted rows must be dropped.
                os.kill(proc.pid, signal.SIGKILL)
                break
        assert seen == 1, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait(timeout=60)
    partial = FeatureStore.open(killed)
    assert 0 < partial.rows < n and not partial.progress.get("done")
    assert main(["apply", *flags, "--out", str(killed)]) == 0
    clean_files = _tree_bytes(tmp_path / "clean.zarr")
    killed_files = _tree_bytes(killed)
    assert sorted(clean_files) == sorted(killed_files)
    differ = [k for k in clean_files if clean_files[k] != killed_files[k]]
    assert not differ, f"files differ after resume: {differ}"
    # Running again on a finished store is a no-op.
    assert main(["apply", *flags, "--out", str(killed)]) == 0
    assert _tree_bytes(killed) == clean_files
