"""export_memmap: the exported matrix and ids equal the store, for every dtype and awkward shapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from revision.store import FeatureStore, StoreConfig, StoreError
from revision.store.idindex import IdIndex
from revision.store.memmap import export_memmap, read_header

SHAPES = [(1, 1), (7, 257), (1023, 64), (4099, 3)]


def make_store(
    path: Path, n: int, d: int, dtype: str, *, chunk_rows: int = 64, attrs: dict | None = None
) -> FeatureStore:
    rng = np.random.default_rng(n * 1000 + d)
    x = rng.standard_normal((n, d)).astype(np.float32) * 3
    ids = [f"row-{i}-{'é' * (i % 3)}" for i in range(n)]
    # Few chunks per shard: small stores still cross shard boundaries.
    cfg = StoreConfig(modality="image", dim=d, dtype=dtype, chunk_rows=chunk_rows, chunks_per_shard=4)
    with FeatureStore.create(path, cfg, attrs=attrs) as s:
        for lo in range(0, n, 500):
            s.append(x[lo : lo + 500], ids[lo : lo + 500])
    return FeatureStore.open(path)


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    diff = got.view(np.uint8).reshape(len(got), -1) != want.view(np.uint8).reshape(len(want), -1)
    rows = np.flatnonzero(diff.any(axis=1))
    assert rows.size == 0, f"{rows.size} rows differ in their bytes, first rows {rows[:5]}"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("shape", SHAPES)
def test_export_equals_store(tmp_path: Path, shape: tuple[int, int], dtype: str) -> None:
    n, d = shape
    store = make_store(tmp_path / "s.zarr", n, d, dtype, attrs={"alignment": {"method": "realign", "scale": 1.25}})
    header = export_memmap(store, tmp_path / "mm", show_progress=False, run_rows=97)
    vec = np.load(tmp_path / "mm" / "vectors.npy", mmap_mode="r")
    assert_same(np.asarray(vec), store.read())
    assert header == read_header(tmp_path / "mm")
    assert (header["rows"], header["dim"], header["dtype"]) == (n, d, dtype)
    assert header["storage_dtype"] == ("uint16" if dtype == "bfloat16" else dtype)
    assert header["alignment"] == {"method": "realign", "scale": 1.25}
    assert header["hash_collisions"] == 0 and header["duplicate_ids"] == 0
    index = IdIndex.open(tmp_path / "mm")
    ids = store.read_ids()
    assert index.ids(np.arange(n)) == list(ids)
    got = index.lookup(ids)
    assert np.array_equal(got, np.arange(n)), f"{(got != np.arange(n)).sum()} ids map to the wrong row"


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 700), chunk_rows=st.sampled_from([1, 8, 64]), block_mult=st.integers(1, 5))
def test_export_any_read_block(tmp_path_factory, n: int, chunk_rows: int, block_mult: int) -> None:
    tmp = tmp_path_factory.mktemp("exp")
    store = make_store(tmp / "s.zarr", n, 5, "float16", chunk_rows=chunk_rows)
    export_memmap(store, tmp / "mm", show_progress=False, block_rows=chunk_rows * block_mult, run_rows=50)
    assert_same(np.load(tmp / "mm" / "vectors.npy"), store.read())
    assert np.array_equal(IdIndex.open(tmp / "mm").lookup(store.read_ids()), np.arange(n))


def test_existing_destination_is_kept_unless_overwrite(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr", 10, 4, "float32")
    first = export_memmap(store, tmp_path / "mm", show_progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "mm").iterdir()}
    # The same export again (a re-run after a failure past its last step) is complete: nothing to do.
    assert export_memmap(store, tmp_path / "mm", show_progress=False) == first
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "mm").iterdir()} == before
    other = make_store(tmp_path / "s2.zarr", 12, 4, "float32")
    with pytest.raises(StoreError, match="already holds a memmap export of another store"):
        export_memmap(other, tmp_path / "mm", show_progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("x")
    with pytest.raises(StoreError, match="not a memmap export"):
        export_memmap(store, tmp_path / "other", show_progress=False)
    assert (tmp_path / "other" / "precious.txt").read_text() == "x"
    header = export_memmap(store, tmp_path / "mm", show_progress=False, overwrite=True)
    assert header["rows"] == 10


EXPORT_FILES = ("vectors.npy", "ids_bytes.npy", "ids_offsets.npy", "id_hash.npy", "id_row.npy", "header.json")


def lens_hash(mat: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """A weak hash (many collisions) keeps the resume test honest about the sort runs."""
    return (lens.astype(np.uint64) * np.uint64(31) + mat[:, -1].astype(np.uint64)) % np.uint64(97)


def assert_same_export(a: Path, b: Path) -> None:
    for name in EXPORT_FILES:
        x, y = (a / name).read_bytes(), (b / name).read_bytes()
        if name == "header.json":
            x, y = (json.loads(t) for t in (x, y))
            x.pop("export_seconds")
            y.pop("export_seconds")
        assert x == y, f"{name} differs between the resumed and the uninterrupted export"


def test_interrupted_export_resumes(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr", 700, 4, "float16", chunk_rows=8)
    kw = {"show_progress": False, "block_rows": 64, "run_rows": 150, "hash_name": "lens97"}
    export_memmap(store, tmp_path / "whole", hash_fn=lens_hash, **kw)
    calls = 0

    def failing_hash(mat: np.ndarray, lens: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 7:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-export
        return lens_hash(mat, lens)

    with pytest.raises(KeyboardInterrupt):
        export_memmap(store, tmp_path / "mm", hash_fn=failing_hash, **kw)
    assert not (tmp_path / "mm").exists()
    with pytest.raises(StoreError, match="not a memmap export"):
        read_header(tmp_path / "mm")
    progress = json.loads((tmp_path / ".mm.partial" / "progress.json").read_text())
    assert progress["rows"] == 6 * 64 and progress["ids"]["runs"] == 2
    export_memmap(store, tmp_path / "mm", hash_fn=lens_hash, **kw)
    assert_same_export(tmp_path / "mm", tmp_path / "whole")
    assert not (tmp_path / ".mm.partial").exists()


def test_damaged_partial_export_starts_over(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr", 700, 4, "float16", chunk_rows=8)
    kw = {"show_progress": False, "block_rows": 64, "run_rows": 150, "hash_name": "lens97"}
    export_memmap(store, tmp_path / "whole", hash_fn=lens_hash, **kw)
    calls = 0

    def failing_hash(mat: np.ndarray, lens: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 8:
            raise KeyboardInterrupt
        return lens_hash(mat, lens)

    with pytest.raises(KeyboardInterrupt):
        export_memmap(store, tmp_path / "mm", hash_fn=failing_hash, **kw)
    runs = sorted((tmp_path / ".mm.partial" / "idindex-runs").glob("run*.hash.npy"))
    assert runs, "the interrupted export should have spilled sort runs"
    runs[0].unlink()  # damage: a sort run the checkpoint relies on is gone
    export_memmap(store, tmp_path / "mm", hash_fn=lens_hash, **kw)
    assert_same_export(tmp_path / "mm", tmp_path / "whole")


KILL_SCRIPT = """
import os, signal, sys
import numpy as np
from revision.store import FeatureStore
from revision.store.memmap import export_memmap
sys.path.insert(0, {tests!r})
from test_memmap_export import lens_hash
calls = 0
def killing_hash(mat, lens):
    global calls
    calls += 1
    if calls == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
    return lens_hash(mat, lens)
