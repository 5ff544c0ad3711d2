"""Prompt templates: annotation record → (input_ids, labels), and the prompt a caption run starts from.

Two templates, the reference's two stages:

- "plain" (pretraining, LLaVA's): `[bos] <image> caption <eos>`; loss on the caption and eos. The
  caption is the record's `caption`, or the first assistant turn of its `conversations` (whose human
  turn must then hold the one `<image>`). LLaVA ends the caption with "\n"; eos here, so generation
  knows where a caption stops.
- "conversation" (fine-tuning): the tokenizer's chat template where it has one, rendered turn by turn
  so each assistant reply (and what the template closes it with) carries the loss and nothing else
  does. Without a chat template the fallback is `[bos]` then, per turn, `USER: {text}\n` or
  `ASSISTANT: {text}<eos>\n` (system turns: `{text}\n`); loss on each assistant `{text}<eos>`.

`<image>` is cut out of the rendered text and becomes IMAGE_TOKEN_INDEX, which the model replaces
by the K visual tokens; every record must hold exactly one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from revision.train.errors import DataError
from revision.train.model import IGNORE_INDEX, IMAGE_TOKEN, IMAGE_TOKEN_INDEX

TEMPLATES = ("plain", "conversation")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
DEFAULT_PROMPT = f"{IMAGE_TOKEN}\nDescribe the image briefly."


def _messages(rec: dict[str, Any], where: str) -> list[dict[str, str]]:
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise DataError(f"{where}: no 'conversations' list")
    out = []
    for t, turn in enumerate(conv):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise DataError(f"{where}: conversations[{t}] is not {{'from': ..., 'value': str}}")
        role = _ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            raise DataError(f"{where}: conversations[{t}]: unknown speaker {turn.get('from')!r}")
        out.append({"role": role, "content": turn["value"]})
    return out


def _check_one_image(texts: Sequence[str], where: str) -> None:
    n = sum(t.count(IMAGE_TOKEN) for t in texts)
    if n != 1:
        raise DataError(f"{where}: {n} '{IMAGE_TOKEN}' placeholders, expected exactly one")


class Template:
    """Encodes records for one stage. Picklable (it runs in DataLoader workers)."""

    def __init__(self, tokenizer: Any, kind: str, *, max_length: int = 2048) -> None:
        if kind not in TEMPLATES:
            raise DataError(f"template must be one of {TEMPLATES}, got {kind!r}")
        self.tokenizer = tokenizer
        self.kind = kind
        self.max_length = max_length
        self.chat = kind == "conversation" and bool(getattr(tokenizer, "chat_template", None))

    # -- pieces: (text, labelled) -----------------------------------------------------------------
    def _bos(self) -> list[tuple[str, bool]]:
        return [] if self.tokenizer.bos_token is None else [(self.tokenizer.bos_token, False)]

    def _render(self, msgs: list[dict[str, str]], gen: bool) -> str:
        if not msgs and not gen:
            return ""
        return str(self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen))

    def _chat_pieces(self, msgs: list[dict[str, str]], where: str) -> list[tuple[str, bool]]:
        pieces: list[tuple[str, bool]] = []
        done = ""
        for k, m in enumerate(msgs):
            if m["role"] == "assistant":
                head = self._render(msgs[:k], True)
                full = self._render(msgs[: k + 1], False)
                if not head.startswith(done) or not full.startswith(head):
                    raise DataError(f"{where}: the chat template does not render turn by turn (turn {k})")
                pieces += [(head[len(done) :], False), (full[len(head) :], True)]
            else:
                full = self._render(msgs[: k + 1], False)
                if not full.startswith(done):
                    raise DataError(f"{where}: the chat template does not render turn by turn (turn {k})")
                pieces.append((full[len(done) :], False))
            done = full
        return pieces

    def _fallback_pieces(self, msgs: list[dict[str, str]]) -> list[tuple[str, bool]]:
        eos = self.tokenizer.eos_token or ""
        pieces = self._bos()
        for m in msgs:
            if m["role"] == "assistant":
                pieces += [("ASSISTANT: ", False), (m["content"] + eos, True), ("\n", False)]
            elif m["role"] == "user":
                pieces.append((f"USER: {m['content']}\n", False))
            else:
                pieces.append((m["content"] + "\n", False))
        return pieces

    def pieces(self, rec: dict[str, Any], where: str) -> list[tuple[str, bool]]:
        """The record as (text, carries-loss) pieces, `<image>` still in the text. Checks the record."""
        if self.kind == "plain":
            caption = rec.get("caption")
            if rec.get("conversations") is not None:
                msgs = _messages(rec, where)
                _check_one_image([m["content"] for m in msgs if m["role"] == "user"], where)
                if caption is None:
                    caption = next((m["content"] for m in msgs if m["role"] == "assistant"), None)
            if not isinstance(caption, str):
                raise DataError(f"{where}: no caption (a 'caption' string or an assistant turn)")
            if IMAGE_TOKEN in caption:
                raise DataError(f"{where}: the caption holds '{IMAGE_TOKEN}'")
            return [*self._bos(), (IMAGE_TOKEN, False), (caption + (self.tokenizer.eos_token or ""), True)]
        msgs = _messages(rec, where)
        _check_one_image([m["content"] for m in msgs], where)
        if not any(m["role"] == "assistant" for m in msgs):
            raise DataError(f"{where}: no assistant turn to learn from")
        return self._chat_pieces(msgs, where) if self.chat else self._fallback_pieces(msgs)

    def _tokens(self, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        labels: list[int] = []
        for text, learn in pieces:
            for n, part in enumerate(text.split(IMAGE_TOKEN)):
                if n:
                    ids.append(IMAGE_TOKEN_INDEX)
                    labels.append(IGNORE_INDEX)
                if part:
                    toks = self.tokenizer(part, add_special_tokens=False)["input_ids"]
                    ids += toks
                    labels += toks if learn else [IGNORE_INDEX] * len(toks)
        return ids, labels

    def encode(self, rec: dict[str, Any], where: str = "record") -> tuple[list[int], list[int]]:
        """(input_ids, labels) of one record, cut to max_length (the placeholder is always kept)."""
        ids, labels = self._tokens(self.pieces(rec, where))
        if len(ids) > self.max_length:
            if IMAGE_TOKEN_INDEX not in ids[: self.max_length]:
                raise DataError(f"{where}: '{IMAGE_TOKEN}' lies past --max-length {self.max_length}")
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        return ids, labels

    def prompt_ids(self, prompt: str = DEFAULT_PROMPT) -> list[int]:
        """The tokens a caption run feeds before generating (plain: `[bos] <image>`)."""
        if self.kind == "plain":
            pieces = [*self._bos(), (IMAGE_TOKEN, False)]
        else:
            _check_one_image([prompt], "--prompt")
            msgs = [{"role": "user", "content": prompt}]
            if self.chat:
                pieces = [(self._render(msgs, True), False)]
            else:
                pieces = [*self._fallback_pieces(msgs), ("ASSISTANT: ", False)]
        return self._tokens(pieces)[0]

    def collate(self, encoded: Sequence[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        """Right-padded (B, L) input_ids, attention_mask, labels."""
        pad = int(self.tokenizer.pad_token_id)
        width = max(len(ids) for ids, _ in encoded)
        b = len(encoded)
        input_ids = torch.full((b, width), pad, dtype=torch.long)
        labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for i, (ids, lab) in enumerate(encoded):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(lab)] = torch.tensor(lab)
            mask[i, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
