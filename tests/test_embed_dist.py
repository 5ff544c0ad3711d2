"""`revision embed` under two gloo ranks on the CPU: the parts, in rank order, equal a one-process run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from revision.cli import main
from revision.embed.tiny import build_tiny_clip, write_tiny_dataset
from revision.store import FeatureStore

ARGS = ["--batch-size", "2", "--group-batches", "2", "--commit-seconds", "0", "--workers", "0", "--no-progress"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    model = build_tiny_clip(tmp_path / "model", seed=3)
    data = write_tiny_dataset(tmp_path / "data", n_images=9, n_texts=13, seed=4)
    base = ["embed", "--data", str(data), "--image-root", str(data.parent / "images"), "--out"]
    single = tmp_path / "single"
    assert main([*base, str(single), "--model", str(model), *ARGS]) == 0

    out = tmp_path / "dist"
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
        env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        cmd = [sys.executable, "-m", "revision", *base, str(out), "--model", str(model), *ARGS]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]

    assert not (out / "image.zarr").exists()
    for modality in ("image", "text"):
        parts = [FeatureStore.open(out / f"{modality}.part{r:03d}-of-002.zarr") for r in range(2)]
        whole = FeatureStore.open(single / f"{modality}.zarr")
        assert all(p.rows > 0 for p in parts), "each rank must get a share"
        starts = [p.attrs["embed"]["item_start"] for p in parts]
        assert starts[0] == 0 and starts[1] % 4 == 0, f"slices must be group-aligned: {starts}"
        got = np.concatenate([p.read() for p in parts])
        # Same batches as the one-process run, so the same bits, not merely close values.
        assert got.tobytes() == whole.read().tobytes(), f"{modality}: max diff {np.abs(got - whole.read()).max()}"
        assert list(np.concatenate([p.read_ids() for p in parts])) == list(whole.read_ids())
    assert (out / "failures.jsonl").read_bytes() == (single / "failures.jsonl").read_bytes()
