"""The captioner runs of the experiment: train a tiny LLM on one feature store, caption the test images,
score the captions. One run = (method, noise, seed, visual tokens, steps).

Every step resumes through the APIs it calls: `revision.train.loop.train` returns a finished run as it
is and continues a killed one, `revision.train.generate.caption` skips ids already written; the scored
record is kept in RUN/record.json, so a finished run costs nothing on a re-run.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from revision.experiment.config import ExperimentConfig
from revision.experiment.score import score_captions
from revision.store.atomic import atomic_write_bytes

RECORD = "record.json"
CAPTIONS = "captions.jsonl"


@dataclass(frozen=True)
class RunSpec:
    """One captioner run: what it trains on and how."""

    method: str
    """An alignment method, "raw" (unaligned text) or "paired" (the paired-train image rows)."""
    noise: float
    """Train-time feature noise sigma (0: none)."""
    seed: int
    visual_tokens: int
    steps: int
    features: Path
    """The store the captioner trains on."""
    annotations: Path
    """LLaVA-style JSON Lines whose ids are that store's ids and whose caption is the target."""

    @property
    def name(self) -> str:
        return f"{self.method}-n{self.noise:.4f}-s{self.seed}-k{self.visual_tokens}-t{self.steps}"


def write_annotations(texts: Iterable[tuple[str, str]], path: Path) -> Path:
    """id → target caption as LLaVA-style JSON Lines (the caption, and the same as one conversation turn)."""
    if path.is_file():
        return path
    lines = []
    for ident, text in texts:
        conv = [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": text}]
        lines.append(json.dumps({"id": ident, "caption": text, "conversations": conv}))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def build_llm(phrases: Iterable[str], cfg: ExperimentConfig, seed: int, out: Path) -> Path:
    """A random word-level Llama over the world's vocabulary (one per seed: its init is part of the seed)."""
    from revision.store.atomic import replace_dir
    from revision.train.tiny import build_tiny_llm

    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(f".{out.name}.tmp")
    build_tiny_llm(tmp, phrases, hidden=cfg.llm_hidden, layers=cfg.llm_layers, heads=cfg.llm_heads, seed=seed)
    replace_dir(tmp, out)
    return out


def _read_captions(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            doc = json.loads(line)
            out[str(doc["id"])] = str(doc["text"])
    return out


def run_captioner(
    spec: RunSpec,
    cfg: ExperimentConfig,
    *,
    llm: Path,
    test_images: Path,
    truth: dict[str, dict[str, Any]],
    runs_dir: Path,
) -> dict[str, Any]:
    """Train (or reuse) the run of `spec`, caption the test images and return its scored record."""
    from revision.experiment.world import ATTRIBUTES, parse_caption
    from revision.train.config import TrainConfig
    from revision.train.generate import CaptionConfig, caption
    from revision.train.loop import train

    out = runs_dir / spec.name
    n_samples = sum(1 for line in spec.annotations.read_text().splitlines() if line.strip())
    # Enough epochs that the step budget, not the data, ends the run.
    epochs = max(1, math.ceil(spec.steps * cfg.batch_size / n_samples))
    tcfg = TrainConfig(
        stage="pretrain",
        data=spec.annotations,
        features=spec.features,
        llm=llm,
        out=out,
        epochs=epochs,
        max_steps=spec.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        warmup_ratio=0.05,
        visual_tokens=spec.visual_tokens,
        projector=cfg.projector,
        # The LLM is random-initialised: frozen, it could never learn to write a caption.
        train_llm=True,
        seed=spec.seed,
        save_every=max(1, spec.steps // 2),
        max_length=64,
        feature_noise=spec.noise,
        log_every=max(1, spec.steps // 20),
        progress=False,
    )
    record_path = out / RECORD
    if record_path.is_file():
        record = dict(json.loads(record_path.read_text()))
        # A record of other settings is not this run's: train() then refuses the folder, naming them.
        if record.get("train_config") == tcfg.resume_key():
            return record
    t0 = time.perf_counter()
    train(tcfg)
    train_seconds = time.perf_counter() - t0
    captions_path = out / CAPTIONS
    caption(
        CaptionConfig(
            run=out,
            features=test_images,
            out=captions_path,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=256,
            progress=False,
        )
    )
    generated = _read_captions(captions_path)
    scores = score_captions(generated, truth, attributes=ATTRIBUTES, parse=parse_caption)
    record = {
        "method": spec.method,
        "noise": spec.noise,
        "seed": spec.seed,
        "visual_tokens": spec.visual_tokens,
        "steps": spec.steps,
        **{k: scores[k] for k in ("exact_match", "attribute_accuracy", "per_attribute", "token_accuracy")},
        "n_test": scores["n"],
        "train_seconds": round(train_seconds, 2),
        "final_loss": _final_loss(out),
        "train_config": tcfg.resume_key(),
    }
    atomic_write_bytes(record_path, json.dumps(record, indent=1).encode())
    return record


def _final_loss(run: Path) -> float | None:
    path = run / "metrics.jsonl"
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []
    return float(json.loads(lines[-1])["loss"]) if lines else None


def captions_of(spec: RunSpec, runs_dir: Path) -> dict[str, str]:
    """The captions a finished run wrote for the test images (id → text)."""
    return _read_captions(runs_dir / spec.name / CAPTIONS)
