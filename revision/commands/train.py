"""`revision train pretrain|finetune`: flags → TrainConfig → `revision.train.loop.train`.

torch and transformers are imported inside `run`, so `revision --help` stays light.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from revision.errors import UserError

EPILOG = """examples:
  revision train pretrain --data captions.jsonl --features aligned_text.zarr --llm ./llm --out runs/pre
  revision train pretrain --data captions.jsonl --features text.mm --align-stats A.stats.json --llm ./llm --out runs/pre
  revision train finetune --data llava_instruct.json --features image.mm --llm ./llm \\
      --projector-from runs/pre --out runs/ft [--lora-rank 8] [--deepspeed zero2.json]

Re-running the same command resumes from RUN/checkpoint.pt; a finished run is left as it is."""

STAGE_HELP = {
    "pretrain": "plain template (<image> then the caption); trains the projector (and the LLM with --train-llm)",
    "finetune": "conversation template (the tokenizer's chat template, else USER:/ASSISTANT:); projector + LLM",
}


def _flags(p: argparse.ArgumentParser, stage: str) -> None:
    p.add_argument("--data", required=True, type=Path, help="LLaVA-style annotations (JSON array or JSON Lines)")
    p.add_argument("--features", required=True, type=Path, help="feature store (Zarr) or memmap view")
    p.add_argument("--llm", required=True, type=Path, help="local Hugging Face causal LM directory")
    p.add_argument("--out", required=True, type=Path, help="run directory (created; re-run to resume)")
    p.add_argument("--epochs", type=int, default=1 if stage == "finetune" else 3, help="passes over the data")
    p.add_argument("--max-steps", type=int, default=0, help="stop after N optimizer steps (default 0: all epochs)")
    p.add_argument("--batch-size", type=int, default=16, help="samples per micro-batch (default 16)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    lr = 1e-3 if stage == "pretrain" else 2e-4
    p.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr:g})")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    p.add_argument("--warmup-ratio", type=float, default=0.03, help="share of steps warming up (default 0.03)")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm, 0: off (default 1)")
    p.add_argument("--visual-tokens", type=int, default=1, help="K positions the vector fills (576 = reference)")
    p.add_argument("--projector", default="mlp2x_gelu", help="linear | mlpNx_gelu (default mlp2x_gelu)")
    p.add_argument("--seed", type=int, default=0, help="seed of init, shuffle and dropout (default 0)")
    p.add_argument("--train-llm", action="store_true", help="also train the LLM (pretrain; finetune always does)")
    if stage == "finetune":
        p.add_argument("--projector-from", type=Path, help="a pretrain run whose projector starts this one")
        p.add_argument("--lora-rank", type=int, default=0, help="LoRA adapters of this rank (needs peft); 0: full")
    p.add_argument("--deepspeed", type=Path, help="DeepSpeed JSON config (ZeRO-2/3); default: plain torch loop")
    p.add_argument("--align-stats", type=Path, help="apply these ReAlign stats to the rows at collate time")
    p.add_argument(
        "--feature-noise",
        type=float,
        default=0.0,
        help="std of Gaussian noise added to each feature coordinate while training (C3/CapDec; default 0: none)",
    )
    p.add_argument("--on-missing", choices=("error", "skip"), default="error", help="ids absent from --features")
    p.add_argument("--max-length", type=int, default=512, help="text tokens per sample at most (default 512)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations (less memory)")
    p.add_argument("--save-every", type=int, default=100, help="optimizer steps between checkpoints (default 100)")
    p.add_argument("--log-every", type=int, default=1, help="steps between metrics.jsonl lines (default 1)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--json", action="store_true", help="print the finished run.json")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "train",
        help="train a projector + causal LM on feature rows (ReVision)",
        description="Train on (aligned) feature rows: pretrain the projector, then fine-tune.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stages = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for stage, text in STAGE_HELP.items():
        s = stages.add_parser(
            stage, help=text, description=text, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        _flags(s, stage)
        s.set_defaults(func=run)


def _transform(path: Path) -> Any:
    """The collate-time ReAlign transform of a stats file (realign / realign-ot statistics)."""
    from revision.align.stats import load_stats
    from revision.train.transform import RealignTransform

    stats = load_stats(path)
    if stats.method not in ("realign", "realign-ot"):
        raise UserError(
            f"--align-stats {path}: method {stats.method!r}; the collate-time transform applies realign or "
            "realign-ot (write an aligned store with `revision apply` for the others)"
        )
    try:
        return RealignTransform.from_stats(stats)
    except (KeyError, ValueError) as exc:
        raise UserError(f"--align-stats {path}: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    from revision.train.config import TrainConfig
    from revision.train.loop import train

    cfg = TrainConfig(
        stage=args.stage,
        data=args.data,
        features=args.features,
        llm=args.llm,
        out=args.out,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        max_grad_norm=args.max_grad_norm,
        visual_tokens=args.visual_tokens,
        projector=args.projector,
        projector_from=getattr(args, "projector_from", None),
        train_llm=args.train_llm,
        lora_rank=getattr(args, "lora_rank", 0),
        seed=args.seed,
        save_every=args.save_every,
        on_missing=args.on_missing,
        max_length=args.max_length,
        gradient_checkpointing=args.gradient_checkpointing,
        deepspeed=args.deepspeed,
        align_stats=args.align_stats,
        feature_noise=args.feature_noise,
        num_workers=args.workers,
        log_every=args.log_every,
        progress=not args.json and not os.environ.get("REVISION_NO_PROGRESS"),
    )
    transform = _transform(args.align_stats) if args.align_stats else None
    doc = train(cfg, transform)
    print(json.dumps(doc) if args.json else f"trained {cfg.out} ({doc.get('steps', '?')} steps)")
    return 0
