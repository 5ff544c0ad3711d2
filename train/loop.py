"""`revision train`: build the run (inputs, model, engine), train, checkpoint, resume, save.

Every check that bad input can fail runs before the first step. A checkpoint is written atomically
every `save_every` optimizer steps with the trainable weights, optimizer, schedule, position
(micro-batches consumed) and RNG states; re-running the same command continues from it, and on the
CPU the final weights equal an uninterrupted run's. Metrics go to RUN/metrics.jsonl, one line a step.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from revision.store.atomic import atomic_write_bytes
from revision.store.lock import WriterLock
from revision.train.checkpoint import (
    CHECKPOINT,
    atomic_torch_save,
    load_checkpoint,
    load_trainable,
    rng_state,
    set_rng_state,
    trainable_state,
)
from revision.train.config import TrainConfig
from revision.train.dataset import FeatureDataset, Transform
from revision.train.engine import DeepSpeedEngine, TorchEngine, cosine_schedule, deepspeed_config
from revision.train.errors import DataError
from revision.train.inputs import open_dataset, open_view
from revision.train.loader import LoaderConfig, make_loader
from revision.train.model import VisionLM, build_projector, choose_attention, load_llm
from revision.train.runfiles import RUN_JSON, load_projector, save_outputs
from revision.train.template import Template
from revision.train.transform import FeatureNoise

METRICS = "metrics.jsonl"


class TextCollate:
    """Adds input_ids / attention_mask / labels to a FeatureCollate batch (runs in the workers)."""

    def __init__(self, template: Template, noise: FeatureNoise | None = None) -> None:
        self.template = template
        self.noise = noise

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.noise is not None:
            batch = {**batch, "embeds": self.noise(batch["embeds"], batch["rows"])}
        pairs = zip(batch["caption"], batch["conversations"], strict=True)
        recs = [{"caption": c, "conversations": v} for c, v in pairs]
        encoded = [self.template.encode(r, f"id {i!r}") for r, i in zip(recs, batch["ids"], strict=True)]
        return {**batch, **self.template.collate(encoded)}


@dataclass
class Run:
    """A prepared run: everything checked, the model built, nothing trained yet."""

    cfg: TrainConfig
    dataset: FeatureDataset
    template: Template
    tokenizer: Any
    model: VisionLM
    attention: str
    device: torch.device
    lock: WriterLock | None = None


def _writable(out: Path) -> bool:
    """Create RUN if needed and prove it is writable; returns whether this call created it."""
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DataError(f"--out {out}: cannot write there ({exc.strerror or exc})") from exc
    return created


def _check_same_run(cfg: TrainConfig) -> dict[str, Any] | None:
    path = cfg.out / RUN_JSON
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    before = doc.get("config", {})
    now = cfg.resume_key()
    diff = sorted(k for k in now if before.get(k) != now[k])
    if diff:
        raise DataError(
            f"--out {cfg.out} holds a run with other settings ({', '.join(diff)} differ): "
            "re-run it unchanged to resume, or choose a new --out"
        )
    return dict(doc)


def prepare(cfg: TrainConfig, transform: Transform | None = None) -> Run:
    """Check all inputs and build the model; on bad input nothing is left in a new RUN.

    The run directory's writer lock is taken first and held by the returned Run (released by
    `train`, or by `Run.lock.release()`): a second job on the same --out is refused, naming the first.
    """
    created = _writable(cfg.out)
    try:
        lock = WriterLock.acquire(cfg.out, f"--out {cfg.out}: this run directory")
    except BaseException:
        if created:
            shutil.rmtree(cfg.out, ignore_errors=True)
        raise
    # Under the lock, what a killed run left half-written is ours to remove (as a store's writer does).
    for stale in [*cfg.out.glob(".*.tmp-*"), *cfg.out.glob(".*.old-*")]:
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    try:
        run = _prepare(cfg, transform)
    except BaseException:
        if created:
            shutil.rmtree(cfg.out, ignore_errors=True)
        lock.release()
        raise
    run.lock = lock
    return run


def _prepare(cfg: TrainConfig, transform: Transform | None) -> Run:
    _check_same_run(cfg)
    view = open_view(cfg.features, cfg.out, progress=cfg.progress)
    if transform is not None and getattr(transform, "dim", view.dim) != view.dim:
        raise DataError(f"--align-stats {cfg.align_stats}: stats of dim {transform.dim}, --features has dim {view.dim}")  # type: ignore[attr-defined]
    pre = load_projector(cfg.projector_from) if cfg.projector_from else None
    if pre is not None:
        if pre["in_dim"] != view.dim:
            raise DataError(
                f"--projector-from {cfg.projector_from}: projector input dim {pre['in_dim']}, "
                f"--features has dim {view.dim}"
            )
        if pre["kind"] != cfg.projector:
            raise DataError(
                f"--projector-from {cfg.projector_from}: a {pre['kind']} projector, --projector is {cfg.projector}"
            )
    attention = choose_attention()
    llm, tokenizer = load_llm(cfg.llm, attention=attention)
    template = Template(tokenizer, cfg.template, max_length=cfg.max_length)
    dataset = open_dataset(cfg.data, view, template, on_missing=cfg.on_missing)
    hidden = int(llm.get_input_embeddings().weight.shape[1])
    if pre is not None and pre["out_dim"] != hidden:
        raise DataError(
            f"--projector-from {cfg.projector_from}: projector output {pre['out_dim']}, "
            f"the LLM's hidden size is {hidden}"
        )
    torch.manual_seed(cfg.seed)
    projector = build_projector(cfg.projector, view.dim, hidden)
    if pre is not None:
        projector.load_state_dict(pre["state"])
    llm.requires_grad_(cfg.trains_llm)
    if cfg.lora_rank:
        llm = _lora(llm, cfg.lora_rank)
    if cfg.gradient_checkpointing:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = VisionLM(llm, projector, visual_tokens=cfg.visual_tokens).to(device)
    return Run(cfg, dataset, template, tokenizer, model, attention, device)


def _lora(llm: Any, rank: int) -> Any:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise DataError("--lora-rank needs the peft package (pip install peft)") from exc
    conf = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(llm, conf)


def _metrics_upto(run: Path, step: int) -> None:
    """Drop metric lines past the checkpoint a resumed run restarts from."""
    path = run / METRICS
    if path.is_file():
        keep = [ln for ln in path.read_text().splitlines(True) if ln.strip() and json.loads(ln)["step"] <= step]
        atomic_write_bytes(path, "".join(keep).encode())


def train(cfg: TrainConfig, transform: Transform | None = None) -> dict[str, Any]:
    """Run (or resume, or find complete) the training job `cfg`; returns run.json's document."""
    run = prepare(cfg, transform)
    try:
        return _train(run, cfg, transform)
    finally:
        if run.lock is not None:
            run.lock.release()


