"""The experiment end to end, through the Python APIs: world splits → dual encoder → embed → align with
every method → diagnose → calibrate the feature noise → captioners on each aligned text store →
caption the held-out test images → score → results.json (+ the HTML report).

Layout of OUT (every step reuses what a previous run finished):
  world/{text,train,calib,test}/   the splits (dataset.json, images/, truth.jsonl)
  encoder/                         the dual encoder (and encoder.json, its training record)
  stores/<split>/{text,image}.zarr the embeddings
  aligned/<method>.zarr            the aligned unpaired text
  gap.json                         diagnose metrics (methods vs images; raw text vs images on held-out pairs)
  llm/seed<k>/, ann/*.jsonl        the random word-level LLMs and the training annotations
  runs/<method>-n<σ>-s<seed>-k<tokens>-t<steps>/   one captioner run (record.json, captions.jsonl)
  results.json, report.html

The splits are disjoint draws: the unpaired text describes scenes drawn apart from every image; the
paired-train images are the image side of the alignment fit (and the "paired" reference's inputs);
the calibration pairs measure the encoder's gap and set the noise; the test images are only captioned.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from revision.experiment.config import ExperimentConfig
from revision.experiment.results import SCHEMA, summarise, table, write_results
from revision.experiment.runs import RunSpec, build_llm, captions_of, run_captioner, write_annotations
from revision.store import FeatureStore
from revision.store.atomic import atomic_write_bytes

SPLITS = ("text", "train", "calib", "test")
Log = Callable[[str], None]


class Steps:
    """Numbered, timed steps: prints "N. what ... [s]" and keeps the seconds for results.json."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.timings: dict[str, float] = {}
        self._n = 0

    def run(self, key: str, what: str, fn: Callable[[], Any]) -> Any:
        self._n += 1
        t0 = time.perf_counter()
        value = fn()
        self.timings[key] = round(time.perf_counter() - t0, 2)
        self.log(f"{self._n}. {what} [{self.timings[key]:.1f} s]")
        return value


def _split_seed(cfg: ExperimentConfig, split: str) -> int:
    # One seed per split: the draws of different splits never share a stream.
    return cfg.world_seed * 1000 + SPLITS.index(split) + 1


def write_world(cfg: ExperimentConfig, root: Path) -> dict[str, Path]:
    from revision.experiment.world import sample_scenes, write_split

    sizes = {"text": cfg.n_text, "train": cfg.n_train, "calib": cfg.n_calib, "test": cfg.n_test}
    paths = {}
    for split in SPLITS:
        data = root / split / "dataset.json"
        if not data.is_file():  # write_split renames a finished split into place: present means whole
            seed = _split_seed(cfg, split)
            write_split(
                sample_scenes(sizes[split], seed),
                root,
                split,
                seed=seed,
                px=cfg.px,
                images=split != "text",
                texts=split != "test",
                partial_rate=cfg.text_partial_rate if split == "text" else 0.0,
            )
        paths[split] = data
    return paths


def train_or_reuse_encoder(cfg: ExperimentConfig, out: Path) -> dict[str, Any]:
    from revision.experiment.encoder import train_encoder

    return train_encoder(cfg.encoder_config(), out)  # returns a finished encoder of this config as it is


#: Everything computed from the encoder's embeddings: stale once the encoder is another one.
DOWNSTREAM = ("stores", "aligned", "gap.json", "runs")


def drop_stale(record: dict[str, Any], out: Path, log: Log) -> None:
    """Remove what an earlier encoder produced when the encoder changed (another preset or code):
    stores, aligned stores, gap metrics and captioner runs would mix two encoders otherwise."""
    mark = out / "stores.encoder.json"
    key = json.dumps({"config": record.get("config"), "final_loss": record.get("final_loss")}, sort_keys=True)
    if mark.is_file() and mark.read_text() != key:
        log(f"   the encoder changed: removing {', '.join(DOWNSTREAM)} of the previous one")
        for name in DOWNSTREAM:
            path = out / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    atomic_write_bytes(mark, key.encode())


def embed_splits(world: dict[str, Path], encoder: Path, root: Path) -> dict[str, dict[str, Path]]:
    from revision.embed.config import EmbedConfig
    from revision.embed.runner import run_embed

    wanted = {"text": ("text",), "train": ("image", "text"), "calib": ("image", "text"), "test": ("image",)}
    stores: dict[str, dict[str, Path]] = {}
    for split, modalities in wanted.items():
        modality = "both" if len(modalities) == 2 else modalities[0]
        ecfg = EmbedConfig(
            data=world[split],
            out=root / split,
            model=str(encoder),
            modality=modality,
            device="cpu",
            store_dtype="float32",
            workers=0,
            progress=False,
        )
        summary = run_embed(ecfg)  # resumes: a finished store is opened and left as it is
        stores[split] = {m: summary.results[m].path for m in modalities}
    return stores


