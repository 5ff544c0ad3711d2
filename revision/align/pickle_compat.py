"""`revision align-pkl`: ReAlign on the reference's pickle directories, writing the reference's files.

A drop-in for the reference script: same inputs (`text_embeds_*.pkl` / `image_embeds_*.pkl`, read in
lexicographic order through the restricted unpickler), same outputs (`trace/<stem>_trace.pkl` with every
original key kept and `embed` replaced by the float32 aligned vector, `trace_stats.pkl`, the mean pickle).
It streams one input file at a time: pass 1 reads every text and image file once, pass 2 the text files in
reverse order, pass 3 in order, so the file in memory at the end of one pass is reused by the next
(2K − 2 fewer loads than the naive 3K for K text files). The reference's numerics are kept: μ_t and μ_i
rounded to float32, zero rows left unscaled by the normalisation. Unlike the reference, a NaN/±Inf input
value is an error (strict, the default) naming the file, item and id, and the exit status is non-zero.
Items whose `embed` is None are skipped, as by the reference, and are not written to the trace files.
"""

from __future__ import annotations

import io
import os
import pickle
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from revision.align.config import AlignConfig
from revision.align.methods import METHODS
from revision.align.passes import progress_enabled
from revision.align.stats import AlignStats, trace_stats_record, write_pickle
from revision.errors import UserError
from revision.kernels import Moments, first_nonfinite_row, merge_moments, realign_apply, realign_centroid, row_stats
from revision.store.pickle_io import load_reference_pickle


@dataclass(frozen=True, kw_only=True)
class PickleAlignConfig:
    """The reference script's flags."""

    input_dir: Path
    """Directory of text pickles (--input_dir); every *.pkl, in lexicographic name order."""
    img_input_dir: Path
    """Directory of image pickles (--img_input_dir)."""
    output_dir: Path
    """Where trace/, trace_stats.pkl go (--output_dir)."""
    mean_file_path: Path | None = None
    """Where the float32 μ_t pickle goes (--mean_file_path); None → <output_dir>/mean_vector.pkl."""
    chunk_size: int = 10_000
    """Rows per arithmetic block (--chunk_size): bounds temporaries only; results do not depend on it."""
    strict_finite: bool = True
    """Refuse non-finite values (--strict_finite 1, the default)."""
    save_stats: bool = True
    """Write trace_stats.pkl (--save_stats 1, the default)."""
    progress: bool = True

    def __post_init__(self) -> None:
        if self.chunk_size <= 0:
            raise UserError(f"--chunk_size must be positive, got {self.chunk_size}")
        for flag, d in (("--input_dir", self.input_dir), ("--img_input_dir", self.img_input_dir)):
            if not Path(d).is_dir():
                raise UserError(f"{flag} {d}: no such directory")

    @property
    def mean_path(self) -> Path:
        return self.mean_file_path if self.mean_file_path is not None else self.output_dir / "mean_vector.pkl"


@dataclass
class PickleAlignResult:
    stats: AlignStats
    text_rows: int
    image_rows: int
    outputs: list[Path]
    seconds: dict[str, float] = field(default_factory=dict)
    loads: int = 0


def _pickles(d: Path, flag: str, modality: str) -> list[Path]:
    files = sorted((f for f in d.iterdir() if f.suffix == ".pkl" and f.is_file()), key=lambda f: f.name)
    if not files:
        raise UserError(f"{flag} {d}: empty input: no *.pkl files")
    for f in files:
        _require_modality(flag, f, _modality_by_name(f), modality, "its name")
    return files


# The pickles carry no modality field. The evidence, strongest first: the reference's file names
# (text_embeds_*.pkl, image_embeds_*.pkl, and the trace files derived from them), then the record
# keys the reference's embedding scripts write (texts: caption; images: image_path).
_NAME_PREFIX = {"text_embeds_": "text", "image_embeds_": "image"}
_KEY_MARK = {"caption": "text", "image_path": "image"}


def _modality_by_name(path: Path) -> str | None:
    return next((m for prefix, m in _NAME_PREFIX.items() if path.name.startswith(prefix)), None)


def _modality_by_keys(record: dict[str, Any]) -> str | None:
    found = {m for key, m in _KEY_MARK.items() if key in record}
    return found.pop() if len(found) == 1 else None


