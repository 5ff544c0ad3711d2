"""The training loop: what each stage trains and saves, --projector-from, LoRA, accumulation, --align-stats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from revision.cli import main
from revision.train.checkpoint import load_checkpoint
from revision.train.config import TrainConfig
from revision.train.loop import prepare
from revision.train.tiny import PROTOTYPE_PHRASES, build_prototype_task, build_tiny_llm


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("loop")
    build_tiny_llm(tmp / "llm", [*PROTOTYPE_PHRASES, "Describe the image briefly ."], hidden=32, layers=1, heads=2)
    build_prototype_task(tmp / "task", n=64)
    return tmp


def train(world: Path, out: Path, *extra: str, stage: str = "pretrain", features: Path | None = None) -> dict:  # type: ignore[type-arg]
    feats = features or world / "task" / "view"
    argv = ["train", stage, "--data", str(world / "task" / "ann.jsonl"), "--features", str(feats),
            "--llm", str(world / "llm"), "--out", str(out), "--batch-size", "8", "--json", *extra]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "run.json").read_text())  # type: ignore[no-any-return]


def losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_pretrain_trains_and_saves_the_projector_alone(world: Path, tmp_path: Path) -> None:
    doc = train(world, tmp_path / "pre", "--max-steps", "4")
    assert doc["done"] and doc["steps"] == 4 and doc["engine"] == "torch" and doc["attention"] == "sdpa"
    ckpt = load_checkpoint(tmp_path / "pre")
    assert ckpt is not None and ckpt["step"] == 4
    assert ckpt["trainable"] and all(k.startswith("projector.") for k in ckpt["trainable"])
    assert not (tmp_path / "pre" / "llm").exists()
    assert (tmp_path / "pre" / "projector.pt").stat().st_size < 64 << 10
    assert len(losses(tmp_path / "pre")) == 4

    # finetune starts from that projector and trains the LLM as well (conversation template).
    cfg = TrainConfig(stage="finetune", data=world / "task" / "ann.jsonl", features=world / "task" / "view",
                      llm=world / "llm", out=tmp_path / "ft", projector_from=tmp_path / "pre", max_steps=2,
                      batch_size=8, progress=False)  # fmt: skip
    run = prepare(cfg)
    pre = torch.load(tmp_path / "pre" / "projector.pt")["state"]
    for k, v in run.model.projector.state_dict().items():
        assert torch.equal(v, pre[k]), k
    assert run.template.kind == "conversation"
    assert all(p.requires_grad for p in run.model.parameters())
    assert run.lock is not None
    run.lock.release()  # prepare() holds the run directory's writer lock for the caller
    train(world, tmp_path / "ft", "--projector-from", str(tmp_path / "pre"), "--max-steps", "2", stage="finetune")
    assert (tmp_path / "ft" / "llm" / "config.json").is_file()


def test_lora_finetune(world: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    train(world, tmp_path / "lora", "--lora-rank", "4", "--max-steps", "2", stage="finetune")
    ckpt = load_checkpoint(tmp_path / "lora")
    assert ckpt is not None
    names = list(ckpt["trainable"])
    assert any("lora_" in n for n in names) and any(n.startswith("projector.") for n in names)
    assert not any("lora_" not in n and n.startswith("llm.") for n in names)
    # Saved merged: a plain LLM folder that caption (or anything else) loads without peft.
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "lora" / "llm" / "model.safetensors")
    assert not any("lora" in k for k in saved)
    out = tmp_path / "cap.jsonl"
    assert main(["caption", "--run", str(tmp_path / "lora"), "--features", str(world / "task" / "view"),
                 "--out", str(out), "--max-new-tokens", "3", "--json"]) == 0  # fmt: skip
    assert len(out.read_text().splitlines()) == 64


def test_grad_accumulation_equals_one_big_batch(world: Path, tmp_path: Path) -> None:
    # Every caption has four words, so per-batch token means and the full-batch mean agree.
    big = train(world, tmp_path / "big", "--max-steps", "2", "--batch-size", "16")
    acc = train(world, tmp_path / "acc", "--max-steps", "2", "--batch-size", "8", "--grad-accum", "2")
    assert big["done"] and acc["done"]
    a = torch.load(tmp_path / "big" / "projector.pt")["state"]
    b = torch.load(tmp_path / "acc" / "projector.pt")["state"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_align_stats_at_collate_time_equals_aligned_store(world: Path, tmp_path: Path) -> None:
    build_prototype_task(tmp_path / "img", n=64, seed=5, modality="image")
    text, img = world / "task" / "store.zarr", tmp_path / "img" / "store.zarr"
    stats, aligned = tmp_path / "s.json", tmp_path / "aligned.zarr"
    assert main(["fit", "--text", str(text), "--image", str(img), "--stats", str(stats), "--no-progress"]) == 0
    assert main(["apply", "--text", str(text), "--stats", str(stats), "--out", str(aligned), "--no-progress"]) == 0
    on_disk = train(world, tmp_path / "a", "--max-steps", "3", features=aligned)
    assert on_disk["done"] and (tmp_path / "a" / "features.view" / "header.json").is_file()
    train(world, tmp_path / "b", "--max-steps", "3", "--align-stats", str(stats))
    train(world, tmp_path / "raw", "--max-steps", "3")
    a, b, raw = losses(tmp_path / "a"), losses(tmp_path / "b"), losses(tmp_path / "raw")
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 2e-6, (a, b)
    # The comparison bites: the raw rows (these two modalities are close) give another curve.
    assert max(abs(x - y) for x, y in zip(a, raw, strict=True)) > 2e-5, (a, raw)
