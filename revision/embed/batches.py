"""Deterministic batches for `revision embed`, built in DataLoader workers while the model runs.

Batch composition depends only on the input order, never on where a run started: items
[start, stop) are cut into groups of `group` items counted from `start` (and `start` is always a
group boundary), each group into batches. A resumed run therefore feeds the model exactly the
batches of a clean run, and batch-dependent numerics (GEMM blocking, padding) cannot make the stores
differ.

- Images: a unit is one batch of consecutive items; worker w of W takes units w, w+W, …, so the
  DataLoader's round-robin returns them in input order.
- Texts: a unit is one group; inside it the texts are sorted by token length (stable) and cut into
  batches, so padding is small; the caller writes the rows back in input order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from revision.embed.encoders import ImagePreprocessor, TextPreprocessor
from revision.embed.sources import DatasetSource, Item


@dataclass
class Failure:
    """An item left out of the store, with the reason (goes to failures.jsonl)."""

    index: int
    id: str
    reason: str
    value: str


@dataclass
class ImageUnit:
    """One batch of images: `ok` items in input order and their pixels, plus the failures."""

    start: int
    count: int
    ok: list[Item] = field(default_factory=list)
    pixels: torch.Tensor | None = None
    failures: list[Failure] = field(default_factory=list)

    def pin_memory(self) -> ImageUnit:
        """Called by the DataLoader's pinning thread (CUDA): page-locked pixels copy asynchronously."""
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self


@dataclass
class TextUnit:
    """One group of texts: `ok` in input order; `batches` are (positions into ok, model inputs)."""

    start: int
    count: int
    ok: list[Item] = field(default_factory=list)
    batches: list[tuple[list[int], dict[str, Any]]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def pin_memory(self) -> TextUnit:
        for _, inputs in self.batches:
            for key, value in inputs.items():
                if isinstance(value, torch.Tensor):
                    inputs[key] = value.pin_memory()
        return self


def _worker_slot() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _units(source: DatasetSource, modality: str, start: int, stop: int, size: int) -> Iterator[list[Item]]:
    """Consecutive runs of `size` items of [start, stop), the last one possibly shorter."""
    run: list[Item] = []
    for item in source.items(modality):
        if item.index < start:
            continue
        if item.index >= stop:
            break
        run.append(item)
        if len(run) == size:
            yield run
            run = []
    if run:
        yield run


def _open_image(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def decode_images(items: list[Item], image_root: Path | None) -> tuple[list[Item], list[Any], list[Failure]]:
    """Open each image; a missing or unreadable file becomes a Failure (never an exception)."""
    ok: list[Item] = []
    images: list[Any] = []
    failures: list[Failure] = []
    for item in items:
        if not item.value:
            failures.append(Failure(item.index, item.id, "empty image path", item.value))
            continue
        path = Path(item.value) if image_root is None else image_root / item.value
        try:
            images.append(_open_image(path))
        except FileNotFoundError:
            failures.append(Failure(item.index, item.id, f"missing file: {path}", item.value))
            continue
        except Exception as exc:  # noqa: BLE001 - any decoder error means "unreadable", recorded per item
            failures.append(Failure(item.index, item.id, f"unreadable image: {type(exc).__name__}: {exc}", item.value))
            continue
        ok.append(item)
    return ok, images, failures


class ImageBatches(IterableDataset[ImageUnit]):
    """Decoded, preprocessed image batches of items [start, stop)."""

    def __init__(
        self,
        source: DatasetSource,
        pre: ImagePreprocessor,
        image_root: Path | None,
        start: int,
        stop: int,
        batch_size: int,
    ) -> None:
        self.source, self.pre, self.image_root = source, pre, image_root
        self.start, self.stop, self.batch_size = start, stop, batch_size

    def __iter__(self) -> Iterator[ImageUnit]:
        wid, nw = _worker_slot()
        for u, items in enumerate(_units(self.source, "image", self.start, self.stop, self.batch_size)):
            if u % nw != wid:
                continue
            yield self.build(items)

    def build(self, items: list[Item]) -> ImageUnit:
        unit = ImageUnit(start=items[0].index, count=len(items))
        ok, images, unit.failures = decode_images(items, self.image_root)
        if images:
            pixels: torch.Tensor | None
            try:
                pixels = self.pre(images)
                unit.ok = ok
            except Exception:  # noqa: BLE001 - find the image the processor rejects, keep the rest
                kept: list[torch.Tensor] = []
                for item, image in zip(ok, images, strict=True):
                    try:
                        kept.append(self.pre([image]))
                        unit.ok.append(item)
                    except Exception as exc:  # noqa: BLE001
                        reason = f"image processor failed: {type(exc).__name__}: {exc}"
                        unit.failures.append(Failure(item.index, item.id, reason, item.value))
                unit.failures.sort(key=lambda f: f.index)
                pixels = torch.cat(kept) if kept else None
            unit.pixels = pixels
        return unit


class TextBatches(IterableDataset[TextUnit]):
    """Tokenised text groups of items [start, stop), length-sorted into batches inside each group."""

    def __init__(
        self,
        source: DatasetSource,
        pre: TextPreprocessor,
        start: int,
        stop: int,
        batch_size: int,
        group: int,
    ) -> None:
        self.source, self.pre = source, pre
        self.start, self.stop, self.batch_size, self.group = start, stop, batch_size, group

    def __iter__(self) -> Iterator[TextUnit]:
        wid, nw = _worker_slot()
        if nw > 1:
            # The parent may have used the fast tokenizer's thread pool before forking us.
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        for u, items in enumerate(_units(self.source, "text", self.start, self.stop, self.group)):
            if u % nw != wid:
                continue
            yield self.build(items)

    def build(self, items: list[Item]) -> TextUnit:
        unit = TextUnit(start=items[0].index, count=len(items))
        for item in items:
            if item.value.strip():
                unit.ok.append(item)
            else:
                unit.failures.append(Failure(item.index, item.id, "empty text", item.value))
        if not unit.ok:
            return unit
        texts = [it.value for it in unit.ok]
        lengths = self.pre.lengths(texts)
        # Longest first (a too-large batch fails at once, not hours in); ties keep input order.
        order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
        for b in range(0, len(order), self.batch_size):
            pos = order[b : b + self.batch_size]
            unit.batches.append((pos, self.pre.batch([texts[i] for i in pos])))
        return unit
