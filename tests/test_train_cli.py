"""`revision train` bad input: a one-line error, exit status 2, before any step, nothing left behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from revision.cli import main
from revision.train.tiny import PROTOTYPE_PHRASES, build_prototype_task, build_tiny_llm


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    build_tiny_llm(tmp / "llm", [*PROTOTYPE_PHRASES], hidden=32, layers=1, heads=2)
    build_prototype_task(tmp / "task", n=40)
    build_prototype_task(tmp / "d16", n=40, dim=16)
    return tmp


def train(world: Path, out: Path, *extra: str, stage: str = "pretrain", data: Path | None = None) -> int:
    return main(
        ["train", stage, "--data", str(data or world / "task" / "ann.jsonl"),
         "--features", str(world / "task" / "view"), "--llm", str(world / "llm"), "--out", str(out),
         "--max-steps", "2", "--batch-size", "8", "--json", *extra]
    )  # fmt: skip


def records(world: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(x) for x in (world / "task" / "ann.jsonl").read_text().splitlines()]


def one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("revision train: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_missing_ids_named_and_counted(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recs = records(world)
    for k in (3, 5, 9):
        recs[k]["id"] = f"gone-{k}"
    ann = tmp_path / "ann.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert train(world, tmp_path / "run", data=ann) == 2
    one_line_error(capsys, "record 3: id 'gone-3'", "3 of 40 records", "'gone-5', 'gone-9'", "--on-missing skip")
    assert not (tmp_path / "run").exists()
    assert train(world, tmp_path / "run", "--on-missing", "skip", data=ann) == 0
    assert json.loads(capsys.readouterr().out)["done"]


@pytest.mark.parametrize(("value", "count"), [("Describe.", 0), ("<image> <image>", 2)])
def test_image_placeholder(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, count: int
) -> None:
    recs = records(world)
    recs[7]["conversations"][0]["value"] = value
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(recs))  # a JSON array this time
    for stage in ("pretrain", "finetune"):
        assert train(world, tmp_path / "run", stage=stage, data=ann) == 2
        one_line_error(capsys, "ann.json: record 7 (id 'r7')", f"{count} '<image>' placeholders, expected exactly one")
        assert not (tmp_path / "run").exists()


def test_dim_mismatch_with_projector(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train(world, tmp_path / "pre") == 0
    capsys.readouterr()
    rc = main(
        ["train", "finetune", "--data", str(world / "d16" / "ann.jsonl"), "--features", str(world / "d16" / "view"),
         "--llm", str(world / "llm"), "--out", str(tmp_path / "ft"), "--projector-from", str(tmp_path / "pre")]
    )  # fmt: skip
    assert rc == 2
    one_line_error(capsys, "--projector-from", "projector input dim 32, --features has dim 16")
    assert not (tmp_path / "ft").exists()


def test_not_a_causal_lm(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(cfg).save_pretrained(tmp_path / "bert")
    capsys.readouterr()  # the save's own progress bar
    task = world / "task"
    rc = main(["train", "pretrain", "--data", str(task / "ann.jsonl"), "--features", str(task / "view"),
               "--llm", str(tmp_path / "bert"), "--out", str(tmp_path / "run")])  # fmt: skip
    assert rc == 2
    one_line_error(capsys, "is not a causal LM")
    assert not (tmp_path / "run").exists()


def test_empty_dataset(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann = tmp_path / "ann.json"
    ann.write_text("[]")
    assert train(world, tmp_path / "run", data=ann) == 2
    one_line_error(capsys, "empty dataset")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_unwritable_out(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert train(world, ro / "run") == 2
        one_line_error(capsys, "--out", "cannot write there")
    finally:
        ro.chmod(0o700)


def test_out_is_a_file(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Works as root too: a path through a regular file cannot be created by anyone.
    (tmp_path / "file").write_text("")
    assert train(world, tmp_path / "file" / "run") == 2
    one_line_error(capsys, "--out", "cannot write there")


def test_bad_flags(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train(world, tmp_path / "run", "--visual-tokens", "0") == 2
    one_line_error(capsys, "--visual-tokens must be >= 1")
    assert train(world, tmp_path / "run", "--projector", "conv") == 2
    one_line_error(capsys, "--projector")
    assert not (tmp_path / "run").exists()
