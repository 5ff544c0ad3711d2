"""`revision export`: DEST is never overwritten or left half-written; bad STORE and flags are named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from revision.cli import main
from revision.errors import UserError
from revision.store import FeatureStore, StoreConfig
from revision.store import export as export_module
from revision.store.export import export


@pytest.fixture
def store(tmp_path: Path) -> Path:
    cfg = StoreConfig(modality="text", dim=4, chunk_rows=8, chunks_per_shard=2)
    with FeatureStore.create(tmp_path / "s.zarr", cfg, metadata_columns={"caption": "str"}) as s:
        s.append(np.arange(120, dtype=np.float16).reshape(30, 4), [f"t{k}" for k in range(30)], {"caption": ["c"] * 30})
    return tmp_path / "s.zarr"


@pytest.mark.parametrize("fmt", ["reference-pkl", "npy", "parquet"])
def test_existing_dest_is_refused_and_untouched(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    assert main(["export", str(store), str(dest), "--format", fmt]) == 2
    assert "DEST already exists" in capsys.readouterr().err
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("fmt", ["reference-pkl", "npy", "parquet"])
def test_a_failure_midway_leaves_no_dest(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    calls = {"n": 0}
    real = export_module._metadata

    def failing(*args: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(export_module, "_metadata", failing)
    with pytest.raises(OSError, match="disk full"):
        export(store, tmp_path / "out", fmt=fmt, rows_per_file=10, block_rows=8)
    assert calls["n"] == 2
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_bad_store_and_flags(tmp_path: Path, store: Path) -> None:
    with pytest.raises(UserError, match="not a feature store"):
        export(tmp_path, tmp_path / "out", fmt="npy")
    with pytest.raises(UserError, match="--format"):
        export(store, tmp_path / "out", fmt="csv")
    with pytest.raises(UserError, match="--rows-per-file"):
        export(store, tmp_path / "out", fmt="reference-pkl", rows_per_file=-1)


def test_memmap_goes_to_the_training_view(tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("revision.store.memmap")
    assert main(["export", str(store), str(tmp_path / "mm"), "--format", "memmap"]) == 0
    assert (tmp_path / "mm").exists()
