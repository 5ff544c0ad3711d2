"""Step (d) of the GPU check: a short `revision train pretrain` smoke run on the GPU, reporting samples/s.

A tiny random Llama (train.tiny) on the prototype captioning task with 1280-d fp16 rows; the trainer
runs its forward under bf16 autocast on CUDA with SDPA attention. Two runs: one visual token per row,
and the reference's 576-token compat mode (--visual-tokens 576). Each run is a subprocess of the CLI,
so the figure includes nothing the command itself does not.

    python -P bench/gpu_train.py --work /tmp/revision-gpu-check/train --output train.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from revision.bench.harness import write_results


def run(work: Path, visual_tokens: int, steps: int, batch: int) -> dict[str, Any]:
    out = work / f"run-{visual_tokens}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-P", "-m", "revision", "train", "pretrain", "--data", str(work / "task" / "ann.jsonl"),
           "--features", str(work / "task" / "view"), "--llm", str(work / "llm"), "--out", str(out), "--train-llm",
           "--max-steps", str(steps), "--batch-size", str(batch), "--visual-tokens", str(visual_tokens),
           "--save-every", str(10 * steps), "--log-every", "1", "--json"]  # fmt: skip
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        print(res.stdout + res.stderr)
        raise SystemExit(f"gpu_train: revision train exited {res.returncode} (--visual-tokens {visual_tokens})")
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [m["samples_per_s"] for m in lines if "samples_per_s" in m]
    # The first steps pay for CUDA kernels' first launches and autotuning: the second half counts.
    steady = rates[len(rates) // 2 :] or rates
    return {
        "visual_tokens": visual_tokens,
        "steps": steps,
        "batch_size": batch,
        "seconds": seconds,
        "samples_per_s": statistics.median(steady) if steady else None,
        "final_loss": next((m["loss"] for m in reversed(lines) if "loss" in m), None),
        "command": " ".join(cmd[2:]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (emptied first)")
    ap.add_argument("--output", type=Path, required=True, help="JSON path")
    ap.add_argument("--rows", type=int, default=2048, help="feature rows (default 2048)")
    ap.add_argument("--dim", type=int, default=1280, help="row width (default 1280)")
    ap.add_argument("--hidden", type=int, default=512, help="the tiny LLM's width (default 512)")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps a run (default 20)")
    ap.add_argument("--batch-size", type=int, default=32, help="samples a step (default 32)")
    args = ap.parse_args(argv)
    from revision.train.model import choose_attention
    from revision.train.tiny import PROTOTYPE_PHRASES, build_prototype_task, build_tiny_llm

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    build_tiny_llm(args.work / "llm", [*PROTOTYPE_PHRASES], hidden=args.hidden, layers=4, heads=8)
    build_prototype_task(args.work / "task", n=args.rows, dim=args.dim, dtype="float16")
    cuda = torch.cuda.is_available()
    doc: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "bf16_autocast": cuda and torch.cuda.is_bf16_supported(),
        "attention": choose_attention(),
        "llm": {"hidden": args.hidden, "layers": 4, "heads": 8},
        "rows": args.rows,
        "dim": args.dim,
        "runs": [],
    }
    for tokens in (1, 576):
        doc["runs"].append(run(args.work, tokens, args.steps, args.batch_size))
        doc["headline"] = {f"samples_per_s_{r['visual_tokens']}_tokens": r["samples_per_s"] for r in doc["runs"]}
        doc["headline"].update(bf16=doc["bf16_autocast"], attention=doc["attention"])
        write_results("gpu_train", doc, args.output)
    print(f"gpu_train: {doc['headline']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
