"""A tiny random-weight CLIP (model, tokenizer, image processor) built offline, for tests and demos.

Nothing is downloaded: the tokenizer is a byte-level BPE whose vocabulary is the 256 byte symbols
(plus end-of-word forms and a few merges), written as vocab.json + merges.txt; the weights come
from a seeded random init. The folder loads with AutoModel / AutoTokenizer / AutoImageProcessor and
`local_files_only=True`, exactly like a downloaded checkpoint.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any


def _byte_symbols() -> list[str]:
    # GPT-2/CLIP's printable stand-ins for the 256 byte values (so BPE works on bytes, not on text).
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    by_byte = dict(zip(printable, codes, strict=True))
    return [chr(by_byte[b]) for b in range(256)]


def _tokenizer_parts() -> tuple[dict[str, int], list[str]]:
    symbols = _byte_symbols()
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges = ["t h", "th e</w>", "a n", "an d</w>", "o f</w>", "i n", "c a", "ca t</w>", "d o", "do g</w>"]
    for m in merges:
        vocab_list.append(m.replace(" ", ""))
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def _make_tokenizer(out: Path, max_len: int) -> Any:
    from transformers import CLIPTokenizer

    vocab, merges = _tokenizer_parts()
    # transformers 5 builds CLIPTokenizer from in-memory vocab/merges; 4.x reads the two files.
    if "vocab" in inspect.signature(CLIPTokenizer.__init__).parameters:
        pairs: Any = [tuple(m.split(" ")) for m in merges]
        return CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=max_len)
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(
        vocab_file=str(out / "vocab.json"), merges_file=str(out / "merges.txt"), model_max_length=max_len
    )


def build_tiny_clip(
    out: str | Path,
    *,
    seed: int = 0,
    hidden: int = 32,
    projection_dim: int = 16,
    image_size: int = 32,
    patch_size: int = 8,
    layers: int = 2,
    max_text_len: int = 32,
) -> Path:
    """Write a tiny random-init CLIP checkpoint to `out` (created) and return the folder.

    Same `seed` → same weights, so tests can compare runs. Embeddings are `projection_dim`-d.
    """
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _make_tokenizer(path, max_text_len)
    tokenizer.save_pretrained(path)
    common = {
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
    }
    text_cfg = {
        **common,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": max_text_len,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_cfg = {**common, "image_size": image_size, "patch_size": patch_size}
    config = CLIPConfig(text_config=text_cfg, vision_config=vision_cfg, projection_dim=projection_dim)
    from revision.embed.encoders import quiet_transformers

    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    with quiet_transformers():
        model.save_pretrained(path)
    processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor.save_pretrained(path)
    return path


_WORDS = ("the", "cat", "dog", "and", "of", "a", "photo", "red", "small", "on", "grass", "sits", "runs")


def write_tiny_dataset(
    root: str | Path,
    *,
    n_images: int = 12,
    n_texts: int = 16,
    seed: int = 0,
    broken: bool = True,
) -> Path:
    """Write small PNGs and a seed-layout dataset.json under `root`; returns the json path.

    Images live in root/images (some in a subfolder), with random sizes so the processor resizes
    and crops. With `broken`, one corrupt image, one missing path and one empty text are added,
    each in the middle of its list so failures are interleaved with good items.
    """
    import numpy as np
    from PIL import Image

    base = Path(root)
    (base / "images" / "sub").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images: list[dict[str, str]] = []
    for i in range(n_images):
        rel = f"sub/{i:05d}.png" if i % 3 == 0 else f"{i:05d}.png"
        h, w = (int(x) for x in rng.integers(8, 48, size=2))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(base / "images" / rel)
        images.append({"id": f"img_{i:05d}", "image": rel})
    texts: list[dict[str, str]] = []
    for i in range(n_texts):
        n_words = int(rng.integers(1, 20))
        texts.append({"id": f"txt_{i:05d}", "text": " ".join(rng.choice(_WORDS, size=n_words))})
    if broken:
        (base / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
        images.insert(len(images) // 2, {"id": "img_corrupt", "image": "corrupt.png"})
        images.insert(len(images) // 3, {"id": "img_missing", "image": "sub/missing.png"})
        texts.insert(len(texts) // 2, {"id": "txt_empty", "text": "   "})
    path = base / "dataset.json"
    path.write_text(json.dumps({"images": images, "texts": texts}, indent=1))
    return path


def build_tiny_siglip(out: str | Path, *, seed: int = 0, hidden: int = 32, image_size: int = 32) -> Path:
    """A tiny random-init SigLIP (with the tiny byte-level tokenizer) in `out`: a second dual-encoder
    family whose text tower expects max_length padding and whose features are output objects."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    from revision.embed.encoders import quiet_transformers

    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    max_len = 16
    tokenizer = _make_tokenizer(path, max_len)
    tokenizer.save_pretrained(path)
    common = {"hidden_size": hidden, "intermediate_size": hidden * 2, "num_hidden_layers": 2, "num_attention_heads": 2}
    text_cfg = {**common, "vocab_size": len(tokenizer), "max_position_embeddings": max_len}
    text_cfg |= {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    text_cfg["bos_token_id"] = tokenizer.bos_token_id
    vision_cfg = {**common, "image_size": image_size, "patch_size": 8}
    torch.manual_seed(seed)
    model = SiglipModel(SiglipConfig(text_config=text_cfg, vision_config=vision_cfg)).eval()
    with quiet_transformers():
        model.save_pretrained(path)
    SiglipImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(path)
    return path
