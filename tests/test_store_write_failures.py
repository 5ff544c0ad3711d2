"""A store under failing writes (EIO, disk full) and its durability: regression tests for issue 11.

Faults are injected at the store's own write calls (store/faults.py), in process, so each test says
exactly which write fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from revision.store import FeatureStore, StoreConfig, faults
from revision.store.atomic import DiskFullError, WriteError
from revision.store.writer import BrokenWriterError

CFG = StoreConfig(modality="text", dim=4, dtype="float32", chunk_rows=4, chunks_per_shard=2)


def _rows(lo: int, hi: int) -> tuple[np.ndarray, list[str]]:
    x = np.arange(lo * 4, hi * 4, dtype=np.float32).reshape(-1, 4)
    return x, [f"id{i}" for i in range(lo, hi)]


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name or ".creating-" in p.name]


@pytest.fixture
def inject(monkeypatch: pytest.MonkeyPatch):
    def arm(spec: str, match: str | None = None) -> None:
        faults.reset()
        monkeypatch.setenv("REVISION_FAULT", spec)
        if match:
            monkeypatch.setenv("REVISION_FAULT_MATCH", match)
        else:
            monkeypatch.delenv("REVISION_FAULT_MATCH", raising=False)

    def disarm() -> None:
        monkeypatch.delenv("REVISION_FAULT", raising=False)
        monkeypatch.delenv("REVISION_FAULT_MATCH", raising=False)

    yield arm, disarm
    disarm()


def test_eio_on_an_ids_shard_breaks_the_writer_and_commits_nothing(tmp_path: Path, inject) -> None:
    arm, disarm = inject
    path = tmp_path / "s.zarr"
    st = FeatureStore.create(path, CFG)
    st.append(*_rows(0, 5))
    st.commit()
    arm("eio@1", match="/ids/c/")
    with pytest.raises(WriteError, match=r"ids/c/.*write failed"):
        st.append(*_rows(5, 20))  # fills a shard of vectors (written) and of ids (fails)
    disarm()
    assert st.broken
    with pytest.raises(BrokenWriterError, match="reopen the store"):
        st.commit()
    with pytest.raises(BrokenWriterError):
        st.append(*_rows(20, 21))
    st.close()
    again = FeatureStore.open(path, mode="a")
    assert again.rows == 5
    assert list(again.read_ids()) == [f"id{i}" for i in range(5)]
    again.append(*_rows(5, 20))
    again.commit()
    again.close()
    done = FeatureStore.open(path)
    assert list(done.read_ids()) == [f"id{i}" for i in range(20)]
    np.testing.assert_array_equal(done.read(), _rows(0, 20)[0])
    assert not _temp_files(path)


def test_disk_full_is_a_clear_error_removes_the_temp_file_and_commit_can_be_retried(tmp_path: Path, inject) -> None:
    arm, disarm = inject
    path = tmp_path / "s.zarr"
    st = FeatureStore.create(path, CFG)
    st.append(*_rows(0, 3))
    arm("enospc@3", match="/vectors/c/")  # the third write call into the partial vectors shard
    with pytest.raises(DiskFullError, match="disk full") as err:
        st.commit()
    assert "vectors/c/0" in str(err.value)
    assert not _temp_files(path)
    assert FeatureStore.open(path).rows == 0  # nothing committed
    disarm()  # space freed
    st.commit()  # the same writer retries: its buffers were untouched
    st.close()
    assert FeatureStore.open(path).rows == 3
    np.testing.assert_array_equal(FeatureStore.open(path).read(), _rows(0, 3)[0])


def test_disk_full_during_append_then_rerun_resumes(tmp_path: Path, inject) -> None:
    arm, disarm = inject
    path = tmp_path / "s.zarr"
    st = FeatureStore.create(path, CFG)
    st.append(*_rows(0, 8))
    st.commit()
    arm("enospc@1", match="/vectors/c/")
    with pytest.raises(DiskFullError):
        st.append(*_rows(8, 16))
    disarm()
    with pytest.raises(BrokenWriterError):  # never an IndexError from a half-updated buffer
        st.append(*_rows(16, 17))
    st.close()
    st = FeatureStore.open(path, mode="a")
    st.append(*_rows(8, 16))
    st.commit()
    st.close()
    np.testing.assert_array_equal(FeatureStore.open(path).read(), _rows(0, 16)[0])


def test_every_failing_write_of_a_commit_leaves_a_store_that_zarr_reads_consistently(tmp_path: Path, inject) -> None:
    zarr = pytest.importorskip("zarr")
    arm, disarm = inject
    base = tmp_path / "base.zarr"
    st = FeatureStore.create(base, CFG, metadata_columns={"n": "int64"})
    x, ids = _rows(0, 6)
    st.append(x, ids, {"n": list(range(6))})
    st.commit()
    st.close()
    # Count the write calls of the next commit.
    faults.reset()
    os.environ["REVISION_FAULT"] = "count"
    try:
        probe = tmp_path / "probe.zarr"
        import shutil

        shutil.copytree(base, probe)
        s = FeatureStore.open(probe, mode="a")
        x2, ids2 = _rows(6, 11)
        s.append(x2, ids2, {"n": list(range(6, 11))})
        before = faults._count
        s.commit()
        points = faults._count - before
        s.close()
    finally:
        disarm()
    assert points >= 8
    all_x = np.concatenate([x, x2])
    for k in range(1, points + 1):
        d = tmp_path / f"k{k}.zarr"
        shutil.copytree(base, d)
        s = FeatureStore.open(d, mode="a")
        s.append(x2, ids2, {"n": list(range(6, 11))})
        faults.reset()
        arm(f"eio@{k}")
        with pytest.raises(WriteError):
            s.commit()
        disarm()
        s.close()
        # The failed commit did not happen, except when only the last step (the fsync of the directory
        # after the commit point's rename) failed: then it is visible, and the error says it may not last.
        committed = 11 if k == points else 6
        assert FeatureStore.open(d).rows == committed, k
        g = zarr.open_group(str(d), mode="r")
        assert g.attrs["revision"]["rows"] == committed
        for name, want in (("vectors", all_x), ("ids", np.array(ids + ids2)), ("meta/n", np.arange(11))):
            arr = g[name]
            n = arr.shape[0]
            assert n in (6, 11), (k, name, n)
            np.testing.assert_array_equal(arr[:n], want[:n], err_msg=f"fault {k}, {name}")
        assert not _temp_files(d), k
        # The next writer sets every shape back to the committed count.
        FeatureStore.open(d, mode="a").close()
        g = zarr.open_group(str(d), mode="r")
        assert {g[n].shape[0] for n in ("vectors", "ids", "meta/n")} == {committed}


def test_commit_fsyncs_each_file_before_its_rename_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(a, b) -> None:  # type: ignore[no-untyped-def]
        events.append(("rename", str(b)))
        real_replace(a, b)

    path = tmp_path / "s.zarr"
    st = FeatureStore.create(path, CFG)
    st.append(*_rows(0, 3))
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    st.commit()
    monkeypatch.undo()
    st.close()
    renames = [i for i, e in enumerate(events) if e[0] == "rename"]
    assert renames, events
    for i in renames:
        target = Path(events[i][1])
        # The file's data reached the disk before its name did, and its directory entry right after.
        assert events[i - 1][0] == "fsync" and ".tmp-" in events[i - 1][1], events[i - 1 : i + 2]
        assert events[i + 1] == ("fsync", str(target.parent)), events[i : i + 2]
    # The group's zarr.json (the commit point) is the last rename.
    assert events[renames[-1]][1] == str(path / "zarr.json")


def test_no_fsync_opt_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setenv("REVISION_NO_FSYNC", "1")
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))
    with FeatureStore.create(tmp_path / "s.zarr", CFG) as st:
        st.append(*_rows(0, 9))
    assert calls == []
    monkeypatch.delenv("REVISION_NO_FSYNC")
    with FeatureStore.open(tmp_path / "s.zarr", mode="a") as st:
        st.append(*_rows(9, 10))
    assert calls


def test_missing_or_truncated_shard_is_a_damaged_store_error(tmp_path: Path) -> None:
    from revision.store.errors import DamagedStoreError

    path = tmp_path / "s.zarr"
    with FeatureStore.create(path, CFG) as st:
        st.append(*_rows(0, 20))
    shard = path / "vectors" / "c" / "1" / "0"
    data = shard.read_bytes()
    shard.write_bytes(data[:10])
    with pytest.raises(DamagedStoreError, match="vectors/c/1/0"):
        FeatureStore.open(path).read()
    shard.unlink()
    with pytest.raises(DamagedStoreError, match="missing"):
        FeatureStore.open(path).read()


def test_dropped_readers_give_their_files_back(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    with FeatureStore.create(path, CFG) as st:
        st.append(*_rows(0, 40))

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    FeatureStore.open(path).read_ids()  # warm imports
    start = fds()
    for _ in range(30):
        s = FeatureStore.open(path)
        s.read_ids()
        s.read_rows([0, 39])
        del s  # never closed
    import gc

    gc.collect()
    assert fds() <= start + 2
