"""The writer lock: one writer per store, a clear error naming the holder, no repair by a non-holder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from revision.store import FeatureStore, StoreConfig
from revision.store.lock import LockedError, WriterLock

CFG = StoreConfig(modality="text", dim=8, dtype="float32", chunk_rows=16, chunks_per_shard=2)


def _rows(n: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 8)).astype(np.float32), [f"r{seed}-{i}" for i in range(n)]


def _holder_script(path: Path, ready: Path) -> str:
    # A writer that appends uncommitted rows (written to shard files: 40 rows > one 32-row shard),
    # then waits, then commits: the rows a second writer's repair would delete.
    return textwrap.dedent(
        f"""
        import numpy as np, time, pathlib
        from revision.store import FeatureStore
        st = FeatureStore.open({str(path)!r}, mode="a")
        st.append(np.ones((40, 8), np.float32), [f"h{{i}}" for i in range(40)])
        pathlib.Path({str(ready)!r}).write_text("ready")
        time.sleep(3)
        st.commit()
        st.close()
        """
    )


def test_second_writer_is_refused_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    with FeatureStore.create(path, CFG) as st:
        st.append(*_rows(10))
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", _holder_script(path, ready)])
    try:
        deadline = time.time() + 60
        while not ready.exists():
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        shard_files = sorted(p.name for p in (path / "vectors" / "c").rglob("*") if p.is_file())
        with pytest.raises(LockedError) as err:
            FeatureStore.open(path, mode="a")
        msg = str(err.value)
        assert str(path) in msg and f"pid {proc.pid}" in msg and "-c" in msg
        # The refused open repaired nothing: the holder's uncommitted shard files are still there.
        assert sorted(p.name for p in (path / "vectors" / "c").rglob("*") if p.is_file()) == shard_files
        # Readers are never blocked.
        assert FeatureStore.open(path).rows == 10
    finally:
        assert proc.wait(timeout=60) == 0
    st = FeatureStore.open(path)
    assert st.rows == 50
    np.testing.assert_array_equal(st.read(10, 50), np.ones((40, 8), np.float32))
    assert list(st.read_ids(10, 12)) == ["h0", "h1"]


def test_lock_is_released_on_close_and_on_kill(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    st = FeatureStore.create(path, CFG)
    with pytest.raises(LockedError):
        FeatureStore.open(path, mode="a")  # also within one process: a second writer object is refused
    st.close()
    FeatureStore.open(path, mode="a").close()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from revision.store import FeatureStore; import os, signal; s = FeatureStore.open({str(path)!r}, 'a'); "
            "os.kill(os.getpid(), signal.SIGKILL)",
        ]
    )
    assert proc.wait(timeout=60) == -9
    FeatureStore.open(path, mode="a").close()  # the kernel dropped the dead holder's lock


def test_create_holds_the_lock_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    st = FeatureStore.create(path, CFG)
    with pytest.raises(LockedError):
        FeatureStore.open(path, mode="a")
    st.append(*_rows(3))
    st.commit()
    st.close()
    assert FeatureStore.open(path).rows == 3
    # No lock file or other litter: the lock is on the directory itself.
    assert sorted(p.name for p in path.iterdir()) == ["ids", "vectors", "zarr.json"]


def test_lock_survives_directory_replacement(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    lock = WriterLock.acquire(d, "d")
    # The holder removes and recreates the directory: a new writer locks the new one, which is free.
    os.rmdir(d)
    d.mkdir()
    other = WriterLock.acquire(d, "d")
    other.release()
    lock.release()


def test_zarr_python_reads_a_locked_store(tmp_path: Path) -> None:
    zarr = pytest.importorskip("zarr")
    path = tmp_path / "s.zarr"
    st = FeatureStore.create(path, CFG)
    x, ids = _rows(20)
    st.append(x, ids)
    st.commit()
    g = zarr.open_group(str(path), mode="r")
    np.testing.assert_array_equal(g["vectors"][:], x)
    st.close()
