"""What a finished run directory holds, and how a caption run (or a fine-tune) reads it back.

RUN/run.json       the resolved config, "done" once the final weights are in place
RUN/projector.pt   the projector alone (kind, in/out dims, K, weights): small, the pretrain result
RUN/llm/           the trained LLM and its tokenizer (save_pretrained), only when the LLM trained
RUN/checkpoint.pt  the last checkpoint (resume state)
RUN/metrics.jsonl  one JSON line per optimizer step
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from revision.train.checkpoint import atomic_dir, atomic_torch_save
from revision.train.config import TrainConfig
from revision.train.errors import DataError
from revision.train.model import VisionLM, build_projector, load_llm

RUN_JSON = "run.json"
PROJECTOR = "projector.pt"
LLM_DIR = "llm"


def _gathered(model: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
    """ZeRO-3 partitions parameters across ranks (`ds_id` marks them): gather them whole to save."""
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)  # type: ignore[no-any-return]


def save_outputs(cfg: TrainConfig, model: VisionLM, tokenizer: Any, *, merge_lora: bool) -> None:
    """The final weights: the projector always, the LLM folder when it trained."""
    with _gathered(model):
        _save_outputs(cfg, model, tokenizer, merge_lora=merge_lora)


def _save_outputs(cfg: TrainConfig, model: VisionLM, tokenizer: Any, *, merge_lora: bool) -> None:
    first = next(m for m in model.projector.modules() if isinstance(m, torch.nn.Linear))
    last = [m for m in model.projector.modules() if isinstance(m, torch.nn.Linear)][-1]
    doc = {
        "kind": cfg.projector,
        "in_dim": int(first.in_features),
        "out_dim": int(last.out_features),
        "visual_tokens": cfg.visual_tokens,
        "state": {k: v.detach().cpu() for k, v in model.projector.state_dict().items()},
    }
    atomic_torch_save(doc, cfg.out / PROJECTOR)
    if not cfg.trains_llm:
        return
    llm = model.llm.merge_and_unload() if merge_lora else model.llm

    def write(d: Path) -> None:
        llm.save_pretrained(d)
        tokenizer.save_pretrained(d)

    atomic_dir(cfg.out / LLM_DIR, write)


def load_projector(run: Path) -> dict[str, Any]:
    path = run / PROJECTOR
    if not path.is_file():
        raise DataError(f"{run}: no {PROJECTOR} (not a finished `revision train` run)")
    doc = torch.load(path, map_location="cpu", weights_only=True)
    return dict(doc)


def read_run(run: Path) -> dict[str, Any]:
    path = run / RUN_JSON
    if not path.is_file():
        raise DataError(f"--run {run}: no {RUN_JSON} (not a `revision train` run directory)")
    doc = json.loads(path.read_text())
    if not doc.get("done"):
        raise DataError(f"--run {run}: the run has not finished (re-run its `revision train` command)")
    return dict(doc)


def load_run(run: Path, *, device: torch.device | None = None) -> tuple[VisionLM, Any, dict[str, Any]]:
    """(model in eval mode, tokenizer, run.json) of a finished run."""
    doc = read_run(run)
    cfg = doc["config"]
    llm_dir = run / LLM_DIR if (run / LLM_DIR).is_dir() else Path(cfg["llm"])
    llm, tokenizer = load_llm(llm_dir)
    pre = load_projector(run)
    projector = build_projector(pre["kind"], pre["in_dim"], pre["out_dim"])
    projector.load_state_dict(pre["state"])
    model = VisionLM(llm, projector, visual_tokens=int(pre["visual_tokens"]))
    model.to(device or torch.device("cuda" if torch.cuda.is_available() else "cpu")).eval()
    return model, tokenizer, doc
