"""`revision caption`: batched greedy decoding from feature rows, one JSON line {"id", "text"} per row.

Every row of a batch gets the same prompt, so the spliced inputs have one length and no padding; the
loop then feeds one token per step with the LM's key/value cache, and a row stops at eos. Output is
appended and flushed a batch at a time; a re-run skips the ids already written (a torn last line from
a killed run is dropped first), so an interrupted caption job resumes.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from revision.store import FeatureStore, StoreError
from revision.store.memmap import HEADER_NAME
from revision.train.errors import DataError
from revision.train.model import VisionLM
from revision.train.runfiles import load_projector, load_run, read_run
from revision.train.template import DEFAULT_PROMPT, Template
from revision.train.view import FeatureView


@dataclass(frozen=True, kw_only=True)
class CaptionConfig:
    run: Path
    """A finished `revision train` run (--run)."""
    features: Path
    """Store or memmap view of the rows to caption (--features)."""
    out: Path
    """JSON Lines output (--out)."""
    ids: Path | None = None
    """A file of ids, one a line, to caption instead of every row (--ids)."""
    prompt: str = DEFAULT_PROMPT
    """User prompt of conversation-template runs (--prompt); pretrain runs use `<image>` alone."""
    max_new_tokens: int = 32
    """Tokens generated per row at most (--max-new-tokens)."""
    batch_size: int = 64
    """Rows per generation batch (--batch-size)."""
    progress: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise DataError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise DataError(f"--batch-size must be >= 1, got {self.batch_size}")


@torch.no_grad()
def greedy(model: VisionLM, embeds: torch.Tensor, prompt: list[int], eos: int, max_new: int) -> list[list[int]]:
    """Greedy continuations (token ids, eos excluded) of `prompt` with each row of embeds (B, D)."""
    b = embeds.shape[0]
    dev = next(model.parameters()).device
    ids = torch.tensor([prompt] * b, device=dev)
    x, mask, _ = model.inputs(embeds.to(dev), ids, torch.ones_like(ids))
    # transformers 5 renamed past_key_values to cache (argument and output field); 4.x has the old name.
    params = inspect.signature(model.llm.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    out = model.llm(inputs_embeds=x, attention_mask=mask, use_cache=True)
    past = getattr(out, cache_arg)
    tokens = torch.empty((b, 0), dtype=torch.long, device=dev)
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    for _ in range(max_new):
        nxt = out.logits[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
        tokens = torch.cat([tokens, nxt[:, None]], 1)
        done |= nxt == eos
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        out = model.llm(input_ids=nxt[:, None], attention_mask=mask, use_cache=True, **{cache_arg: past})
        past = getattr(out, cache_arg)
    result = []
    for row in tokens.tolist():
        result.append(row[: row.index(eos)] if eos in row else row)
    return result


def _done_ids(out: Path) -> set[str]:
    """Ids already captioned; a torn last line (killed mid-write) is cut off the file."""
    if not out.is_file():
        return set()
    data = out.read_bytes()
    keep = data[: data.rfind(b"\n") + 1]
    if len(keep) != len(data):
        with open(out, "r+b") as fh:
            fh.truncate(len(keep))
    return {json.loads(line)["id"] for line in keep.splitlines() if line.strip()}


def _read_ids(path: Path) -> list[str]:
    try:
        ids = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except OSError as exc:
        raise DataError(f"--ids {path}: {exc.strerror or exc}") from exc
    if not ids:
        raise DataError(f"--ids {path}: no ids")
    return ids


class _Rows:
    """Row source: a memmap view (by id or in order) or a Zarr store (in order, or by id via one id scan)."""

    def __init__(self, path: Path, ids: list[str] | None) -> None:
        self.view: FeatureView | None = None
        self.store: FeatureStore | None = None
        if (path / HEADER_NAME).is_file():
            self.view = FeatureView.open(path)
            self.dim, n = self.view.dim, self.view.num_rows
        else:
            try:
                self.store = FeatureStore.open(path)
            except StoreError as exc:
                raise DataError(f"--features {path}: {exc}") from exc
            self.dim, n = self.store.dim, self.store.rows
        if ids is None:
            self.rows = np.arange(n, dtype=np.int64)
        elif self.view is not None:
            self.rows = self.view.lookup(ids, missing="ignore")
        else:
            assert self.store is not None
            where = {s: i for i, s in enumerate(ids)}
            self.rows = np.full(len(ids), -1, np.int64)
            for row0, block in self.store.iter_ids():
                for k, s in enumerate(block.tolist()):
                    if s in where:
                        self.rows[where[s]] = row0 + k
        if ids is not None and (self.rows < 0).any():
            absent = [ids[int(i)] for i in np.flatnonzero(self.rows < 0)]
            raise DataError(f"--ids: {len(absent):,} ids not in --features {path}, e.g. {', '.join(absent[:5])}")
        self.path = path

    def ids(self, rows: np.ndarray) -> list[str]:
        if self.view is not None:
            return self.view.ids(rows)
        assert self.store is not None
        return [str(self.store.read_ids(int(r), int(r) + 1)[0]) for r in rows]

    def embeds(self, rows: np.ndarray) -> torch.Tensor:
        if self.view is not None:
            return self.view.rows(rows, dtype=torch.float32)
        assert self.store is not None
        block = self.store.read_rows(rows)
        t = torch.from_numpy(block)
        return (t.view(torch.bfloat16) if self.store.dtype == "bfloat16" else t).float()

    def batches(self, size: int) -> Iterator[np.ndarray]:
        for lo in range(0, self.rows.size, size):
            yield self.rows[lo : lo + size]


def caption(cfg: CaptionConfig) -> dict[str, Any]:
    """Caption the rows; returns {"written", "skipped", "out"}."""
    read_run(cfg.run)
    in_dim = int(load_projector(cfg.run)["in_dim"])
    source = _Rows(cfg.features, _read_ids(cfg.ids) if cfg.ids else None)
    if source.dim != in_dim:
        raise DataError(f"--features {cfg.features}: rows of dim {source.dim}, the run's projector takes {in_dim}")
    model, tokenizer, doc = load_run(cfg.run)
    template = Template(tokenizer, "plain" if doc["config"]["stage"] == "pretrain" else "conversation")
    prompt = template.prompt_ids(cfg.prompt)
    eos = int(tokenizer.eos_token_id)
    try:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        done = _done_ids(cfg.out)
        fh = open(cfg.out, "a")  # noqa: SIM115 (kept open for the whole loop below)
    except OSError as exc:
        raise DataError(f"--out {cfg.out}: cannot write there ({exc.strerror or exc})") from exc
    written = skipped = 0
    bar = tqdm(total=int(source.rows.size), disable=not cfg.progress, unit="row", file=sys.stderr)
    with fh:
        for rows in source.batches(cfg.batch_size):
            ids = source.ids(rows)
            todo = [k for k, i in enumerate(ids) if i not in done]
            skipped += len(ids) - len(todo)
            if todo:
                texts = greedy(model, source.embeds(rows[todo]), prompt, eos, cfg.max_new_tokens)
                lines = [
                    json.dumps({"id": ids[k], "text": tokenizer.decode(t, skip_special_tokens=True).strip()})
                    for k, t in zip(todo, texts, strict=True)
                ]
                fh.write("".join(line + "\n" for line in lines))
                fh.flush()
                os.fsync(fh.fileno())
                written += len(todo)
            bar.update(len(ids))
    bar.close()
    return {"written": written, "skipped": skipped, "out": str(cfg.out)}
