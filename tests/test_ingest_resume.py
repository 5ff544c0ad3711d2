"""Crash and resume: an ingest killed with SIGKILL at any point, then re-run, equals a clean run byte for byte."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from revision.errors import UserError
from revision.store import FeatureStore
from revision.store.ingest import ingest
from revision.store.pickle_io import write_reference_pickle

OPTS: dict[str, Any] = {
    "fmt": "reference-pkl",
    "nonfinite": "skip",
    "batch_rows": 7,
    "commit_rows": 10,
    "chunk_rows": 4,
    "chunks_per_shard": 2,
}

# The child runs a real ingest and SIGKILLs itself at a chosen moment: after the k-th commit, after
# the k-th append (rows buffered, id records written, nothing committed), just before DEST is renamed
# into place, or after a delay (anywhere, including inside a shard write).
CHILD = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from revision.store import FeatureStore
    from revision.store.ingest import ingest

    src, dest, mode, k = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    opts = eval(sys.argv[5])
    count = [0]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def after(method):
        orig = getattr(FeatureStore, method)
        def wrapped(self, *a, **kw):
            out = orig(self, *a, **kw)
            count[0] += 1
            if count[0] == k:
                die()
            return out
        setattr(FeatureStore, method, wrapped)

    if mode in ("commit", "append"):
        after(mode)
    elif mode == "rename":
        os.rename = lambda a, b: die()
    elif mode == "timer":
        threading.Timer(k, die).start()
    ingest(src, dest, **opts)
    """
)


def _inputs(root: Path) -> None:
    rng = np.random.default_rng(5)
    k = 0
    for j in range(9):
        recs: list[dict[str, Any]] = []
        for _ in range(int(rng.integers(3, 14))):
            recs.append({"id": f"t{k}", "caption": f"c{k}", "embed": rng.standard_normal(8).astype(np.float16)})
            k += 1
        if j == 2:
            recs[1]["embed"] = None  # counted as skipped
        if j == 5:
            recs[0]["embed"][3] = np.nan  # skipped by --nonfinite skip, counted
        write_reference_pickle(root / f"text_embeds_{j + 1}.pkl", recs)


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("resume")
    _inputs(root / "src")
    summary = ingest(root / "src", root / "clean.zarr", **OPTS)
    assert summary.skipped_none == 1 and summary.nonfinite == 1
    return root, _tree(root / "clean.zarr")


@pytest.mark.parametrize(
    ("mode", "k"), [("commit", 1), ("commit", 4), ("commit", 9), ("append", 5), ("rename", 0), ("timer", 0.25)]
)
def test_sigkill_then_rerun_equals_a_clean_run(clean: tuple[Path, dict[str, bytes]], mode: str, k: float) -> None:
    root, want = clean
    dest = root / f"{mode}{k}.zarr"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(root / "src"), str(dest), mode, str(k), repr(OPTS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if mode != "timer":
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        assert not dest.exists()  # never half-written: only the staging directory holds the rows
        staged = FeatureStore.open(root / f".{dest.name}.ingest" / "store")
        assert staged.progress is not None and staged.progress["job"] == "ingest"
    summary = ingest(root / "src", dest, **OPTS)
    if mode in ("commit", "append", "rename"):
        assert summary.mode == "resumed"
    assert (summary.rows_total, summary.skipped_none, summary.nonfinite) == (len(_ids(want_root=root)), 1, 1)
    got = _tree(dest)
    assert sorted(got) == sorted(want)
    differ = [name for name in want if got[name] != want[name]]
    assert not differ, f"files differ from the clean run: {differ}"
    assert not (root / f".{dest.name}.ingest").exists()
    assert ingest(root / "src", dest, **OPTS).mode == "noop"


def _ids(want_root: Path) -> list[str]:
    return list(FeatureStore.open(want_root / "clean.zarr").read_ids())


def test_a_different_job_does_not_resume_foreign_staging(clean: tuple[Path, dict[str, bytes]]) -> None:
    root, want = clean
    dest = root / "other.zarr"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(root / "src"), str(dest), "commit", "3", repr({**OPTS, "nonfinite": "zero"})],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # Other options → another job key: the half-done staging is discarded, not continued.
    summary = ingest(root / "src", dest, **OPTS)
    assert summary.mode == "new"
    assert _tree(dest) == want


def test_a_resume_from_the_wrong_place_is_caught(clean: tuple[Path, dict[str, bytes]]) -> None:
    """The deliberately wrong resume (restart the current file from item 0) must not pass silently."""
    root, _ = clean
    dest = root / "wrong.zarr"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(root / "src"), str(dest), "commit", "6", repr(OPTS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    meta = root / f".{dest.name}.ingest" / "store" / "zarr.json"
    doc = json.loads(meta.read_text())
    prog = doc["attributes"]["revision"]["progress"]
    assert prog["item"] > 0  # killed mid-file, so forgetting the item re-reads committed rows
    prog["item"] = 0
    meta.write_text(json.dumps(doc))
    with pytest.raises(UserError, match="duplicate id"):
        ingest(root / "src", dest, **OPTS)
    assert not dest.exists()
