"""The step engines: plain torch (CPU or one GPU) and DeepSpeed ZeRO-2/3, behind one interface.

Both run the same step: forward under bf16 autocast on CUDA, loss / grad_accum, backward, and on every
grad_accum-th micro-batch clip, AdamW step, schedule step, zero grads. DeepSpeed takes the same torch
optimizer and scheduler as client objects and the flags' values for the "auto" fields of its config,
so the reference's zero2.json / zero3.json work unchanged.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import torch

from revision.train.errors import DataError


def cosine_schedule(optimizer: torch.optim.Optimizer, total: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over `warmup` steps, then cosine decay to 0 at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class TorchEngine:
    """The plain loop's step."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, optimizer: Any, scheduler: Any, *, accum: int, clip: float) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.accum, self.clip = accum, clip
        self.device = next(model.parameters()).device
        self.params = [p for p in model.parameters() if p.requires_grad]

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        with _autocast(self.device):
            out = self.model(
                batch["embeds"].to(self.device),
                batch["input_ids"].to(self.device),
                batch["attention_mask"].to(self.device),
                batch["labels"].to(self.device),
            )
        return out.loss  # type: ignore[no-any-return]

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accum).backward()

    def step(self) -> float:
        """Optimizer step at the end of an accumulation group; returns the gradient norm."""
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip if self.clip > 0 else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any], run: Path) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def save_extra(self, run: Path, step: int) -> dict[str, Any]:
        return {}


def _resolve_auto(cfg: Any, values: dict[str, Any], path: str = "") -> Any:
    if isinstance(cfg, dict):
        return {k: _resolve_auto(v, values, f"{path}.{k}" if path else k) for k, v in cfg.items()}
    if cfg == "auto":
        if path not in values:
            raise DataError(f"--deepspeed: no value known for the 'auto' field {path}")
        return values[path]
    return cfg


def deepspeed_config(path: Path, *, micro_batch: int, accum: int, clip: float, hidden: int) -> dict[str, Any]:
    """The JSON config with its "auto" fields filled from the run's flags (as the HF Trainer does)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"--deepspeed {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise DataError(f"--deepspeed {path}: not a JSON object")
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    values = {
        "fp16.enabled": False,
        "bf16.enabled": bf16,
        "train_micro_batch_size_per_gpu": micro_batch,
        "train_batch_size": micro_batch * accum * int(os.environ.get("WORLD_SIZE", "1")),
        "gradient_accumulation_steps": accum,
        "gradient_clipping": clip,
        "zero_optimization.reduce_bucket_size": hidden * hidden,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden,
    }
    cfg = _resolve_auto(raw, values)
    for key in ("optimizer", "scheduler"):
        # The run's own AdamW and cosine schedule are handed in, so both engines step the same way.
        cfg.pop(key, None)
    cfg["gradient_accumulation_steps"] = accum
    cfg["train_micro_batch_size_per_gpu"] = micro_batch
    cfg["train_batch_size"] = values["train_batch_size"]
    cfg["gradient_clipping"] = clip
    cfg["zero_allow_untested_optimizer"] = True
    cfg.setdefault("steps_per_print", 1 << 30)
    return cfg


def _single_process_env() -> None:
    """A lone `revision train --deepspeed` (no launcher) is rank 0 of a world of one."""
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)


class DeepSpeedEngine(TorchEngine):
    """The same step run by a DeepSpeed engine (ZeRO partitions the optimizer state and gradients)."""

    name = "deepspeed"

    def __init__(
        self, model: torch.nn.Module, optimizer: Any, scheduler: Any, *, accum: int, clip: float, config: dict[str, Any]
    ) -> None:
        import deepspeed

        _single_process_env()
        deepspeed.init_distributed(dist_backend=None, verbose=False)
        params = [p for p in model.parameters() if p.requires_grad]
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, model_parameters=params, config=config
        )
        super().__init__(model, optimizer, scheduler, accum=accum, clip=clip)
        self.device = self.engine.device

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        dev = self.engine.device
        out = self.engine(
            batch["embeds"].to(dev),
            batch["input_ids"].to(dev),
            batch["attention_mask"].to(dev),
            batch["labels"].to(dev),
        )
        return out.loss  # type: ignore[no-any-return]

    def backward(self, loss: torch.Tensor) -> None:
        # The engine divides by gradient_accumulation_steps itself.
        self.engine.backward(loss)
        self.engine.step()

    def step(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def state_dict(self) -> dict[str, Any]:
        return {}

    def save_extra(self, run: Path, step: int) -> dict[str, Any]:
        """DeepSpeed writes its (partitioned) states itself; checkpoint.pt then points at the tag."""
        root = run / "deepspeed"
        tag = f"step-{step}"
        self.engine.save_checkpoint(str(root), tag=tag, save_latest=False)
        return {"deepspeed_tag": tag}

    def load_state_dict(self, state: dict[str, Any], run: Path) -> None:
        tag = state.get("deepspeed_tag")
        if tag is None:
            raise DataError(f"--out {run}: the checkpoint was not written by a --deepspeed run")
        self.engine.load_checkpoint(str(run / "deepspeed"), tag=tag)

    @staticmethod
    def prune(run: Path, keep: str) -> None:
        """Remove DeepSpeed tags older than the one checkpoint.pt now names."""
        root = run / "deepspeed"
        if root.is_dir():
            for d in root.iterdir():
                if d.is_dir() and d.name != keep:
                    shutil.rmtree(d, ignore_errors=True)
