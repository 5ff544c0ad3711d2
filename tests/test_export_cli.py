"""The acceptance path through the CLI: reference pickles → store → reference pickles, bitwise."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest

from revision.cli import main

GOLDEN = Path(__file__).parent / "data" / "golden" / "llm2clip-d1280" / "input" / "text"


def test_cli_round_trip_and_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, out = tmp_path / "text.zarr", tmp_path / "out"
    assert main(["ingest", str(GOLDEN), str(store), "--format", "reference-pkl", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows_added"] == 700 and summary["mode"] == "new" and summary["id_source"] == "id"
    assert main(["info", str(store), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["rows"], info["dim"], info["dtype"], info["modality"]) == (700, 1280, "float16", "text")
    assert main(["export", str(store), str(out), "--format", "reference-pkl", "--rows-per-file", "350"]) == 0
    assert "exported 700 rows" in capsys.readouterr().out
    for name in ("text_embeds_1.pkl", "text_embeds_2.pkl"):
        assert filecmp.cmp(out / name, GOLDEN / name, shallow=False), name
    # Same arguments again: the finished job is recognised, nothing is appended.
    assert main(["ingest", str(GOLDEN), str(store), "--format", "reference-pkl"]) == 0
    assert "already finished" in capsys.readouterr().out
