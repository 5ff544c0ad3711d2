"""Atomic checkpoints and the RNG states a bit-exact resume needs.

A checkpoint is one torch file written under a temporary name in the run directory, fsynced, renamed
over the previous one and the directory fsynced: a SIGKILL at any moment leaves the previous
checkpoint or the new one, never a torn file. Final artefacts (the projector) are written the same
way; a saved LLM folder is built under a temporary name and renamed whole.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from revision.store import faults
from revision.store.atomic import atomic_file, fsync_dir, replace_dir, resolve_durable, write_error

CHECKPOINT = "checkpoint.pt"


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save(obj, path) so that `path` is the old file or the whole new one, durably.

    A failed write (EIO, disk full) removes the temporary file and raises the store's one-line
    WriteError / DiskFullError; the previous checkpoint stays in force. Its write calls are fault
    points of the fault suite, as the store's are.
    """
    with atomic_file(path) as fh:
        faults.point("write", path)
        torch.save(obj, fh)


def atomic_dir(dest: Path, write: Callable[[Path], None]) -> None:
    """Build a directory with `write(tmp)` beside `dest`, then swap it into place."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        faults.point("write", tmp)
        write(tmp)
        if resolve_durable(None):
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    faults.point("fsync", f)
                    os.fsync(fh.fileno())
            fsync_dir(tmp)
        replace_dir(tmp, dest)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise write_error(dest, exc) from None
        raise


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(run: Path) -> dict[str, Any] | None:
    path = run / CHECKPOINT
    if not path.is_file():
        return None
    # Our own file (optimizer state holds more than tensors), never a downloaded one.
    return torch.load(path, map_location="cpu", weights_only=False)  # type: ignore[no-any-return]


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (a frozen LLM is not copied into every checkpoint)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise KeyError(f"checkpoint holds parameters the model lacks, e.g. {missing[0]}")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)
