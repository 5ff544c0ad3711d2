"""`revision info`: human table and --json (rows, dim, dtype, modality, chunking, codec, size)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from revision.cli import main
from revision.store import FeatureStore, StoreConfig


@pytest.fixture
def store(tmp_path: Path) -> Path:
    cfg = StoreConfig(modality="image", dim=12, dtype="bfloat16", chunk_rows=16, chunks_per_shard=2, codec="zstd")
    with FeatureStore.create(tmp_path / "s.zarr", cfg, metadata_columns={"caption": "str"}) as s:
        s.append(np.ones((512, 12), np.float32), [f"i{k}" for k in range(512)], {"caption": ["c"] * 512})
    return tmp_path / "s.zarr"


def test_info_json(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(store), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["rows"], info["dim"], info["dtype"], info["modality"]) == (512, 12, "bfloat16", "image")
    assert info["chunk_rows"] == 16 and info["shard_rows"] == 32 and info["codec"] == "zstd"
    assert info["bytes_on_disk"] > 0 and info["compression_ratio"] > 1  # constant rows compress well
    assert info["metadata_columns"] == {"caption": "str"}


def test_info_table(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    lines = dict(
        line.split(None, 1) if "  " not in line else [p.strip() for p in line.split("  ", 1)]
        for line in out.splitlines()
    )
    assert lines["rows"] == "512" and lines["dim"] == "12" and lines["dtype"] == "bfloat16"
    assert "16 rows/chunk, 32 rows/shard" in out and "zstd" in out and "caption (str)" in out


def test_info_on_something_else_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("revision info: error: ") and str(tmp_path) in err and len(err.splitlines()) == 1
    assert main(["info", str(tmp_path / "missing.zarr")]) == 2
