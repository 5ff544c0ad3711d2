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
