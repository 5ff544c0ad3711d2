"""Benchmark `revision embed`: items/s for images and texts vs a naive one-item-at-a-time loop.

Both sides load the same model, read the same files and produce unit rows; the naive loop opens,
preprocesses and encodes one item per forward pass in the main process (what a first script does),
the pipeline batches, decodes in DataLoader workers, sorts texts by length and writes a store.

    python -m revision.bench.bench_embed --images 64 --texts 128            # smoke size
    python -m revision.bench.bench_embed --images 20000 --texts 50000 --batch-size 256 --workers 8
    python -m revision.bench.bench_embed --model ./models/clip-vit-base-patch32 --device cuda ...
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from revision.bench.harness import peak_rss_mb, print_table, time_it, write_results
from revision.embed.config import EmbedConfig
from revision.embed.encoders import features_of, quiet_transformers
from revision.embed.runner import run_embed
from revision.embed.tiny import build_tiny_clip, write_tiny_dataset


def naive_loop(model_dir: Path, data: Path, image_root: Path, modality: str, device: str) -> np.ndarray:
    """The baseline: one item per forward pass, everything in the main process."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    with quiet_transformers():
        model = AutoModel.from_pretrained(model_dir, local_files_only=True).to(device).eval()
    doc = json.loads(data.read_text())
    rows: list[torch.Tensor] = []
    with torch.inference_mode():
        if modality == "image":
            proc = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
            for item in doc["images"]:
                image = Image.open(image_root / item["image"]).convert("RGB")
                px = proc(images=[image], return_tensors="pt")["pixel_values"].to(device)
                rows.append(features_of(model.get_image_features(pixel_values=px), "image")[0].float().cpu())
        else:
            tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            for item in doc["texts"]:
                enc = tok([item["text"]], truncation=True, return_tensors="pt").to(device)
                rows.append(features_of(model.get_text_features(**enc), "text")[0].float().cpu())
    mat = torch.stack(rows)
    return (mat / mat.norm(dim=1, keepdim=True)).numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64, help="number of images (default: 64)")
    ap.add_argument("--texts", type=int, default=128, help="number of texts (default: 128)")
    ap.add_argument("--image-size", type=int, default=64, help="tiny model input size in pixels (default: 64)")
    ap.add_argument("--model", type=Path, help="local dual encoder (default: a tiny random CLIP built here)")
    ap.add_argument("--batch-size", type=int, default=64, help="pipeline batch size (default: 64)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: CPUs - 1)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="default: cpu")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (default: 3)")
    ap.add_argument("--out", type=Path, help="results JSON (default: bench/results/embed.json)")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    try:
        model = args.model or build_tiny_clip(tmp / "model", image_size=args.image_size, hidden=64, layers=2)
        data = write_tiny_dataset(tmp / "data", n_images=args.images, n_texts=args.texts, broken=False)
        image_root = data.parent / "images"
        results: list[dict[str, Any]] = []
        for modality, n in (("image", args.images), ("text", args.texts)):
            counter = {"k": 0}

            def pipeline(modality: str = modality, counter: dict[str, int] = counter) -> None:
                counter["k"] += 1
                cfg = EmbedConfig(
                    data=data,
                    out=tmp / f"out-{modality}-{counter['k']}",
                    image_root=image_root,
                    model=str(model),
                    modality=modality,
                    batch_size=args.batch_size,
                    workers=args.workers,
                    device=args.device,
                    progress=False,
                )
                run_embed(cfg)

            def naive(modality: str = modality) -> None:
                naive_loop(model, data, image_root, modality, args.device)

            t_pipe = time_it(pipeline, warmup=1, repeats=args.repeats)
            t_naive = time_it(naive, warmup=1, repeats=args.repeats)
            results.append(
                {
                    "modality": modality,
                    "items": n,
                    "pipeline_items_s": n / t_pipe.median,
                    "naive_items_s": n / t_naive.median,
                    "speedup": t_naive.median / t_pipe.median,
                    "pipeline_spread": t_pipe.spread,
                    "naive_spread": t_naive.spread,
                }
            )
        cols = ["modality", "items", "pipeline_items_s", "naive_items_s", "speedup", "pipeline_spread"]
        print_table(results, cols)
        rss = peak_rss_mb()
        print(f"peak RSS {rss:,.0f} MiB")
        payload = {
            "params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "results": results,
            "peak_rss_mb": rss,
        }
        path = write_results("embed", payload, args.out)
        print(f"wrote {path}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