export_memmap(FeatureStore.open({store!r}), {dest!r}, hash_fn=killing_hash, show_progress=False,
              block_rows=64, run_rows=150, hash_name="lens97")
"""


@pytest.mark.parametrize("kill_at", [1, 6, 11])
def test_killed_export_resumes(tmp_path: Path, kill_at: int) -> None:
    import subprocess
    import sys

    store = make_store(tmp_path / "s.zarr", 700, 4, "float16", chunk_rows=8)
    kw = {"show_progress": False, "block_rows": 64, "run_rows": 150, "hash_name": "lens97"}
    export_memmap(store, tmp_path / "whole", hash_fn=lens_hash, **kw)
    script = KILL_SCRIPT.format(
        tests=str(Path(__file__).parent), kill_at=kill_at, store=str(tmp_path / "s.zarr"), dest=str(tmp_path / "mm")
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert proc.returncode == -9, proc.stderr
    assert not (tmp_path / "mm").exists()
    export_memmap(store, tmp_path / "mm", hash_fn=lens_hash, **kw)
    assert_same_export(tmp_path / "mm", tmp_path / "whole")


def test_partial_export_of_another_source_starts_over(tmp_path: Path) -> None:
    small = make_store(tmp_path / "a.zarr", 300, 4, "float16", chunk_rows=8)
    big = make_store(tmp_path / "b.zarr", 500, 4, "float16", chunk_rows=8)

    def failing_hash(mat: np.ndarray, lens: np.ndarray) -> np.ndarray:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_memmap(small, tmp_path / "mm", show_progress=False, block_rows=64, hash_fn=failing_hash)
    header = export_memmap(big, tmp_path / "mm", show_progress=False, block_rows=64)
    assert header["rows"] == 500
    assert_same(np.load(tmp_path / "mm" / "vectors.npy"), big.read())
    assert np.array_equal(IdIndex.open(tmp_path / "mm").lookup(big.read_ids()), np.arange(500))


def test_header_names_the_source(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr", 5, 2, "float16")
    export_memmap(store, tmp_path / "mm", show_progress=False)
    header = json.loads((tmp_path / "mm" / "header.json").read_text())
    assert header["source"]["path"] == str((tmp_path / "s.zarr").resolve())
    assert header["source"]["modality"] == "image"
    assert header["format"] == "revision-memmap"


def test_export_memory_is_bounded_by_blocks_not_rows(tmp_path: Path) -> None:
    import tracemalloc

    def peak(n: int, name: str) -> int:
        store = make_store(tmp_path / f"{name}.zarr", n, 32, "float16", chunk_rows=64)
        tracemalloc.start()
        try:
            export_memmap(store, tmp_path / name, show_progress=False, block_rows=256, run_rows=1000)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(2_000, "s"), peak(20_000, "l")
    assert large < 1.5 * small + (1 << 20), f"peak {large / 2**20:.1f} MiB for 20k rows vs {small / 2**20:.1f} for 2k"
