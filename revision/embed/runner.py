"""`revision embed` end to end: validate the input, load the encoder, write one store per modality.

Per modality: one streaming pass validates every item and rejects duplicate ids (bounded memory),
then items [start, stop) of this rank are encoded in deterministic batches and appended in input
order. At group ends (paced by --commit-seconds) the failure log is fsynced and the store committed
with `progress` = how far it got; a rerun with the same flags opens the store, skips the committed items
and produces the same bytes as an uninterrupted run. Under torchrun each rank takes a disjoint,
group-aligned slice and writes its own store part (`<modality>.part<r>-of-<W>.zarr`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from revision.embed.batches import Failure, ImageBatches, ImageUnit, TextBatches, TextUnit
from revision.embed.config import EmbedConfig
from revision.embed.dedupe import find_duplicate
from revision.embed.dist import DistInfo
from revision.embed.encoders import HFDualEncoder, LLM2CLIPEncoder, looks_like_llm2clip
from revision.embed.failures import FailureLog, merge_parts, part_path
from revision.embed.sources import MODALITIES, DatasetSource, check_image_root, existing_ancestor
from revision.embed.stores import META_COLUMN, check_identity, open_store, store_path
from revision.errors import UserError
from revision.store import FeatureStore


@dataclass
class ModalityResult:
    """What one modality's run left in its store (all runs so far, not only this one)."""

    path: Path
    rows: int
    failed: int
    items: int


@dataclass
class EmbedSummary:
    results: dict[str, ModalityResult] = field(default_factory=dict)
    failures_path: Path | None = None


def resolve_device(flag: str, dist: DistInfo) -> torch.device:
    if flag not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device: {flag!r} is not one of auto, cpu, cuda")
    if flag == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    if flag == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", dist.local_rank % torch.cuda.device_count())


def _autocast(device: torch.device, flag: str) -> tuple[torch.dtype | None, str]:
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
    if flag == "auto":
        dt = torch.bfloat16 if device.type == "cuda" else None
    elif flag in table:
        dt = table[flag]
    else:
        raise UserError(f"--dtype: {flag!r} is not one of auto, bf16, fp16, fp32")
    return dt, ("fp32" if dt is None else str(dt).removeprefix("torch."))


def load_encoder(cfg: EmbedConfig, device: torch.device, modalities: list[str]) -> HFDualEncoder:
    image_name = cfg.image_model or cfg.model
    text_name = cfg.text_model or cfg.model
    kind = cfg.encoder
    if kind == "auto":
        kind = "llm2clip" if image_name and looks_like_llm2clip(image_name) else "hf"
    if kind == "llm2clip":
        clip_name = cfg.image_model or cfg.model
        if not clip_name or ("text" in modalities and not cfg.text_model):
            raise UserError(
                "--encoder llm2clip needs --image-model (LLM2CLIP) and, for texts, --text-model (llm2vec LLM)"
            )
        return LLM2CLIPEncoder(
            image_model=clip_name,
            text_model=cfg.text_model,
            image_processor=cfg.image_processor,
            device=device,
            weights_dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
            online=cfg.online,
            need_text="text" in modalities,
        )
    return HFDualEncoder(
        image_model=image_name if "image" in modalities else None,
        text_model=text_name if "text" in modalities else None,
        image_processor=cfg.image_processor,
        device=device,
        online=cfg.online,
        trust_remote_code=cfg.trust_remote_code,
    )