def _aligned_done(path: Path, rows: int) -> bool:
    if not path.exists():
        return False
    with FeatureStore.open(path) as st:
        return st.rows == rows and bool(st.attrs.get("alignment"))


def align_all(methods: tuple[str, ...], text: Path, image: Path, root: Path) -> dict[str, Path]:
    from revision.align import align_stores

    with FeatureStore.open(text) as st:
        rows = st.rows
    out = {}
    for method in methods:
        path = root / f"{method}.zarr"
        if not _aligned_done(path, rows):
            align_stores(text, image, path, method=method, progress=False)
        out[method] = path
    return out


def measure_gaps(
    cfg: ExperimentConfig, stores: dict[str, dict[str, Path]], aligned: dict[str, Path], path: Path
) -> dict[str, Any]:
    """{"methods": {raw, <method>...: metrics of that text vs the paired-train images},
    "encoder": metrics of raw text vs images on the held-out pairs}."""
    from revision.diagnose import diagnose
    from revision.diagnose.pipeline import metrics_json

    if path.is_file():
        doc = dict(json.loads(path.read_text()))
        if set(doc["methods"]) == {"raw", *aligned}:
            return doc
    text, image = stores["text"]["text"], stores["train"]["image"]
    sample = min(cfg.diagnose_sample, cfg.n_text, cfg.n_train)
    metrics = diagnose(text, image, aligned=dict(aligned), sample=sample)
    if len(aligned) == 1:  # diagnose keys a single aligned store "aligned"
        metrics = {"raw": metrics["raw"], next(iter(aligned)): metrics["aligned"]}
    calib = stores["calib"]
    held_out = diagnose(calib["text"], calib["image"], sample=min(cfg.diagnose_sample, cfg.n_calib), pairs=True)
    doc = {"methods": metrics, "encoder": held_out["raw"]}
    atomic_write_bytes(path, metrics_json(doc).encode())
    return doc


