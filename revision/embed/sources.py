"""Input datasets for `revision embed`: the seed's dataset.json, LLaVA annotations and JSON Lines.

Every layout is read as a stream of items (one at a time), so a pass over billions of items needs
no more memory than one item. Items are numbered per modality in file order; that number is the
item's position in the output store (before failures are left out) and what resuming counts by.

Layouts:
- "seed": {"images": [{"id", "image"}], "texts": [{"id", "text"}]} (image paths relative to
  --image-root).
- "llava": [{"id", "image"?, "conversations": [{"from": "human"|"gpt", "value"}], "caption"?}];
  the text of a sample is its "caption" if present, else its first "gpt" turn without "<image>".
- "jsonl": one object per line, {"id", "image"} and/or {"id", "text"}; blank lines are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from revision.embed.jsonstream import first_char, iter_object_array, iter_top_array
from revision.errors import UserError

FORMATS = ("auto", "seed", "llava", "jsonl")
MODALITIES = ("image", "text")


@dataclass(frozen=True, slots=True)
class Item:
    """One input item: `value` is the image path (as written in the input) or the text."""

    index: int
    id: str
    value: str


def _id_of(raw: dict[str, Any], where: str) -> str:
    if "id" not in raw:
        raise UserError(f"{where}: missing 'id'")
    ident = raw["id"]
    # LLaVA files often carry integer ids; they name the same sample as their decimal string.
    if isinstance(ident, bool) or not isinstance(ident, str | int):
        raise UserError(f"{where}: 'id' must be a string, got {type(ident).__name__}")
    ident = str(ident)
    if not ident:
        raise UserError(f"{where}: 'id' is empty")
    return ident


def _str_field(raw: dict[str, Any], key: str, where: str) -> str:
    value = raw[key]
    if not isinstance(value, str):
        raise UserError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value


def _llava_caption(raw: dict[str, Any], where: str) -> str | None:
    if "caption" in raw:
        return _str_field(raw, "caption", where)
    turns = raw.get("conversations")
    if turns is None:
        return None
    if not isinstance(turns, list):
        raise UserError(f"{where}: 'conversations' must be a list")
    for turn in turns:
        if isinstance(turn, dict) and turn.get("from") == "gpt":
            value = turn.get("value")
            if not isinstance(value, str):
                raise UserError(f"{where}: a 'gpt' turn has no string 'value'")
            return value.replace("<image>", "").strip()
    return None


@dataclass(frozen=True)
class DatasetSource:
    """A dataset file and its resolved layout; cheap to pickle into DataLoader workers."""

    path: Path
    format: str

    @classmethod
    def open(cls, path: str | Path, fmt: str = "auto") -> DatasetSource:
        p = Path(path)
        if fmt not in FORMATS:
            raise UserError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
        if not p.is_file():
            raise UserError(f"--data: {p} does not exist or is not a file")
        if fmt == "auto":
            fmt = cls._detect(p)
        return cls(p, fmt)

    @staticmethod
    def _detect(p: Path) -> str:
        if p.suffix.lower() in (".jsonl", ".ndjson"):
            return "jsonl"
        c = first_char(p)
        if c == "{":
            # One JSON object per line also starts with "{": look at the first line alone.
            with open(p, encoding="utf-8-sig") as fh:
                line = fh.readline()
            try:
                head = json.loads(line)
            except json.JSONDecodeError:
                return "seed"
            return "seed" if isinstance(head, dict) and ("images" in head or "texts" in head) else "jsonl"
        if c == "[":
            return "llava"
        raise UserError(f"--data: {p} is not a JSON object, array or JSON Lines file; pass --format")

    def items(self, modality: str) -> Iterator[Item]:
        """The items of one modality in file order, validated; bad structure raises UserError."""
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        if self.format == "seed":
            return self._seed(modality)
        if self.format == "llava":
            return self._llava(modality)
        return self._jsonl(modality)

    def _seed(self, modality: str) -> Iterator[Item]:
        key, field = ("images", "image") if modality == "image" else ("texts", "text")
        for k, raw in enumerate(iter_object_array(self.path, key)):
            where = f"{self.path}: {key}[{k}]"
            if not isinstance(raw, dict):
                raise UserError(f"{where}: expected an object, got {type(raw).__name__}")
            if field not in raw:
                raise UserError(f"{where}: missing {field!r}")
            yield Item(k, _id_of(raw, where), _str_field(raw, field, where))

    def _llava(self, modality: str) -> Iterator[Item]:
        k = 0
        for n, raw in enumerate(iter_top_array(self.path)):
            where = f"{self.path}: sample [{n}]"
            if not isinstance(raw, dict):
                raise UserError(f"{where}: expected an object, got {type(raw).__name__}")
            if modality == "image":
                if "image" not in raw:
                    continue  # text-only conversations have no image
                value: str | None = _str_field(raw, "image", where)
            else:
                value = _llava_caption(raw, where)
                if value is None:
                    raise UserError(f"{where}: no 'caption' and no 'gpt' turn to take the text from")
            assert value is not None
            yield Item(k, _id_of(raw, where), value)
            k += 1

    def _jsonl(self, modality: str) -> Iterator[Item]:
        k = 0
        with open(self.path, encoding="utf-8-sig") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{self.path}: line {n}"
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{where}: invalid JSON: {exc.msg}") from None
                if not isinstance(raw, dict):
                    raise UserError(f"{where}: expected an object, got {type(raw).__name__}")
                if modality not in raw:
                    if "image" not in raw and "text" not in raw:
                        raise UserError(f"{where}: neither 'image' nor 'text'")
                    continue
                yield Item(k, _id_of(raw, where), _str_field(raw, modality, where))
                k += 1

    def describe(self, modality: str, index: int) -> str:
        """Where item `index` of a modality is, for messages (the item number in that modality)."""
        return f"{self.path}: {modality} item {index}"


# Enough items that a few missing files among them cannot pass for a wrong folder, few enough that
# checking them costs nothing next to loading the model.
ROOT_PROBE_ITEMS = 64


def check_image_root(source: DatasetSource, image_root: Path, start: int, stop: int) -> None:
    """Refuse an --image-root under which none of the first image paths of [start, stop) exist.

    Run before any output is created; the runner's check of its first batch stays as a backstop.
    """
    probed: list[str] = []
    for item in source.items("image"):
        if item.index < start:
            continue
        if item.index >= stop or len(probed) == ROOT_PROBE_ITEMS:
            break
        if (image_root / item.value).exists():
            return
        probed.append(item.value)
    if probed:
        raise UserError(
            f"--image-root: none of the first {len(probed)} images exist under {image_root} "
            f"(e.g. {probed[0]!r}); is it the folder the paths in --data are relative to?"
        )


def existing_ancestor(path: Path) -> Path:
    """`path` or its nearest existing parent: where scratch files may go before `path` is created."""
    p = path.resolve()
    while not p.exists() and p.parent != p:
        p = p.parent
    return p
