"""`revision caption`: a tiny model trained on the prototype task captions held-out rows correctly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from revision.cli import main
from revision.train.tiny import PROTOTYPE_PHRASES, build_prototype_task, build_tiny_llm


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained for 100 CPU steps (about 40 s) on 800 rows, two visual tokens per row."""
    tmp = tmp_path_factory.mktemp("caption")
    build_tiny_llm(tmp / "llm", [*PROTOTYPE_PHRASES])
    build_prototype_task(tmp / "train", n=800)
    build_prototype_task(tmp / "test", n=200, seed=99, prefix="t")
    rc = main(
        ["train", "pretrain", "--data", str(tmp / "train" / "ann.jsonl"), "--features", str(tmp / "train" / "view"),
         "--llm", str(tmp / "llm"), "--out", str(tmp / "run"), "--train-llm", "--epochs", "2",
         "--visual-tokens", "2", "--json"]
    )  # fmt: skip
    assert rc == 0
    return tmp


def read(path: Path) -> dict[str, str]:
    return {d["id"]: d["text"] for d in map(json.loads, path.read_text().splitlines())}


def test_learned_task_captions_held_out_rows(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = trained / "cap.jsonl"
    rc = main(["caption", "--run", str(trained / "run"), "--features", str(trained / "test" / "store.zarr"),
               "--out", str(out), "--batch-size", "32", "--json"])  # fmt: skip
    assert rc == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["written"] == 200
    want = {d["id"]: d["caption"] for d in map(json.loads, (trained / "test" / "ann.jsonl").read_text().splitlines())}
    got = read(out)
    assert got.keys() == want.keys()
    right = sum(got[i] == want[i] for i in want)
    assert right / len(want) >= 0.95, f"{right}/{len(want)} right; e.g. {list(got.items())[:5]}"
    # A model that ignores the rows cannot do this: four phrases, each about a quarter of the rows.
    assert len(set(got.values())) >= 4

    # Resumable: a killed run leaves whole lines plus maybe a torn one; a re-run completes the rest.
    lines = out.read_text().splitlines(True)
    out.write_text("".join(lines[:50]) + lines[50][:10])
    rc = main(["caption", "--run", str(trained / "run"), "--features", str(trained / "test" / "view"),
               "--out", str(out), "--batch-size", "64", "--json"])  # fmt: skip
    assert rc == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {
        "written": 150, "skipped": 50, "out": str(out)
    }  # fmt: skip
    assert read(out) == got
    assert len(out.read_text().splitlines()) == 200


def test_caption_ids_file_and_bad_input(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = trained / "ids.txt"
    ids.write_text("t5\nt7\n")
    out = trained / "some.jsonl"
    for feats in ("view", "store.zarr"):
        out.unlink(missing_ok=True)
        assert main(["caption", "--run", str(trained / "run"), "--features", str(trained / "test" / feats),
                     "--ids", str(ids), "--out", str(out), "--json"]) == 0  # fmt: skip
        assert list(read(out)) == ["t5", "t7"]
    ids.write_text("t5\nnope\n")
    assert main(["caption", "--run", str(trained / "run"), "--features", str(trained / "test" / "view"),
                 "--ids", str(ids), "--out", str(trained / "x.jsonl")]) == 2  # fmt: skip
    assert "--ids: 1 ids not in --features" in capsys.readouterr().err
    # Rows of another dim than the projector's input.
    build_prototype_task(trained / "d16", n=8, dim=16)
    assert main(["caption", "--run", str(trained / "run"), "--features", str(trained / "d16" / "view"),
                 "--out", str(trained / "y.jsonl")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "rows of dim 16, the run's projector takes 32" in err and err.count("\n") == 1
    assert not (trained / "y.jsonl").exists()
    assert main(["caption", "--run", str(trained), "--features", str(trained / "test" / "view"),
                 "--out", str(trained / "z.jsonl")]) == 2  # fmt: skip
    assert "not a `revision train` run directory" in capsys.readouterr().err