def _require_modality(flag: str, path: Path, found: str | None, expected: str, evidence: str) -> None:
    if found is not None and found != expected:
        want = "--img_input_dir" if found == "image" else "--input_dir"
        raise UserError(
            f"{flag}: {path} holds {found} embeddings ({evidence} says so); {flag} takes the {expected} "
            f"pickles, the {found} ones go with {want}"
        )


class _Loader:
    """Loads one pickle at a time and checks its layout; remembers the last file for the next pass.

    Vectors are never stacked for a whole file: `batches` stacks `chunk_size` rows at a time, so
    memory is one file's records plus one batch.
    """

    def __init__(self) -> None:
        self.dim: int | None = None
        self.dim_file: Path | None = None
        self.loads = 0
        self._last: tuple[Path, list[dict[str, Any]], list[int]] | None = None
        # Files already checked and free of None vectors: a reload skips the check. One int per file
        # (files with None vectors, rare, are checked again instead of keeping their index lists).
        self._whole: dict[Path, int] = {}

    def get(self, path: Path) -> tuple[list[dict[str, Any]], list[int]]:
        """(records, indices of the records that have a vector)."""
        if self._last is not None and self._last[0] == path:
            return self._last[1], self._last[2]
        self._last = None  # free the previous file before loading the next: one file in memory
        records = load_reference_pickle(path)
        self.loads += 1
        if self._whole.get(path) == len(records):
            kept = list(range(len(records)))
        else:
            kept = self._check(path, records)
            if len(kept) == len(records):
                self._whole[path] = len(records)
        self._last = (path, records, kept)
        return records, kept

    def forget(self) -> None:
        self._last = None

    def _check(self, path: Path, records: list[dict[str, Any]]) -> list[int]:
        kept = []
        for i, rec in enumerate(records):
            e = rec.get("embed")
            if e is None:
                continue
            if not isinstance(e, np.ndarray) or e.ndim != 1 or e.dtype.kind != "f":
                raise UserError(f"{path}: item {i} (id {rec.get('id')!r}): 'embed' is not a 1-D float numpy vector")
            if self.dim is None:
                self.dim, self.dim_file = int(e.shape[0]), path
            if e.shape[0] != self.dim:
                raise UserError(
                    f"{path}: item {i} (id {rec.get('id')!r}): embed has {e.shape[0]} values, "
                    f"but {self.dim_file} has {self.dim}"
                )
            kept.append(i)
        return kept


def _batches(records: list[dict[str, Any]], kept: list[int], size: int) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(record indices, (n, D) vectors) for `size` records with vectors at a time."""
    for s in range(0, len(kept), size):
        items = kept[s : s + size]
        x = np.stack([records[i]["embed"] for i in items])
        if x.dtype not in (np.float16, np.float32):
            x = x.astype(np.float32)
        yield items, torch.from_numpy(x)


def _screen(path: Path, records: list[dict[str, Any]], items: list[int], x: torch.Tensor) -> None:
    row = first_nonfinite_row(x)
    if row is not None:
        item = items[row]
        raise UserError(
            f"{path}: item {item} (id {records[item].get('id')!r}) holds a NaN or infinite value; "
            "fix the input or pass --strict_finite 0 (non-finite values then count as 0, as in the reference)"
        )


class ListPickleWriter:
    """Writes one pickled `list` item batch by item batch, so the whole list is never in memory.

    The stream is PROTO 4, EMPTY_LIST, then per batch the body of that batch pickled as a list minus
    its own EMPTY_LIST (its MARK … APPENDS operate on the outer list), then STOP. Batches are pickled
    without a memo (`fast`), so no memo index crosses a batch; protocol 3 bodies have no frames (frames
    are optional in protocol 4). Loading gives a list equal to the records written, key order kept.
    Committed atomically: a temporary file renamed over `path` by `close`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self._fh = open(self.tmp, "wb")  # noqa: SIM115 - closed in close() / abort()
        self._fh.write(pickle.PROTO + bytes([4]) + pickle.EMPTY_LIST)

    def add(self, items: list[Any]) -> None:
        if not items:
            return
        buf = io.BytesIO()
        pickler = pickle.Pickler(buf, protocol=3)
        pickler.fast = True  # no memo: batches stay independent
        pickler.dump(items)
        data = buf.getbuffer()
        assert data[2:3] == pickle.EMPTY_LIST and data[-1:] == pickle.STOP
        self._fh.write(data[3:-1])

    def close(self) -> None:
        self._fh.write(pickle.STOP)
        self._fh.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._fh.close()
        self.tmp.unlink(missing_ok=True)


