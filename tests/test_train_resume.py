"""SIGKILL a training run, re-run the same command: the final weights equal an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from revision.train.tiny import PROTOTYPE_PHRASES, build_prototype_task, build_tiny_llm

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "REVISION_NO_PROGRESS": "1", "PYTHONHASHSEED": "0"}


def command(tmp: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "revision", "train", "pretrain",
        "--data", str(tmp / "task" / "ann.jsonl"), "--features", str(tmp / "task" / "view"),
        "--llm", str(tmp / "llm"), "--out", str(out), "--train-llm", "--epochs", "2",
        "--batch-size", "8", "--save-every", "4", "--grad-accum", "2", *extra,
    ]  # fmt: skip


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {f"projector.{k}": v for k, v in torch.load(run / "projector.pt")["state"].items()}
    out.update({f"llm.{k}": v for k, v in load_file(run / "llm" / "model.safetensors").items()})
    return out


def test_sigkill_resume_equals_uninterrupted(tmp_path: Path) -> None:
    build_tiny_llm(tmp_path / "llm", [*PROTOTYPE_PHRASES], hidden=32, layers=1, heads=2)
    build_prototype_task(tmp_path / "task", n=160)
    subprocess.run(command(tmp_path, tmp_path / "clean"), check=True, env=ENV, capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen(command(tmp_path, run), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # Kill after the second checkpoint, mid-way between checkpoints.
    while time.monotonic() < deadline and proc.poll() is None:
        metrics = run / "metrics.jsonl"
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 10:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "projector.pt").exists()
    step = torch.load(run / "checkpoint.pt", weights_only=False)["step"]
    assert 4 <= step < 20

    resumed = subprocess.run(command(tmp_path, run), env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"from step {step}" in resumed.stderr
    a, b = weights(tmp_path / "clean"), weights(run)
    assert a.keys() == b.keys()
    diff = {k: float((a[k] - b[k]).abs().max()) for k in a if not torch.equal(a[k], b[k])}
    assert not diff, f"weights differ after resume: {sorted(diff.items(), key=lambda kv: -kv[1])[:5]}"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))
    clean_loss = [json.loads(x)["loss"] for x in (tmp_path / "clean" / "metrics.jsonl").read_text().splitlines()]
    assert [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()] == clean_loss

    # A finished run re-run is left as it is; changed settings are refused.
    again = subprocess.run(command(tmp_path, run), env=ENV, capture_output=True, text=True)
    assert again.returncode == 0 and "from step" not in again.stderr
    other = subprocess.run(command(tmp_path, run, "--lr", "0.01"), env=ENV, capture_output=True, text=True)
    assert other.returncode == 2
    assert "holds a run with other settings (lr differ)" in other.stderr


def test_checkpoint_is_atomic(tmp_path: Path) -> None:
    """The checkpoint writer never leaves a torn file under the final name."""
    from revision.train.checkpoint import atomic_torch_save

    path = tmp_path / "c.pt"
    atomic_torch_save({"x": torch.arange(10)}, path)
    assert torch.equal(torch.load(path)["x"], torch.arange(10))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