def unit_rows(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised float32 rows on the CPU, and the mask of rows that could be normalised.

    A row with a NaN/Inf or a zero norm has no direction: it is reported, not stored.
    """
    f = feats.float()
    norms = torch.linalg.vector_norm(f, dim=1)
    good = torch.isfinite(f).all(dim=1) & torch.isfinite(norms) & (norms > 0)
    rows = f[good] / norms[good, None]
    return rows.cpu(), good.cpu()


def _bad_feature_failures(items: list[Any], good: torch.Tensor) -> list[Failure]:
    return [
        Failure(it.index, it.id, "non-finite or zero embedding", it.value)
        for it, ok in zip(items, good.tolist(), strict=True)
        if not ok
    ]


class _ModalityWriter:
    """One store plus its failure log, committed together at group ends."""

    def __init__(
        self, store: FeatureStore, log: FailureLog, modality: str, progress: dict[str, Any], commit_seconds: float
    ) -> None:
        self.store, self.log, self.modality = store, log, modality
        self.failed = int(progress.get("failed", 0))
        self.commit_seconds = commit_seconds
        self.last_commit = time.monotonic()

    def group_end(self, next_item: int, stop: int) -> None:
        """A resumable point: commit if it is time to (or the slice is finished)."""
        if next_item >= stop or time.monotonic() - self.last_commit >= self.commit_seconds:
            self.commit(next_item, stop)
            self.last_commit = time.monotonic()

    def add(self, items: list[Any], rows: torch.Tensor, failures: list[Failure]) -> None:
        if items:
            self.store.append(
                rows, [it.id for it in items], metadata={META_COLUMN[self.modality]: [it.value for it in items]}
            )
        failures.sort(key=lambda f: f.index)
        self.log.add(failures)
        self.failed += len(failures)

    def commit(self, next_item: int, stop: int) -> None:
        nbytes = self.log.sync()  # failures first: a crash between the two only leaves extra bytes
        self.store.commit(
            progress={
                "next_item": next_item,
                "failures_bytes": nbytes,
                "failed": self.failed,
                "done": next_item >= stop,
            }
        )


@contextlib.contextmanager
def _progress_bar(total: int, initial: int, desc: str, enabled: bool) -> Iterator[Any]:
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, desc=desc, unit="item", unit_scale=True, disable=not enabled or None)
    try:
        yield bar
    finally:
        bar.close()


def _loader(dataset: Any, cfg: EmbedConfig, device: torch.device) -> DataLoader[Any]:
    workers = cfg.resolved_workers()
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if workers else None,
    )


def rank_range(n_items: int, group_items: int, dist: DistInfo) -> tuple[int, int]:
    """This rank's items: a contiguous run of whole groups, so batches match a one-process run."""
    groups = math.ceil(n_items / group_items)
    g0, g1 = dist.rank * groups // dist.world, (dist.rank + 1) * groups // dist.world
    return min(g0 * group_items, n_items), min(g1 * group_items, n_items)


def _scan(source: DatasetSource, modality: str, workdir: Path) -> int:
    count, dup = find_duplicate(lambda: (it.id for it in source.items(modality)), workdir=workdir)
    if dup is not None:
        ident, a, b = dup
        raise UserError(f"{source.path}: duplicate {modality} id {ident!r} ({modality} items {a} and {b})")
    return count


def _encoder_name(desc: dict[str, Any], modality: str) -> str:
    tower = desc.get(modality, {})
    return f"{tower.get('name')}@{tower.get('revision')}"


def _probe_dim(encoder: HFDualEncoder, modality: str, device: torch.device, amp: torch.dtype | None) -> int:
    """Feature width, from a forward pass on one blank input (also proves the model runs)."""
    with torch.inference_mode(), _amp(device, amp):
        if modality == "image":
            from PIL import Image

            assert encoder.image_pre is not None
            feats = encoder.encode_images(encoder.image_pre([Image.new("RGB", (64, 64))]))
        else:
            assert encoder.text_pre is not None
            feats = encoder.encode_texts(encoder.text_pre.batch(["a"]))
    return int(feats.shape[-1])


def _amp(device: torch.device, amp: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp)


def run_embed(cfg: EmbedConfig) -> EmbedSummary:
    """Run `revision embed` as configured; returns what each store now holds."""
    dist = DistInfo.from_env()
    modalities = list(MODALITIES) if cfg.modality == "both" else [cfg.modality]
    source = DatasetSource.open(cfg.data, cfg.data_format)
    image_root = cfg.image_root if cfg.image_root is not None else cfg.data.parent
    if "image" in modalities and not image_root.is_dir():
        raise UserError(f"--image-root: {image_root} is not a directory")
    if cfg.encoder == "llm2clip" or (cfg.encoder == "auto" and looks_like_llm2clip(cfg.image_model or cfg.model or "")):
        dist.pin_visible_gpu()
    device = resolve_device(cfg.device, dist)
    amp, amp_name = _autocast(device, cfg.dtype)
    dist.init()
    try:
        # Every input is validated and the model loaded before OUT is created: a bad --data,
        # --image-root or --model leaves nothing behind that a corrected rerun would trip over.
        counts = {m: _scan(source, m, existing_ancestor(cfg.out)) for m in modalities}
        ranges = {m: rank_range(counts[m], cfg.group_items, dist) for m in modalities}
        if "image" in modalities:
            check_image_root(source, image_root, *ranges["image"])
        encoder = load_encoder(cfg, device, modalities)
        desc = encoder.describe()
        dims = {m: _probe_dim(encoder, m, device, amp) for m in modalities}
        if len(set(dims.values())) > 1:
            raise UserError(
                f"image features are {dims['image']}-d but text features {dims['text']}-d: the image and text "
                "models do not share one embedding space"
            )
        identities = {}
        for m in modalities:
            start, stop = ranges[m]
            identities[m] = {
                # Only this modality's tower: a later --modality run into the same --out must match.
                "encoder": {"kind": desc["kind"], **desc[m]},
                "source_format": source.format,
                "items_total": counts[m],
                "item_start": start,
                "item_stop": stop,
                "batch_size": cfg.batch_size,
                "group_items": cfg.group_items,
                "compute": {"device": device.type, "autocast": amp_name},
            }
            path = store_path(cfg.out, m, dist)
            if path.exists():  # both stores are checked before either is written
                with FeatureStore.open(path) as st:
                    check_identity(path, st.attrs.get("embed"), identities[m])
        cfg.out.mkdir(parents=True, exist_ok=True)
        summary = EmbedSummary()
        for m in modalities:
            start, stop = ranges[m]
            path = store_path(cfg.out, m, dist)
            store, progress = open_store(path, m, dims[m], cfg, identities[m], _encoder_name(desc, m))
            log = FailureLog(part_path(cfg.out, m, dist.rank), m, int(progress["failures_bytes"]))
            writer = _ModalityWriter(store, log, m, progress, cfg.commit_seconds)
            try:
                first = int(progress["next_item"])
                if not progress.get("done"):
                    with _progress_bar(stop - start, first - start, f"{m} r{dist.rank}", cfg.progress) as bar:
                        if m == "image":
                            _embed_images(cfg, source, encoder, image_root, device, amp, writer, first, stop, bar)
                        else:
                            _embed_texts(cfg, source, encoder, device, amp, writer, first, stop, bar)
                summary.results[m] = ModalityResult(path, store.rows, writer.failed, stop - start)
            finally:
                log.close()
                store.close()
        dist.barrier()
        if dist.rank == 0:
            summary.failures_path = merge_parts(cfg.out, MODALITIES, dist.world)
        dist.barrier()
        return summary
    finally:
        dist.shutdown()


def _embed_images(
    cfg: EmbedConfig,
    source: DatasetSource,
    encoder: HFDualEncoder,
    image_root: Path,
    device: torch.device,
    amp: torch.dtype | None,
    writer: _ModalityWriter,
    first: int,
    stop: int,
    bar: Any,
) -> None:
    assert encoder.image_pre is not None
    dataset = ImageBatches(source, encoder.image_pre, image_root, first, stop, cfg.batch_size)
    unit: ImageUnit
    done = first
    for unit in _loader(dataset, cfg, device):
        failures = list(unit.failures)
        items = unit.ok
        rows = torch.empty(0)
        if unit.pixels is not None:
            with torch.inference_mode(), _amp(device, amp):
                feats = encoder.encode_images(unit.pixels)
            rows, good = unit_rows(feats)
            failures += _bad_feature_failures(items, good)
            items = [it for it, ok in zip(items, good.tolist(), strict=True) if ok]
        # A first batch of nothing but missing files is a wrong --image-root, not bad luck.
        if done == 0 and len(failures) == unit.count and all(f.reason.startswith("missing file") for f in failures):
            raise UserError(
                f"--image-root: none of the first {unit.count} images exist under {image_root} "
                f"(e.g. {failures[0].value!r}); is it the folder the paths in --data are relative to?"
            )
        writer.add(items, rows, failures)
        done = unit.start + unit.count
        bar.update(unit.count)
        # Commit at group boundaries counted from the slice start, as batches.py cuts them.
        if (done - first) % cfg.group_items == 0 or done == stop:
            writer.group_end(done, stop)
    if done == first:  # nothing to encode: still record that this slice is finished
        writer.commit(stop, stop)


def _embed_texts(
    cfg: EmbedConfig,
    source: DatasetSource,
    encoder: HFDualEncoder,
    device: torch.device,
    amp: torch.dtype | None,
    writer: _ModalityWriter,
    first: int,
    stop: int,
    bar: Any,
) -> None:
    assert encoder.text_pre is not None
    dataset = TextBatches(source, encoder.text_pre, first, stop, cfg.batch_size, cfg.group_items)
    unit: TextUnit
    done = first
    for unit in _loader(dataset, cfg, device):
        failures = list(unit.failures)
        items = unit.ok
        rows = torch.empty(0)
        if items:
            gathered: torch.Tensor | None = None
            for pos, inputs in unit.batches:
                with torch.inference_mode(), _amp(device, amp):
                    feats = encoder.encode_texts(inputs).float().cpu()
                if gathered is None:
                    gathered = torch.empty(len(items), feats.shape[1])
                gathered[torch.tensor(pos)] = feats  # back to input order
            assert gathered is not None
            rows, good = unit_rows(gathered)
            failures += _bad_feature_failures(items, good)
            items = [it for it, ok in zip(items, good.tolist(), strict=True) if ok]
        writer.add(items, rows, failures)
        done = unit.start + unit.count
        bar.update(unit.count)
        writer.group_end(done, stop)
    if done == first:
        writer.commit(stop, stop)
