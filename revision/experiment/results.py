"""results.json of `revision experiment`: its schema, the per-(method, noise) summary, the check that a
document follows the schema, and the terminal table.

The report (`revision.experiment.report`) and the benchmark read these names; schema 1 is:
{"schema", "command", "quick", "seeds", "config", "timings", "encoder", "noise_sigma", "runs",
 "summary", "gap", "samples", "ablation"}; see `check_results` for the keys of each part.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from revision.store.atomic import atomic_write_bytes

SCHEMA = 1
SCORES = ("exact_match", "attribute_accuracy", "token_accuracy")
TOP_KEYS: tuple[str, ...] = ("schema", "command", "quick", "seeds", "config", "timings", "encoder", "noise_sigma")
TOP_KEYS += ("runs", "summary", "gap", "samples", "ablation")
RUN_KEYS = ("method", "noise", "seed", "visual_tokens", *SCORES, "per_attribute", "train_seconds")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    # Sample standard deviation (n - 1): the spread a reader expects of seeds; 0 for one seed.
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: Iterable[Mapping[str, Any]], order: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (method, noise): n runs and the mean and std of each score, methods in `order`."""
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault((str(run["method"]), float(run["noise"])), []).append(run)
    rank = {m: i for i, m in enumerate(order)}
    rows = []
    for method, noise in sorted(groups, key=lambda k: (rank.get(k[0], len(rank)), k[0], k[1])):
        group = groups[(method, noise)]
        row: dict[str, Any] = {"method": method, "noise": noise, "n": len(group)}
        for score in SCORES:
            row[f"{score}_mean"], row[f"{score}_std"] = _mean_std([float(r[score]) for r in group])
        rows.append(row)
    return rows


def _unit(value: Any, where: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (0.0 <= value <= 1.0):
        raise ValueError(f"results.json: {where} must be a number in [0, 1], got {value!r}")


def check_run(run: Mapping[str, Any], where: str) -> None:
    missing = [k for k in RUN_KEYS if k not in run]
    if missing:
        raise ValueError(f"results.json: {where} lacks {', '.join(missing)}")
    for score in SCORES:
        _unit(run[score], f"{where}.{score}")
    for attr, value in run["per_attribute"].items():
        _unit(value, f"{where}.per_attribute.{attr}")
    if not (isinstance(run["noise"], (int, float)) and run["noise"] >= 0):
        raise ValueError(f"results.json: {where}.noise must be a number >= 0, got {run['noise']!r}")


def check_results(doc: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first key that does not follow schema 1."""
    missing = [k for k in TOP_KEYS if k not in doc]
    if missing:
        raise ValueError(f"results.json: missing {', '.join(missing)}")
    if doc["schema"] != SCHEMA:
        raise ValueError(f"results.json: schema {doc['schema']!r}, this code reads {SCHEMA}")
    if not doc["runs"]:
        raise ValueError("results.json: no runs")
    sigma = doc["noise_sigma"]
    for k, run in enumerate(doc["runs"]):
        check_run(run, f"runs[{k}]")
        if run["noise"] not in (0.0, sigma):
            raise ValueError(f"results.json: runs[{k}].noise {run['noise']} is neither 0 nor noise_sigma {sigma}")
        if run["seed"] not in doc["seeds"]:
            raise ValueError(f"results.json: runs[{k}].seed {run['seed']} is not one of seeds {doc['seeds']}")
    methods = {r["method"] for r in doc["runs"]}
    for ref in ("raw", "paired"):
        if ref not in methods:
            raise ValueError(f"results.json: no {ref!r} runs")
    for k, row in enumerate(doc["summary"]):
        for score in SCORES:
            _unit(row[f"{score}_mean"], f"summary[{k}].{score}_mean")
    gap_missing = sorted(m for m in methods - {"paired"} if m not in doc["gap"])
    if gap_missing:
        raise ValueError(f"results.json: gap has no metrics for {', '.join(gap_missing)}")
    for k, sample in enumerate(doc["samples"]):
        if not {"id", "image", "truth", "captions"} <= set(sample):
            raise ValueError(f"results.json: samples[{k}] lacks id, image, truth or captions")
    ablation = doc["ablation"]
    if ablation:
        for k, run in enumerate(ablation["runs"]):
            check_run(run, f"ablation.runs[{k}]")


def _json_safe(value: Any) -> Any:
    # NaN/Inf are not JSON: a metric that could not be computed is written as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_results(doc: Mapping[str, Any], path: Path) -> Path:
    """Check `doc` against the schema and write it atomically (a reader never sees half a file)."""
    check_results(doc)
    atomic_write_bytes(path, (json.dumps(_json_safe(dict(doc)), indent=1) + "\n").encode())
    return path


def table(summary: Sequence[Mapping[str, Any]]) -> str:
    """The terminal table: method × noise, mean ± std of the three scores over the seeds."""
    head = f"{'method':<12} {'noise':>6} {'n':>2}  {'exact match':>15}  {'attribute acc':>15}  {'token acc':>15}"
    lines = [head, "-" * len(head)]
    for row in summary:
        cells = [f"{row[f'{s}_mean']:.3f} ± {row[f'{s}_std']:.3f}" for s in SCORES]
        noise = f"{row['noise']:.3f}" if row["noise"] else "0"
        lines.append(f"{row['method']:<12} {noise:>6} {row['n']:>2}  " + "  ".join(f"{c:>15}" for c in cells))
    return "\n".join(lines)