def _unit_rows(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with FeatureStore.open(path) as st:
        x = np.asarray(st.read_rows(np.arange(st.rows)), dtype=np.float64)
        ids = np.concatenate([block for _, block in st.iter_ids()])
    return x / np.linalg.norm(x, axis=1, keepdims=True), ids


def calibrate_noise(text: Path, image: Path) -> float:
    """sigma from the held-out pairs: the per-coordinate RMS of (text − image) once the mean difference
    (the centroid gap) is taken out, sqrt(mean ‖d − mean d‖² / D). An alignment closes the centroid
    gap; this is the pair-level mismatch that is left, which the noise is meant to cover (C3's idea)."""
    xt, ids_t = _unit_rows(text)
    xi, ids_i = _unit_rows(image)
    order = {str(i): k for k, i in enumerate(ids_i)}
    pair = np.array([order[str(i)] for i in ids_t])
    d = xt - xi[pair]
    d -= d.mean(axis=0)
    return float(np.sqrt((d**2).sum(axis=1).mean() / d.shape[1]))


def _texts(data: Path) -> list[tuple[str, str]]:
    return [(str(t["id"]), str(t["text"])) for t in json.loads(data.read_text())["texts"]]


def _truth(path: Path) -> dict[str, dict[str, Any]]:
    return {str(d["id"]): d for d in (json.loads(ln) for ln in path.read_text().splitlines() if ln.strip())}


def run_experiment(cfg: ExperimentConfig, out: Path, *, command: str, log: Log = print) -> dict[str, Any]:
    """Run (or resume) the experiment into `out`; returns the results document also written to
    out/results.json, after printing the summary table and writing out/report.html."""
    from revision.experiment.world import vocabulary

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    steps = Steps(log)
    sizes = f"{cfg.n_text} unpaired captions, {cfg.n_train} + {cfg.n_calib} pairs, {cfg.n_test} test images"
    world = steps.run("world", f"world: {sizes} -> {out / 'world'}", lambda: write_world(cfg, out / "world"))
    encoder = steps.run(
        "encoder", f"dual encoder ({cfg.encoder} preset) -> {out / 'encoder'}",
        lambda: train_or_reuse_encoder(cfg, out / "encoder"),
    )  # fmt: skip
    drop_stale(encoder, out, log)
    stores = steps.run(
        "embed", f"embed the splits -> {out / 'stores'}", lambda: embed_splits(world, out / "encoder", out / "stores")
    )
    text_store, image_store = stores["text"]["text"], stores["train"]["image"]
    aligned = steps.run(
        "align", f"align the unpaired text with {', '.join(cfg.methods)} -> {out / 'aligned'}",
        lambda: align_all(cfg.methods, text_store, image_store, out / "aligned"),
    )  # fmt: skip
    gaps = steps.run(
        "diagnose",
        "diagnose each method's text vs the images",
        lambda: measure_gaps(cfg, stores, aligned, out / "gap.json"),
    )
    log(f"   held-out pairs: centroid gap {gaps['encoder'].get('centroid_gap', float('nan')):.3f}, "
        f"linear separability {gaps['encoder'].get('linear_separability', float('nan')):.3f}")  # fmt: skip
    sigma = 0.0
    if cfg.noise_levels:
        fn = cfg.feature_noise
        sigma = calibrate_noise(stores["calib"]["text"], stores["calib"]["image"]) if fn == "auto" else float(fn)  # type: ignore[arg-type]
        log(f"   feature noise sigma = {sigma:.4f}" + (" (calibrated on the held-out pairs)" if fn == "auto" else ""))
    noises = (0.0, sigma) if sigma > 0 else (0.0,)

    llms = {seed: build_llm(vocabulary(), cfg, seed, out / "llm" / f"seed{seed}") for seed in cfg.seeds}
    ann_text = write_annotations(_texts(world["text"]), out / "ann" / "text.jsonl")
    ann_paired = write_annotations(_texts(world["train"]), out / "ann" / "paired.jsonl")
    truth = _truth(world["test"].parent / "truth.jsonl")
    test_images = stores["test"]["image"]

    def spec(method: str, noise: float, seed: int, tokens: int, n_steps: int) -> RunSpec:
        if method == "paired":
            return RunSpec(method, noise, seed, tokens, n_steps, image_store, ann_paired)
        feats = text_store if method == "raw" else aligned[method]
        return RunSpec(method, noise, seed, tokens, n_steps, feats, ann_text)

    order = ["raw", *cfg.methods, "paired"]
    grid = [spec(m, n, s, cfg.visual_tokens, cfg.steps) for s in cfg.seeds for m in order for n in noises]
    ablation = [
        spec(cfg.ablation_method, 0.0, cfg.seeds[0], k, cfg.ablation_steps or cfg.steps) for k in cfg.ablation_tokens
    ]

    def train_all() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        records = []
        for k, s in enumerate([*grid, *ablation], start=1):
            t0 = time.perf_counter()
            rec = run_captioner(s, cfg, llm=llms[s.seed], test_images=test_images, truth=truth, runs_dir=out / "runs")
            log(f"   [{k}/{len(grid) + len(ablation)}] {s.name:<36} exact {rec['exact_match']:.3f}  "
                f"attr {rec['attribute_accuracy']:.3f}  token {rec['token_accuracy']:.3f}  "
                f"[{time.perf_counter() - t0:.1f} s]")  # fmt: skip
            records.append({k: v for k, v in rec.items() if k != "train_config"})
        return records[: len(grid)], records[len(grid) :]

    runs, ablation_runs = steps.run(
        "train", f"train {len(grid) + len(ablation)} captioners, caption {cfg.n_test} test images, score", train_all
    )
    first = {m: spec(m, 0.0, cfg.seeds[0], cfg.visual_tokens, cfg.steps) for m in order}
    captions = {m: captions_of(s, out / "runs") for m, s in first.items()}
    samples = [
        {
            "id": ident,
            "image": f"world/test/images/{ident}.png",
            "truth": truth[ident]["caption"],
            "captions": {m: captions[m][ident] for m in order},
        }
        for ident in list(truth)[: cfg.samples]
    ]
    summary = summarise(runs, order)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "command": command,
        "quick": cfg.quick,
        "seeds": list(cfg.seeds),
        "config": cfg.to_json(),
        "timings": steps.timings,
        "encoder": {**encoder, "gap": gaps["encoder"]},
        "noise_sigma": sigma,
        "runs": runs,
        "summary": summary,
        "gap": gaps["methods"],
        "samples": samples,
        "ablation": {"method": cfg.ablation_method, "runs": ablation_runs} if ablation_runs else {},
    }
    write_results(doc, out / "results.json")
    log("\n" + table(summary) + "\n")
    report = steps.run("report", "HTML report", lambda: _report(doc, out))
    doc["timings"] = steps.timings
    write_results(doc, out / "results.json")
    log(f"results: {out / 'results.json'}  report: {report}")
    return doc


def _report(doc: dict[str, Any], out: Path) -> Path:
    from revision.experiment.report import render_report

    return render_report(doc, out)