def _train(run: Run, cfg: TrainConfig, transform: Transform | None) -> dict[str, Any]:
    doc = _check_same_run(cfg)
    if doc is not None and doc.get("done"):
        return doc
    atomic_write_bytes(cfg.out / RUN_JSON, json.dumps({"config": cfg.resume_key(), "done": False}, indent=1).encode())
    model, ds = run.model, run.dataset
    lcfg = LoaderConfig(batch_size=cfg.batch_size, seed=cfg.seed, num_workers=cfg.num_workers, drop_last=False)
    per_epoch = -(-len(ds) // cfg.batch_size)
    total = (cfg.epochs * per_epoch) // cfg.grad_accum
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    if total == 0:
        raise DataError(f"--grad-accum {cfg.grad_accum}: more than the {cfg.epochs * per_epoch} batches of the run")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = cosine_schedule(optimizer, total, int(total * cfg.warmup_ratio))
    engine: TorchEngine
    if cfg.deepspeed is not None:
        hidden = int(model.llm.get_input_embeddings().weight.shape[1])
        accum, clip = cfg.grad_accum, cfg.max_grad_norm
        ds_cfg = deepspeed_config(cfg.deepspeed, micro_batch=cfg.batch_size, accum=accum, clip=clip, hidden=hidden)
        engine = DeepSpeedEngine(model, optimizer, scheduler, accum=accum, clip=clip, config=ds_cfg)
    else:
        engine = TorchEngine(model, optimizer, scheduler, accum=cfg.grad_accum, clip=cfg.max_grad_norm)
    step = 0
    ckpt = load_checkpoint(cfg.out)
    if ckpt is not None:
        if not isinstance(engine, DeepSpeedEngine):  # DeepSpeed restores the weights from its own files
            load_trainable(model, ckpt["trainable"])
        engine.load_state_dict(ckpt["engine"], cfg.out)
        set_rng_state(ckpt["rng"])
        step = int(ckpt["step"])
    _metrics_upto(cfg.out, step)
    print(
        f"revision train {cfg.stage}: {len(ds):,} samples, {total:,} steps of {cfg.batch_size * cfg.grad_accum} "
        f"(from step {step}), engine {engine.name}, attention {run.attention}, device {run.device.type}",
        file=sys.stderr,
    )
    _loop(run, engine, step, total, per_epoch, lcfg, transform)
    save_outputs(run.cfg, model, run.tokenizer, merge_lora=bool(cfg.lora_rank))
    done = {"config": cfg.resume_key(), "done": True, "steps": total, "attention": run.attention, "engine": engine.name}
    atomic_write_bytes(cfg.out / RUN_JSON, json.dumps(done, indent=1).encode())
    return done


def _loop(
    run: Run,
    engine: TorchEngine,
    step: int,
    total: int,
    per_epoch: int,
    lcfg: LoaderConfig,
    transform: Transform | None,
) -> None:
    cfg, model = run.cfg, run.model
    model.train()
    bar = tqdm(total=total, initial=step, disable=not cfg.progress, unit="step", dynamic_ncols=True)
    losses: list[float] = []
    t0, seen = time.perf_counter(), 0
    with open(cfg.out / METRICS, "a") as metrics:
        while step < total:
            micro = step * cfg.grad_accum + len(losses)
            epoch, within = divmod(micro, per_epoch)
            noise = FeatureNoise(cfg.feature_noise, cfg.seed, epoch) if cfg.feature_noise else None
            post = TextCollate(run.template, noise)
            loader = make_loader(run.dataset, lcfg, transform=transform, epoch=epoch, start_step=within, post=post)
            for batch in loader:
                loss = engine.loss(batch)
                engine.backward(loss)
                losses.append(float(loss.detach()))
                seen += len(batch["ids"])
                if len(losses) < cfg.grad_accum:
                    continue
                norm = engine.step()
                step += 1
                rate = seen / max(1e-9, time.perf_counter() - t0)
                mean = sum(losses) / len(losses)
                losses = []
                bar.update(1)
                bar.set_postfix(loss=f"{mean:.4f}", samples_s=f"{rate:.1f}")
                if step % cfg.log_every == 0 or step == total:
                    lr = engine.scheduler.get_last_lr()[0]
                    line = {"step": step, "epoch": epoch, "loss": mean, "lr": lr, "grad_norm": norm}
                    line["samples_per_s"] = rate
                    metrics.write(json.dumps(line) + "\n")
                    metrics.flush()
                if step % cfg.save_every == 0 or step == total:
                    _save_checkpoint(run, engine, step)
                if step == total:
                    break
    bar.close()


def _save_checkpoint(run: Run, engine: TorchEngine, step: int) -> None:
    extra = engine.save_extra(run.cfg.out, step)
    state = {
        "step": step,
        "config": run.cfg.resume_key(),
        # Under DeepSpeed the weights are in its files (partitioned under ZeRO-3), not copied here.
        "trainable": {} if extra else trainable_state(run.model),
        "engine": {**engine.state_dict(), **extra},
        "rng": rng_state(),
    }
    atomic_torch_save(state, run.cfg.out / CHECKPOINT)
    if "deepspeed_tag" in extra:
        DeepSpeedEngine.prune(run.cfg.out, extra["deepspeed_tag"])
