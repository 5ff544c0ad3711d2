"""A tiny random-initialised Llama and a word-level tokenizer, built offline, for tests and benchmarks.

The tokenizer is a `tokenizers` WordLevel model over the words of the given phrases (whitespace
split, punctuation apart), wrapped as a PreTrainedTokenizerFast with <s>, </s>, <pad> and <unk>.
Both are written with save_pretrained, so the folder loads with AutoModelForCausalLM / AutoTokenizer
and `local_files_only=True`, exactly like a downloaded checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

SPECIAL = ("<pad>", "<s>", "</s>", "<unk>")


def build_tokenizer(phrases: Iterable[str], *, chat_template: str | None = None) -> object:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for p in phrases for w in re.findall(r"\w+|[^\w\s]", p)})
    vocab = {tok: i for i, tok in enumerate([*SPECIAL, *words])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    core.add_special_tokens(list(SPECIAL))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


def build_tiny_llm(
    out: str | Path,
    phrases: Iterable[str],
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    chat_template: str | None = None,
) -> Path:
    """Write a random Llama (hidden, layers, heads) and its tokenizer to `out`; returns the folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out)
    tok = build_tokenizer(phrases, chat_template=chat_template)
    cfg = LlamaConfig(
        vocab_size=len(tok),  # type: ignore[arg-type]
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,  # type: ignore[attr-defined]
        eos_token_id=tok.eos_token_id,  # type: ignore[attr-defined]
        pad_token_id=tok.pad_token_id,  # type: ignore[attr-defined]
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)  # type: ignore[attr-defined]
    return out


PROTOTYPE_PHRASES = ("a red cat sits", "a blue dog runs", "a green bird sings", "a small fish swims")


def prototype_rows(n: int, dim: int, *, seed: int, noise: float = 0.3, k: int = 4) -> tuple[object, object]:
    """(rows (n, dim) float32 unit vectors, labels (n,) in [0, k)): each row is a random one of k
    fixed prototype directions (from seed 1234, the same for every call) plus Gaussian noise."""
    import numpy as np

    protos = np.random.default_rng(1234).standard_normal((k, dim))
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    x = protos[labels] + noise * rng.standard_normal((n, dim)) / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def build_prototype_task(
    out: str | Path,
    *,
    n: int,
    dim: int = 32,
    seed: int = 0,
    prefix: str = "r",
    dtype: str = "float32",
    modality: str = "text",
) -> Path:
    """A learnable captioning task: OUT/store.zarr + OUT/view (memmap) of n rows near one of four
    prototype directions, and OUT/ann.jsonl whose caption for each id is its prototype's phrase
    (also as a one-turn LLaVA conversation). Returns OUT."""
    import json

    from revision.store import FeatureStore, StoreConfig
    from revision.store.memmap import export_memmap

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x, labels = prototype_rows(n, dim, seed=seed)
    ids = [f"{prefix}{i}" for i in range(n)]
    cfg = StoreConfig(modality=modality, dim=dim, dtype=dtype)
    with FeatureStore.create(out / "store.zarr", cfg) as s:
        s.append(x, ids)
        s.commit()
    with FeatureStore.open(out / "store.zarr") as s:
        export_memmap(s, out / "view", show_progress=False)
    with open(out / "ann.jsonl", "w") as fh:
        for i, lab in zip(ids, labels.tolist(), strict=True):  # type: ignore[attr-defined]
            phrase = PROTOTYPE_PHRASES[lab]
            conv = [
                {"from": "human", "value": "<image>\nDescribe the image briefly."},
                {"from": "gpt", "value": phrase},
            ]
            fh.write(json.dumps({"id": i, "caption": phrase, "conversations": conv}) + "\n")
    return out
