"""AlignStats: what `revision fit` learns and `revision apply` needs, saved as JSON (+ a .npz for matrices).

The JSON has a readable header (method, parameters, row counts, scale, traces, inputs, config) and
the vectors as exact float64 lists (Python's float repr round-trips bit for bit). The raw pass-1
moments (n, mean, M2 and the column totals per modality) and the pass-2 centroid sums are kept too,
so statistics of shards merge exactly: with the totals, a merged mean is the merged total over the
count, bit for bit the mean of one fit on all rows. Files written before the totals were saved
still load; their merges fall back to Chan's mean update (within a float64 rounding, which the
float32 rounding of the means can turn into one float32 ulp). D×D matrices (realign-ot) go to a
sidecar `<stats>.npz`. The reference's `trace_stats.pkl` can be written from the same object.

`check_degenerate` judges complete statistics: too few rows or a zero spread in a modality makes
ReAlign's scale meaningless (identical text rows give s ≈ 88,000).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import pickle
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from revision.errors import UserError
from revision.kernels import Moments
from revision.store.atomic import atomic_write_bytes
from revision.store.objio import RemotePath, location

FORMAT = "revision-align-stats"
VERSION = 1


@dataclass(frozen=True, kw_only=True)
class AlignStats:
    """Fitted statistics of one alignment. Vectors are float64 torch tensors of shape (D,)."""

    method: str
    params: dict[str, Any]
    dim: int
    text: Moments
    """Pass-1 moments of the L2-normalised text rows (with the D×D co-moment for realign-ot)."""
    image: Moments | None
    """Pass-1 moments of the L2-normalised image rows; None for methods that do not use images."""
    mu_t: torch.Tensor
    """Text centroid as used by the transform (rounded to float32 when params["round_means_fp32"])."""
    mu_i: torch.Tensor | None
    trace_t: float
    trace_i: float | None
    scale: float | None
    """ReAlign's s = sqrt(T_i / (T_t + 1e-10)); None for methods without one."""
    matrix: torch.Tensor | None = None
    """realign-ot's (D, D) transport matrix A: h = u(μ_i + (u(y) − μ_t) @ A)."""
    n_hat: int = 0
    sum_h: torch.Tensor | None = None
    """Pass-2 column sums of the projected rows h over n_hat text rows; μ̂ = sum_h / n_hat."""
    inputs: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def mu_hat(self) -> torch.Tensor | None:
        if self.sum_h is None or self.n_hat == 0:
            return None
        return self.sum_h / self.n_hat

    def with_centroid(self, n_hat: int, sum_h: torch.Tensor) -> AlignStats:
        return replace(self, n_hat=n_hat, sum_h=sum_h)

    def header(self) -> dict[str, Any]:
        """The readable part: no vectors. Saved as the aligned store's attrs["alignment"]."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "method": self.method,
            "params": dict(self.params),
            "dim": self.dim,
            "rows": {"text": self.text.n, "image": None if self.image is None else self.image.n},
            "scale": self.scale,
            "trace_text": self.trace_t,
            "trace_image": self.trace_i,
            "centroid_rows": self.n_hat,
            "inputs": dict(self.inputs),
            "config": dict(self.config),
        }

    def digest(self) -> str:
        """A short fingerprint of everything the transform reads (to refuse resuming with other stats)."""
        h = hashlib.sha256(json.dumps({"method": self.method, "params": self.params}, sort_keys=True).encode())
        for v in (self.mu_t, self.mu_i, self.sum_h, self.matrix):
            if v is not None:
                h.update(v.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
        h.update(repr((self.scale, self.n_hat)).encode())
        return h.hexdigest()[:16]


def _vec(t: torch.Tensor | None) -> list[float] | None:
    return None if t is None else [float(x) for x in t.detach().to("cpu", torch.float64).tolist()]


def _moments_json(m: Moments | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {"n": m.n, "mean": _vec(m.mean), "m2": _vec(m.m2), "total": _vec(m.total)}


def sidecar_path(path: Path | RemotePath) -> Path | RemotePath:
    """The .npz of matrices beside a stats JSON (a local path or a URL)."""
    return path.with_name(path.name + ".npz")


def save_stats(stats: AlignStats, path: str | os.PathLike[str]) -> Path:
    """Write the stats JSON (and its .npz sidecar when there are matrices) atomically; returns the JSON path."""
    p = location(path)
    doc = stats.header()
    doc["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    doc["vectors"] = {
        "mu_t": _vec(stats.mu_t),
        "mu_i": _vec(stats.mu_i),
        "mu_hat": _vec(stats.mu_hat),
        "sum_h": _vec(stats.sum_h),
    }
    doc["moments"] = {"text": _moments_json(stats.text), "image": _moments_json(stats.image)}
    matrices = {
        name: t.detach().to("cpu", torch.float64).numpy()
        for name, t in (
            ("matrix", stats.matrix),
            ("text_comoment", stats.text.comoment),
            ("image_comoment", None if stats.image is None else stats.image.comoment),
        )
        if t is not None
    }
    doc["sidecar"] = None
    if matrices:
        buf = io.BytesIO()
        np.savez(buf, **matrices)  # type: ignore[arg-type]
        data = buf.getvalue()
        side = sidecar_path(p)
        atomic_write_bytes(side, data)  # before the JSON: a JSON on disk never names a missing sidecar
        doc["sidecar"] = {"file": side.name, "sha256": hashlib.sha256(data).hexdigest(), "arrays": sorted(matrices)}
    atomic_write_bytes(p, (json.dumps(doc, indent=1) + "\n").encode())
    return p


def _tensor(values: Any, dim: int, path: Path, name: str) -> torch.Tensor:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (dim,):
        raise UserError(f"{path}: vector {name!r} has shape {arr.shape}, expected ({dim},)")
    return torch.from_numpy(arr.copy())


def _moments_from(doc: dict[str, Any] | None, dim: int, path: Path, como: np.ndarray | None) -> Moments | None:
    if doc is None:
        return None
    c = None if como is None else torch.from_numpy(como.copy())
    # Files from before the totals were saved have none: merges then use Chan's mean update.
    total = None if doc.get("total") is None else _tensor(doc["total"], dim, path, "total")
    mean, m2 = _tensor(doc["mean"], dim, path, "mean"), _tensor(doc["m2"], dim, path, "m2")
    return Moments(int(doc["n"]), mean, m2, c, total)


def load_stats(path: str | os.PathLike[str]) -> AlignStats:
    """Read a stats file written by `save_stats`; a wrong or damaged file is a UserError naming it."""
    p = location(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"{p}: no such stats file") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{p}: unreadable stats file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UserError(f"{p}: not a revision stats file (no format {FORMAT!r})")
    if int(doc.get("version", 0)) > VERSION:
        raise UserError(f"{p}: stats format {doc['version']} is newer than this revision")
    try:
        dim = int(doc["dim"])
        vec = doc["vectors"]
        arrays: dict[str, np.ndarray] = {}
        if doc.get("sidecar"):
            side = p.with_name(doc["sidecar"]["file"])
            data = side.read_bytes() if side.is_file() else None
            if data is None:
                raise UserError(f"{p}: its sidecar {side} is missing")
            if hashlib.sha256(data).hexdigest() != doc["sidecar"]["sha256"]:
                raise UserError(f"{p}: its sidecar {side} does not match (checksum differs)")
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        mom = doc["moments"]
        sum_h = None if vec.get("sum_h") is None else _tensor(vec["sum_h"], dim, p, "sum_h")
        text = _moments_from(mom["text"], dim, p, arrays.get("text_comoment"))
        assert text is not None
        return AlignStats(
            method=str(doc["method"]),
            params=dict(doc["params"]),
            dim=dim,
            text=text,
            image=_moments_from(mom.get("image"), dim, p, arrays.get("image_comoment")),
            mu_t=_tensor(vec["mu_t"], dim, p, "mu_t"),
            mu_i=None if vec.get("mu_i") is None else _tensor(vec["mu_i"], dim, p, "mu_i"),
            trace_t=float(doc["trace_text"]),
            trace_i=None if doc.get("trace_image") is None else float(doc["trace_image"]),
            scale=None if doc.get("scale") is None else float(doc["scale"]),
            matrix=torch.from_numpy(arrays["matrix"].copy()) if "matrix" in arrays else None,
            n_hat=int(doc.get("centroid_rows") or 0),
            sum_h=sum_h,
            inputs=dict(doc.get("inputs") or {}),
            config=dict(doc.get("config") or {}),
        )
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, AssertionError) as exc:
        raise UserError(f"{p}: damaged stats file ({type(exc).__name__}: {exc})") from None


#: A modality needs this many rows for a spread at all; fewer is refused (a warning under --no-strict).
MIN_ROWS = 2
#: Fewer rows than this give a noisy trace and scale: a warning.
FEW_ROWS = 100
#: A trace at most this fraction of the rows' mean squared norm (trace + ‖μ‖², 1 for unit rows)
#: counts as zero: the rows are all alike (float64 rounding of identical rows leaves ~1e-16).
ZERO_TRACE = 1e-9


def degenerate_findings(stats: AlignStats) -> list[tuple[bool, str]]:
    """(serious, message) for each modality with too few rows or a spread of ~0."""
    found: list[tuple[bool, str]] = []
    for name, m in (("text", stats.text), ("image", stats.image)):
        if m is None:
            continue
        if m.n < MIN_ROWS:
            found.append((True, f"{m.n} {name} row(s): at least {MIN_ROWS} are needed for a spread (trace)"))
            continue
        trace = m.trace
        square_norm = trace + float(m.mean.to(torch.float64) @ m.mean.to(torch.float64))
        if trace <= ZERO_TRACE * square_norm:
            found.append((True, f"the {name} trace is {trace:.3g}, ~0 (≤ {ZERO_TRACE:g} of the rows' mean "
                                f"squared norm {square_norm:.3g}): the {name} rows are all alike"))  # fmt: skip
        elif m.n < FEW_ROWS:
            found.append((False, f"only {m.n} {name} rows (fewer than {FEW_ROWS}): the {name} trace "
                                 f"{trace:.3g} is a noisy estimate"))  # fmt: skip
    return found


def check_degenerate(stats: AlignStats, *, strict: bool, where: str) -> list[str]:
    """Refuse (strict) or warn on stderr about degenerate statistics; returns the warnings printed.

    Serious findings (fewer than MIN_ROWS rows, a trace of ~0) are a UserError under strict and a
    warning under --no-strict; few rows (below FEW_ROWS) are always only a warning.
    """
    scale = "" if stats.scale is None else f" (scale s = {stats.scale:.6g})"
    warned: list[str] = []
    for serious, what in degenerate_findings(stats):
        if serious and strict:
            raise UserError(f"{where}: degenerate statistics{scale}: {what}; pass --no-strict to fit anyway")
        line = f"revision: warning: {where}: {what}{scale}"
        print(line, file=sys.stderr)
        warned.append(line)
    return warned


def trace_stats_record(stats: AlignStats, *, strict_finite: bool) -> dict[str, Any]:
    """The reference's trace_stats.pkl dict: float32 means, Python floats, the strict flag."""
    if stats.mu_i is None or stats.scale is None or stats.trace_i is None or stats.mu_hat is None:
        raise UserError(f"trace_stats.pkl holds ReAlign statistics; method {stats.method!r} has none to export")

    def f32(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float64).numpy().astype(np.float32)

    mu_hat = stats.mu_hat
    return {
        "mu_txt": f32(stats.mu_t),
        "mu_img": f32(stats.mu_i),
        "mu_hat": f32(mu_hat),
        "scale": float(stats.scale),
        "trace_txt": float(stats.trace_t),
        "trace_img": float(stats.trace_i),
        "strict_finite": bool(strict_finite),
    }


def write_pickle(path: str | os.PathLike[str], obj: Any) -> None:
    """Pickle `obj` (protocol 4, the reference's) atomically."""
    atomic_write_bytes(Path(path), pickle.dumps(obj, protocol=4))


def export_trace_stats(stats: AlignStats, path: str | os.PathLike[str], *, strict_finite: bool = True) -> None:
    """Write the reference's trace_stats.pkl for these statistics."""
    write_pickle(path, trace_stats_record(stats, strict_finite=strict_finite))
