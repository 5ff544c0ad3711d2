"""Stores that fit, apply and diagnose open are closed by them: no file descriptor outlives a call."""

from __future__ import annotations

import contextlib
import gc
import os
from pathlib import Path

import numpy as np
import pytest
from test_align_oracle import make_store

from revision.align import AlignConfig, apply_stats, fit_stores
from revision.align.engine import centroid_pass
from revision.cli import main
from revision.errors import UserError
from revision.store import FeatureStore

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd (Linux)")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fd_targets() -> dict[str, str]:
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
    return out


def unmapped_new_fds(before: dict[str, str]) -> list[str]:
    """Files opened since `before` other than those behind a live memory mapping.

    A zero-copy block handed out by a store is a view of a memory-mapped shard, and Python's mmap
    holds a duplicate of the file's descriptor; a traceback that holds the failing block keeps that
    one mapping. Every other descriptor must be closed by the pass that opened it.
    """
    with open("/proc/self/maps") as fh:
        mapped = {line.split(None, 5)[5].strip() for line in fh if len(line.split(None, 5)) == 6}
    return [path for fd, path in fd_targets().items() if fd not in before and path not in mapped]


@pytest.fixture
def stores(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    # Small chunks and shards: each store spans several shard files, so a leak costs several fds.
    for name, rows, modality in (("t", 600, "text"), ("i", 500, "image")):
        x = (rng.normal(size=(rows, 12)) + (1.0 if modality == "text" else -1.0)).astype(np.float32)
        make_store(tmp_path / f"{name}.zarr", x, modality, chunk_rows=32, chunks_per_shard=2).close()
    return tmp_path / "t.zarr", tmp_path / "i.zarr"


def test_fit_apply_read_loop_keeps_fds_flat(tmp_path: Path, stores: tuple[Path, Path]) -> None:
    text, image = stores
    cfg = AlignConfig(progress=False)
    counts = []
    for k in range(20):
        stats, _ = fit_stores(text, image, cfg)
        out = tmp_path / f"a{k}.zarr"
        apply_stats(text, stats, out, cfg)
        centroid_pass(text, stats, cfg)
        with FeatureStore.open(out) as st:
            assert st.read().shape == (600, 12)
        counts.append(open_fds())
    assert counts[-1] == counts[0], f"open fds per iteration: {counts}"


def test_cli_loop_keeps_fds_flat(tmp_path: Path, stores: tuple[Path, Path]) -> None:
    text, image = stores
    stats = tmp_path / "s.json"
    counts = []
    for k in range(10):
        assert main(["fit", "--text", str(text), "--image", str(image), "--stats", str(stats), "--no-progress"]) == 0
        out = tmp_path / f"a{k}.zarr"
        assert main(["apply", "--text", str(text), "--stats", str(stats), "--out", str(out), "--no-progress"]) == 0
        counts.append(open_fds())
    assert counts[-1] == counts[0], f"open fds per iteration: {counts}"


def test_failed_fit_closes_its_stores_before_raising(tmp_path: Path, stores: tuple[Path, Path]) -> None:
    """The error's traceback holds the frames that opened the stores; their files are closed anyway,
    not left to the garbage collector (a caller that keeps the exception would keep them open)."""
    text, _ = stores
    bad = np.ones((300, 12), dtype=np.float32)
    bad[250, 3] = np.nan
    make_store(tmp_path / "bad.zarr", bad, "image", dtype="float32", chunk_rows=32, chunks_per_shard=2).close()
    cfg = AlignConfig(progress=False)
    base, before = open_fds(), fd_targets()
    with pytest.raises(UserError, match="row 250") as caught:
        fit_stores(text, tmp_path / "bad.zarr", cfg)
    assert caught.value.__traceback__ is not None
    assert unmapped_new_fds(before) == []
    del caught
    gc.collect()  # the traceback's frames form a cycle; with them goes the view of the failing block
    assert open_fds() == base


def test_failed_apply_closes_its_stores_before_raising(tmp_path: Path, stores: tuple[Path, Path]) -> None:
    text, image = stores
    cfg = AlignConfig(progress=False)
    stats, _ = fit_stores(text, image, cfg)
    bad = np.ones((300, 12), dtype=np.float32)
    bad[200] = np.inf
    make_store(tmp_path / "bad.zarr", bad, "text", dtype="float32", chunk_rows=32, chunks_per_shard=2).close()
    base, before = open_fds(), fd_targets()
    with pytest.raises(UserError, match="row 200") as caught:
        apply_stats(tmp_path / "bad.zarr", stats, tmp_path / "out.zarr", cfg)
    assert caught.value.__traceback__ is not None
    assert unmapped_new_fds(before) == []
    del caught
    gc.collect()  # the traceback's frames form a cycle; with them goes the view of the failing block
    assert open_fds() == base
    assert not (tmp_path / "out.zarr").exists()


def test_diagnose_loop_keeps_fds_flat(tmp_path: Path, stores: tuple[Path, Path]) -> None:
    from revision.diagnose import diagnose

    text, image = stores
    counts = []
    for _ in range(5):
        diagnose(text, image, aligned={"same": text}, sample=200, k=5, pairs=False, threads=1)
        counts.append(open_fds())
    assert counts[-1] == counts[0], f"open fds per iteration: {counts}"


def test_failed_diagnose_closes_its_stores_before_raising(tmp_path: Path, stores: tuple[Path, Path]) -> None:
    from revision.diagnose import diagnose

    text, image = stores
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("text_id,image_id\nnobody,nothing\n")
    base, before = open_fds(), fd_targets()
    # Refused after reading both stores' ids: no pair of the file names rows in them.
    with pytest.raises(UserError, match="matches ids") as caught:
        diagnose(text, image, aligned={"same": text}, sample=200, k=5, threads=1, pairs_file=pairs)
    assert caught.value.__traceback__ is not None
    assert unmapped_new_fds(before) == []
    del caught
    gc.collect()  # the traceback's frames form a cycle; with them goes the view of the failing block
    assert open_fds() == base
