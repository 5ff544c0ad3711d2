"""--deepspeed: the same step under DeepSpeed ZeRO-2 on the CPU gives the plain loop's loss curve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from revision.cli import main
from revision.train.engine import deepspeed_config
from revision.train.errors import DataError
from revision.train.tiny import PROTOTYPE_PHRASES, build_prototype_task, build_tiny_llm

# The reference's (LLaVA's) zero2.json, unchanged: the "auto" fields are filled from the flags.
ZERO2 = {
    "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
             "hysteresis": 2, "min_loss_scale": 1},
    "bf16": {"enabled": "auto"},
    "train_micro_batch_size_per_gpu": "auto",
    "train_batch_size": "auto",
    "gradient_accumulation_steps": "auto",
    "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True, "sub_group_size": 1e9,
                          "reduce_bucket_size": "auto"},
}  # fmt: skip


def test_auto_fields_filled(tmp_path: Path) -> None:
    path = tmp_path / "zero2.json"
    path.write_text(json.dumps(ZERO2))
    cfg = deepspeed_config(path, micro_batch=8, accum=2, clip=1.0, hidden=32)
    assert cfg["train_micro_batch_size_per_gpu"] == 8 and cfg["gradient_accumulation_steps"] == 2
    assert cfg["train_batch_size"] == 16 and cfg["gradient_clipping"] == 1.0
    assert cfg["fp16"]["enabled"] is False and cfg["zero_optimization"]["reduce_bucket_size"] == 32 * 32
    path.write_text(json.dumps({"zero_optimization": {"stage": 2, "mystery": "auto"}}))
    with pytest.raises(DataError, match="'auto' field zero_optimization.mystery"):
        deepspeed_config(path, micro_batch=8, accum=2, clip=1.0, hidden=32)
    path.write_text("{not json")
    with pytest.raises(DataError, match="--deepspeed"):
        deepspeed_config(path, micro_batch=8, accum=2, clip=1.0, hidden=32)


def test_zero2_cpu_loss_curve_matches_plain_loop(tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    build_tiny_llm(tmp_path / "llm", [*PROTOTYPE_PHRASES], hidden=32, layers=1, heads=2)
    build_prototype_task(tmp_path / "task", n=64)
    (tmp_path / "zero2.json").write_text(json.dumps(ZERO2))

    def argv(out: str, *extra: str) -> list[str]:
        return ["train", "pretrain", "--data", str(tmp_path / "task" / "ann.jsonl"),
                "--features", str(tmp_path / "task" / "view"), "--llm", str(tmp_path / "llm"),
                "--out", str(tmp_path / out), "--train-llm", "--max-steps", "6", "--batch-size", "8",
                "--grad-accum", "2", "--save-every", "3", "--json", *extra]  # fmt: skip

    assert main(argv("plain")) == 0
    # DeepSpeed in its own process: it initialises torch.distributed, which would outlive this test.
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "REVISION_NO_PROGRESS": "1"}
    ds = subprocess.run([sys.executable, "-m", "revision", *argv("ds", "--deepspeed", str(tmp_path / "zero2.json"))],
                        env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert ds.returncode == 0, ds.stderr[-3000:]
    doc = json.loads((tmp_path / "ds" / "run.json").read_text())
    assert doc["engine"] == "deepspeed"

    def curve(run: str) -> list[float]:
        return [json.loads(x)["loss"] for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    plain, zero2 = curve("plain"), curve("ds")
    assert len(plain) == len(zero2) == 6
    assert max(abs(a - b) for a, b in zip(plain, zero2, strict=True)) < 1e-4, (plain, zero2)
    assert plain[-1] < plain[0]  # it learns, so the curves are not trivially flat
    # The checkpoint points at DeepSpeed's own (partitioned) states; older tags are pruned.
    assert [p.name for p in (tmp_path / "ds" / "deepspeed").iterdir() if p.is_dir()] == ["step-6"]

    # ZeRO-3 partitions the parameters themselves: the saved weights are gathered whole first.
    zero3 = {**ZERO2, "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": "auto"}}
    (tmp_path / "zero3.json").write_text(json.dumps(zero3))
    z3 = subprocess.run([sys.executable, "-m", "revision", *argv("z3", "--deepspeed", str(tmp_path / "zero3.json"))],
                        env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert z3.returncode == 0, z3.stderr[-3000:]
    assert max(abs(a - b) for a, b in zip(plain, curve("z3"), strict=True)) < 1e-4
    import torch

    ours = torch.load(tmp_path / "plain" / "projector.pt")["state"]
    theirs = torch.load(tmp_path / "z3" / "projector.pt")["state"]
    for k, v in ours.items():
        assert theirs[k].shape == v.shape, k
        torch.testing.assert_close(theirs[k], v, rtol=1e-4, atol=1e-5)
