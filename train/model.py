"""The ReVision model: a projector from feature rows (dim D) into a causal LM's embedding space.

One projected vector fills K placeholder positions where the text had `<image>` (LLaVA style). The
reference repeats each sample's vector 576 times *before* the projector; here it is projected once
and expanded, which gives the same input at 1/K of the projector work (`project_repeated` is the
reference's way, kept for the equality test and the benchmark).

Any Hugging Face causal LM loads from a local directory (`AutoModelForCausalLM`, offline); the
attention implementation is chosen once: flash-attention 2 on CUDA when installed, SDPA otherwise.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from revision.train.errors import DataError

_log = logging.getLogger("revision.train")

IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_INDEX = -200
"""Placeholder id in input_ids where the visual tokens go (LLaVA's value; never a real token)."""
IGNORE_INDEX = -100
"""Label of positions that carry no loss (prompt, visual tokens, padding)."""
PROJECTORS = ("linear", "mlp2x_gelu", "mlpNx_gelu")


def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Sequential:
    """`linear`, or `mlp{N}x_gelu`: N linear layers with GELU between (mlp2x_gelu is the reference's)."""
    if kind == "linear":
        return nn.Sequential(nn.Linear(in_dim, out_dim))
    m = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if not m or int(m.group(1)) < 1:
        raise DataError(f"--projector: {kind!r} is not 'linear' or 'mlpNx_gelu' (e.g. mlp2x_gelu)")
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(int(m.group(1)) - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


def choose_attention() -> str:
    """flash_attention_2 where it can run (CUDA + flash_attn installed), else PyTorch's SDPA."""
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_llm(path: str | Path, *, attention: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) from a local Hugging Face directory, offline; bad directories raise DataError."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its per-load bars would bury our one-line messages

    p = Path(path)
    if not (p / "config.json").is_file():
        raise DataError(f"--llm {p}: not a Hugging Face model directory (no config.json)")
    try:
        config = AutoConfig.from_pretrained(p, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"--llm {p}: unreadable config.json: {str(exc).splitlines()[0]}") from exc
    archs = getattr(config, "architectures", None) or []
    kind = getattr(config, "model_type", "?")
    if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs):
        # e.g. a bare BertModel: AutoModelForCausalLM would load it with a randomly initialised head.
        raise DataError(f"--llm {p}: model type {kind!r} ({', '.join(archs)}) is not a causal LM")
    attn = attention or choose_attention()
    try:
        model = AutoModelForCausalLM.from_pretrained(p, local_files_only=True, attn_implementation=attn)
    except ValueError as exc:
        raise DataError(f"--llm {p}: model type {kind!r} is not a causal LM ({str(exc).splitlines()[0]})") from exc
    except OSError as exc:
        raise DataError(f"--llm {p}: cannot load the weights: {str(exc).splitlines()[0]}") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(p, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DataError(f"--llm {p}: cannot load the tokenizer: {str(exc).splitlines()[0]}") from exc
    if tokenizer.pad_token_id is None:
        # Padding positions are masked out of attention and loss, so any id will do.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    _log.info("attention implementation: %s", attn)
    return model, tokenizer


def splice(
    tok_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None,
    visual: torch.Tensor,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Replace the one IMAGE_TOKEN_INDEX of each row by K visual embeddings.

    tok_embeds: (B, L, H) embeddings of input_ids (the placeholder's own row is ignored);
    input_ids, attention_mask, labels: (B, L); visual: (B, H), one vector expanded to the K positions,
    or (B, K, H). Returns (B, L + K - 1, H) embeddings, mask and labels (IGNORE_INDEX on the visual).
    """
    b, seq, h = tok_embeds.shape
    is_img = input_ids == IMAGE_TOKEN_INDEX
    counts = is_img.sum(1)
    if bool((counts != 1).any()):
        row = int(torch.nonzero(counts != 1)[0, 0])
        raise ValueError(f"row {row} of the batch has {int(counts[row])} image placeholders, expected 1")
    pos = is_img.to(torch.int64).argmax(1, keepdim=True)  # (B, 1)
    j = torch.arange(seq + k - 1, device=input_ids.device).unsqueeze(0)  # (1, T)
    in_vis = (j >= pos) & (j < pos + k)  # (B, T)
    src = torch.where(j < pos, j, j - k + 1).clamp(0, seq - 1)  # token each text position copies
    out = tok_embeds.gather(1, src.unsqueeze(-1).expand(-1, -1, h))
    if visual.dim() == 2:
        vis = visual.unsqueeze(1).expand(b, j.shape[1], h)
    else:
        vis_idx = (j - pos).clamp(0, k - 1)
        vis = visual.gather(1, vis_idx.unsqueeze(-1).expand(-1, -1, h))
    embeds = torch.where(in_vis.unsqueeze(-1), vis.to(out.dtype), out)
    mask = torch.where(in_vis, torch.ones_like(src), attention_mask.gather(1, src))
    new_labels = None
    if labels is not None:
        new_labels = torch.where(in_vis, torch.full_like(src, IGNORE_INDEX), labels.gather(1, src))
    return embeds, mask, new_labels


class VisionLM(nn.Module):
    """Projector + causal LM. forward(embeds (B, D), input_ids, attention_mask, labels) → HF output."""

    def __init__(self, llm: Any, projector: nn.Module, *, visual_tokens: int = 1) -> None:
        super().__init__()
        if visual_tokens < 1:
            raise DataError(f"--visual-tokens must be >= 1, got {visual_tokens}")
        self.llm = llm
        self.projector = projector
        self.visual_tokens = visual_tokens

    @property
    def in_dim(self) -> int:
        first = next(m for m in self.projector.modules() if isinstance(m, nn.Linear))
        return int(first.in_features)

    def project(self, embeds: torch.Tensor) -> torch.Tensor:
        """(B, D) rows → (B, H): projected once, whatever K is."""
        w = next(self.projector.parameters())
        return self.projector(embeds.to(device=w.device, dtype=w.dtype))

    def project_repeated(self, embeds: torch.Tensor) -> torch.Tensor:
        """The reference's way: each row repeated K times, then projected → (B, K, H)."""
        rep = embeds.unsqueeze(1).expand(-1, self.visual_tokens, -1)
        w = next(self.projector.parameters())
        return self.projector(rep.to(device=w.device, dtype=w.dtype))

    def inputs(
        self,
        embeds: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        repeat_first: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The LM's (inputs_embeds, attention_mask, labels) with the visual tokens spliced in."""
        visual = self.project_repeated(embeds) if repeat_first else self.project(embeds)
        tok = self.llm.get_input_embeddings()(input_ids.clamp_min(0))
        return splice(tok, input_ids, attention_mask, labels, visual, self.visual_tokens)

    def forward(
        self,
        embeds: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        repeat_first: bool = False,
    ) -> Any:
        x, mask, lab = self.inputs(embeds, input_ids, attention_mask, labels, repeat_first=repeat_first)
        return self.llm(inputs_embeds=x, attention_mask=mask, labels=lab, use_cache=False)