def align_pickles(cfg: PickleAlignConfig) -> PickleAlignResult:
    """Run ReAlign on the pickle directories of `cfg`; outputs are each committed atomically."""
    texts = _pickles(cfg.input_dir, "--input_dir", "text")
    images = _pickles(cfg.img_input_dir, "--img_input_dir", "image")
    loader = _Loader()
    show = progress_enabled(cfg.progress)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    def moments(files: list[Path], what: str) -> Moments:
        total: Moments | None = None
        flag = "--input_dir" if what == "text" else "--img_input_dir"
        for f in tqdm(files, desc=f"pass 1 {what}", unit="file", disable=not show, leave=False):
            records, kept = loader.get(f)
            if kept and _modality_by_name(f) is None:
                keys = ", ".join(map(repr, records[kept[0]]))
                _require_modality(flag, f, _modality_by_keys(records[kept[0]]), what, f"its records' keys {keys}")
            for items, x in _batches(records, kept, cfg.chunk_size):
                if cfg.strict_finite:
                    _screen(f, records, items, x)
                m = row_stats(x, normalize=True)
                total = m if total is None else merge_moments(total, m)
        return total if total is not None else Moments.empty(loader.dim or 1)

    image_m = moments(images, "image")
    loader.forget()
    text_m = moments(texts, "text")
    if text_m.n == 0:
        raise UserError(f"--input_dir {cfg.input_dir}: no item has an embedding")
    if image_m.n == 0:
        raise UserError(f"--img_input_dir {cfg.img_input_dir}: no item has an embedding")
    if image_m.dim != text_m.dim:
        raise UserError(f"--input_dir has dim {text_m.dim} but --img_input_dir has dim {image_m.dim}")
    seconds["pass1"] = time.perf_counter() - t0
    acfg = AlignConfig(method="realign", strict=cfg.strict_finite)
    stats = METHODS["realign"].derive(text_m, image_m, acfg, where=f"--input_dir {cfg.input_dir}")
    assert stats.mu_i is not None and stats.scale is not None

    t1 = time.perf_counter()
    n_hat = 0
    sum_h = torch.zeros(stats.dim, dtype=torch.float64)
    for f in tqdm(texts[::-1], desc="pass 2 centroid", unit="file", disable=not show, leave=False):
        records, kept = loader.get(f)
        for _, x in _batches(records, kept, cfg.chunk_size):
            n, part = realign_centroid(x, stats.mu_t, stats.mu_i, stats.scale)
            n_hat += n
            sum_h += part
    if cfg.strict_finite and not bool(torch.isfinite(sum_h).all()):
        raise UserError(f"--input_dir {cfg.input_dir}: the projected rows hold non-finite values")
    stats = stats.with_centroid(n_hat, sum_h)
    mu_hat = stats.mu_hat
    assert mu_hat is not None
    seconds["pass2"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    outputs = []
    trace_dir = cfg.output_dir / "trace"
    for f in tqdm(texts, desc="pass 3 apply", unit="file", disable=not show, leave=False):
        records, kept = loader.get(f)
        target = trace_dir / f"{f.stem}_trace.pkl"
        writer = ListPickleWriter(target)
        try:
            for items, x in _batches(records, kept, cfg.chunk_size):
                out = realign_apply(x, stats.mu_t, stats.mu_i, stats.scale, mu_hat).numpy()
                if cfg.strict_finite and not np.isfinite(out.sum(dtype=np.float64)):
                    raise UserError(f"{f}: the aligned rows hold non-finite values")
                rows = iter(out)
                batch = []
                for i in items:
                    batch.append({k: (next(rows) if k == "embed" else v) for k, v in records[i].items()})
                writer.add(batch)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        loader.forget()
        del records
        outputs.append(target)
    seconds["pass3"] = time.perf_counter() - t2

    if cfg.save_stats:
        write_pickle(cfg.output_dir / "trace_stats.pkl", trace_stats_record(stats, strict_finite=cfg.strict_finite))
    write_pickle(cfg.mean_path, stats.mu_t.numpy().astype(np.float32))
    seconds["total"] = time.perf_counter() - t0
    return PickleAlignResult(stats, text_m.n, image_m.n, outputs, seconds, loader.loads)
