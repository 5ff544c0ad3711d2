"""`revision experiment` end to end on a tiny world: every step through the real APIs (world, encoder,
embed, align, diagnose, train, caption, score, report), results.json by its schema, and a re-run that
reuses every finished step. Plus the train-time feature noise the noise rows rely on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from revision.experiment.config import ExperimentConfig, quick_config
from revision.experiment.pipeline import run_experiment
from revision.experiment.results import SCORES, check_results
from revision.experiment.world import ATTRIBUTES
from revision.train.transform import FeatureNoise

TINY_ENCODER = (("pairs", 256), ("steps", 4), ("batch_size", 64), ("hidden", 32), ("layers", 1), ("eval_pairs", 64))


def tiny_config() -> ExperimentConfig:
    return ExperimentConfig(
        seeds=(0,),
        methods=("realign", "c3"),
        n_text=160,
        n_train=160,
        n_calib=48,
        n_test=24,
        encoder="quick",
        encoder_overrides=TINY_ENCODER,
        llm_hidden=32,
        steps=12,
        batch_size=32,
        ablation_tokens=(1, 4),
        ablation_steps=4,
        samples=3,
        diagnose_sample=40,
        max_new_tokens=12,
    )


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], list[str]]:
    out = tmp_path_factory.mktemp("exp")
    lines: list[str] = []
    doc = run_experiment(tiny_config(), out, command="revision experiment --out x", log=lines.append)
    return out, doc, lines


def test_results_follow_the_schema(experiment: tuple[Path, dict[str, Any], list[str]]) -> None:
    out, doc, _ = experiment
    on_disk = json.loads((out / "results.json").read_text())
    check_results(on_disk)
    assert on_disk["runs"] == doc["runs"]
    assert (out / "report.html").is_file()
    sigma = doc["noise_sigma"]
    assert sigma > 0  # "auto": calibrated on the held-out pairs
    grid = {(r["method"], r["noise"]) for r in doc["runs"]}
    assert grid == {(m, n) for m in ("raw", "realign", "c3", "paired") for n in (0.0, sigma)}
    for run in doc["runs"]:
        assert all(0.0 <= run[s] <= 1.0 for s in SCORES)
        assert set(run["per_attribute"]) == set(ATTRIBUTES)
        # attribute_accuracy is the mean of the per-attribute accuracies, exact match at most each of them
        assert run["attribute_accuracy"] == pytest.approx(sum(run["per_attribute"].values()) / len(ATTRIBUTES))
        assert run["exact_match"] <= min(run["per_attribute"].values()) + 1e-12
    assert set(doc["gap"]) == {"raw", "realign", "c3"}
    for metrics in doc["gap"].values():
        assert {"centroid_gap", "linear_separability", "rmg"} <= set(metrics)
    assert "centroid_gap" in doc["encoder"]["gap"]
    assert [r["visual_tokens"] for r in doc["ablation"]["runs"]] == [1, 4]
    assert len(doc["samples"]) == 3
    for sample in doc["samples"]:
        assert (out / sample["image"]).is_file()
        assert set(sample["captions"]) == {"raw", "realign", "c3", "paired"}


def test_the_scores_are_the_captions_scores(experiment: tuple[Path, dict[str, Any], list[str]]) -> None:
    # Re-score one run's captions file independently: the record must hold exactly those numbers.
    from revision.experiment.score import score_captions
    from revision.experiment.world import parse_caption

    out, doc, _ = experiment
    run = next(r for r in doc["runs"] if r["method"] == "paired" and r["noise"] == 0.0)
    name = f"paired-n0.0000-s0-k1-t{run['steps']}"
    captions = {d["id"]: d["text"] for d in map(json.loads, (out / "runs" / name / "captions.jsonl").open())}
    truth = {d["id"]: d for d in map(json.loads, (out / "world" / "test" / "truth.jsonl").open())}
    assert len(captions) == len(truth) == 24
    again = score_captions(captions, truth, attributes=ATTRIBUTES, parse=parse_caption)
    assert again["exact_match"] == run["exact_match"]
    assert again["token_accuracy"] == run["token_accuracy"]


def test_a_rerun_reuses_every_finished_step(experiment: tuple[Path, dict[str, Any], list[str]]) -> None:
    out, doc, lines = experiment
    assert any(line.startswith("6. train") for line in lines)
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/captions.jsonl")}
    again = run_experiment(tiny_config(), out, command="revision experiment --out x", log=lambda _: None)
    assert again["runs"] == doc["runs"]
    assert again["gap"] == doc["gap"]
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # no run trained or captioned again


def test_feature_noise_is_per_row_and_fresh_each_epoch() -> None:
    x = torch.zeros(6, 512)
    rows = torch.arange(10, 16)
    noise = FeatureNoise(0.05, seed=3, epoch=0)
    a = noise(x, rows)
    # The same rows in another batching get the same noise; the std is sigma; no renormalisation.
    b = torch.cat([noise(x[:2], rows[:2]), noise(x[2:], rows[2:])])
    assert torch.equal(a, b)
    assert a.std().item() == pytest.approx(0.05, rel=0.05)
    assert not torch.equal(a, FeatureNoise(0.05, seed=3, epoch=1)(x, rows))
    assert not torch.equal(a, FeatureNoise(0.05, seed=4, epoch=0)(x, rows))
    assert torch.equal(FeatureNoise(0.0, seed=3, epoch=0)(x, rows), x)


def test_config_errors_name_the_flag() -> None:
    from revision.errors import UserError

    with pytest.raises(UserError, match="--methods"):
        quick_config(methods=("realign", "nope"))
    with pytest.raises(UserError, match="--feature-noise"):
        quick_config(feature_noise="loud")
    with pytest.raises(UserError, match="--seeds"):
        quick_config(seeds=())
