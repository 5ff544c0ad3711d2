"""`revision embed`: images and texts of a dataset into feature stores with a dual encoder."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from revision.errors import UserError
from revision.paths import check_outputs

EPILOG = """\
examples:
  revision embed --data data/dataset.json --image-root data/images --out feats \\
      --model ./models/clip-vit-base-patch32
  revision embed --data llava_558k.json --image-root images --out feats --modality text --model ./siglip
  torchrun --nproc-per-node 8 -m revision embed --data big.jsonl --out feats --model ./clip

Writes OUT/image.zarr, OUT/text.zarr (rows L2-normalised) and OUT/failures.jsonl (unreadable or
missing images, empty texts: id and reason). Rerun the same command to resume an interrupted run.
Under torchrun each rank writes OUT/<modality>.partRRR-of-WWW.zarr.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "embed",
        help="embed images and texts with a dual encoder (CLIP, SigLIP, LLM2CLIP) into stores",
        description="Embed the images and texts of a dataset into feature stores, resumably.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, type=Path, help="dataset.json (seed layout), LLaVA JSON or JSON Lines")
    p.add_argument("--out", required=True, type=Path, help="output folder (created; resumed if it holds a run)")
    p.add_argument("--image-root", type=Path, help="folder image paths are relative to (default: folder of --data)")
    p.add_argument("--model", help="local dual-encoder checkpoint (or hub id with --online) for both modalities")
    p.add_argument("--image-model", help="checkpoint for images (overrides --model)")
    p.add_argument("--text-model", help="checkpoint for texts (overrides --model); the llm2vec LLM for LLM2CLIP")
    p.add_argument("--image-processor", help="load the image processor from here (default: the image model)")
    p.add_argument(
        "--encoder",
        choices=("auto", "hf", "llm2clip"),
        default="auto",
        help="hf: Auto classes' get_*_features; llm2clip: LLM2CLIP + llm2vec; auto: by the image model (default)",
    )
    p.add_argument("--modality", choices=("both", "text", "image"), default="both", help="default: both")
    p.add_argument(
        "--format", choices=("auto", "seed", "llava", "jsonl"), default="auto", help="layout of --data (default: auto)"
    )
    p.add_argument("--batch-size", type=int, default=256, help="items per forward pass (default: 256)")
    p.add_argument(
        "--group-batches",
        type=int,
        default=16,
        help="batches per group, the unit of commits and resuming; texts are length-sorted within a group "
        "(default: 16)",
    )
    p.add_argument(
        "--commit-seconds",
        type=float,
        default=30.0,
        help="commit at the first group end this many seconds after the last commit; 0: every group (default: 30)",
    )
    p.add_argument("--workers", type=int, help="DataLoader workers for decoding/tokenising (default: CPUs - 1, ≤ 8)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto (CUDA if present)")
    p.add_argument(
        "--dtype",
        choices=("auto", "bf16", "fp16", "fp32"),
        default="auto",
        help="compute precision (default: auto = bf16 autocast on CUDA, fp32 on CPU)",
    )
    p.add_argument(
        "--store-dtype",
        choices=("float16", "bfloat16", "float32"),
        default="float16",
        help="storage dtype of the vectors (default: float16)",
    )
    p.add_argument(
        "--codec", choices=("none", "blosc-lz4", "zstd"), default="none", help="chunk compressor (default: none)"
    )
    p.add_argument("--online", action="store_true", help="allow Hugging Face Hub access (default: local files only)")
    p.add_argument("--trust-remote-code", action="store_true", help="run model code shipped with the checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _check_paths(args: argparse.Namespace) -> None:
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out}: exists and is not a directory")
    modalities = ("image", "text") if args.modality == "both" else (args.modality,)
    # OUT may hold --data and lie inside the image folder; what is written into OUT may not be an input.
    check_outputs(
        [("--data", args.data)],
        [("--out", args.out / f"{m}.zarr", "dir") for m in modalities]
        + [("--out", args.out / "failures.jsonl", "file"), ("--out", args.out / ".failures", "dir")],
        roots=[("--image-root", args.image_root if args.image_root is not None else args.data.parent)],
    )


def run(args: argparse.Namespace) -> int:
    _check_paths(args)
    if not args.online:
        # Before transformers/huggingface_hub load: also stops hub calls made inside third-party code
        # (llm2vec) that does not pass local_files_only.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from revision.embed.config import EmbedConfig
    from revision.embed.runner import run_embed
    from revision.store import StoreError

    cfg = EmbedConfig(
        data=args.data,
        out=args.out,
        image_root=args.image_root,
        model=args.model,
        image_model=args.image_model,
        text_model=args.text_model,
        image_processor=args.image_processor,
        encoder=args.encoder,
        modality=args.modality,
        data_format=args.format,
        batch_size=args.batch_size,
        group_batches=args.group_batches,
        commit_seconds=args.commit_seconds,
        workers=args.workers,
        device=args.device,
        dtype=args.dtype,
        store_dtype=args.store_dtype,
        codec=args.codec,
        online=args.online,
        trust_remote_code=args.trust_remote_code,
        progress=not args.no_progress,
    )
    try:
        summary = run_embed(cfg)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    for modality, res in summary.results.items():
        print(f"{modality}: {res.rows:,} rows in {res.path} ({res.failed:,} of {res.items:,} items failed)")
    if summary.failures_path is not None:
        print(f"failures: {summary.failures_path}", file=sys.stdout)
    return 0
