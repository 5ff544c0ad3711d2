"""failures.jsonl: items left out of the stores, kept in step with the stores' commits.

Each (modality, rank) writes a part file under OUTDIR/.failures/. Before a store commit the part
is flushed and fsynced and its byte length goes into the commit's `progress`; on resume the part is
cut back to that length, so failures of uncommitted work are never listed twice. At the end the
parts are concatenated (image then text, rank order) into OUTDIR/failures.jsonl through a
temporary file and os.replace.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from revision.embed.batches import Failure
from revision.errors import UserError

PARTS_DIR = ".failures"


def part_path(out: Path, modality: str, rank: int) -> Path:
    return out / PARTS_DIR / f"{modality}-{rank:05d}.jsonl"


class FailureLog:
    """Append-only failure records of one modality on one rank."""

    def __init__(self, path: Path, modality: str, committed_bytes: int) -> None:
        self.path = path
        self.modality = modality
        path.parent.mkdir(parents=True, exist_ok=True)
        size = path.stat().st_size if path.exists() else 0
        if size < committed_bytes:
            raise UserError(
                f"{path}: holds {size} bytes but the {modality} store's last commit recorded {committed_bytes}; "
                f"the failure log was deleted or cut, so the run cannot resume: delete the {modality} store to redo it"
            )
        # Anything past the last commit belongs to work that will be redone.
        with open(path, "ab") as fh:
            fh.truncate(committed_bytes)
        self.fh = open(path, "ab")  # noqa: SIM115 - held open for the whole run, closed in close()
        self.count = 0

    def add(self, failures: Sequence[Failure]) -> None:
        key = "image" if self.modality == "image" else "text"
        for f in failures:
            rec = {"modality": self.modality, "id": f.id, "index": f.index, "reason": f.reason, key: f.value}
            self.fh.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
        self.count += len(failures)

    def sync(self) -> int:
        """Make the records durable; returns the byte length to record in the commit."""
        self.fh.flush()
        os.fsync(self.fh.fileno())
        return self.fh.tell()

    def close(self) -> None:
        self.fh.close()


def merge_parts(out: Path, modalities: Sequence[str], world: int) -> Path:
    """Concatenate the part files into OUTDIR/failures.jsonl atomically; returns its path."""
    dest = out / "failures.jsonl"
    tmp = out / f".failures.jsonl.tmp-{os.getpid()}"
    with open(tmp, "wb") as w:
        for modality in modalities:
            for rank in range(world):
                part = part_path(out, modality, rank)
                if part.exists():
                    with open(part, "rb") as r:
                        shutil.copyfileobj(r, w, 1 << 20)
        w.flush()
        os.fsync(w.fileno())
    os.replace(tmp, dest)
    return dest


def count_records(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())
