"""Shared benchmark harness: timing with warm-up and repeats, peak RSS, tables and JSON results.

Every benchmark measures its baseline in the same run and reports the ratio; results go to
`bench/results/<name>.json` with the machine, library versions and command line.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Timing:
    """Wall-clock seconds of repeated runs of one callable."""

    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """Half the range between the slowest and the fastest run, as a fraction of the median."""
        if len(self.seconds) < 2:
            return 0.0
        return (max(self.seconds) - min(self.seconds)) / 2 / self.median


def time_it(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 3) -> Timing:
    for _ in range(warmup):
        fn()
    timing = Timing()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        timing.seconds.append(time.perf_counter() - t0)
    return timing


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB).

    Linux's VmHWM belongs to the current program image, whereas ru_maxrss survives fork + exec and so
    reports at least the parent's size: a benchmark measured in a subprocess would inherit its
    parent's peak. Falls back to ru_maxrss where /proc is missing.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    for mod in ("numpy", "torch", "zarr", "numcodecs", "faiss", "triton"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional library is just not reported
            continue
    try:
        import torch

        if torch.cuda.is_available():
            info["device"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        pass
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:  # noqa: BLE001
        pass
    return info


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """An aligned plain-text table of the given columns."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def write_results(name: str, payload: dict[str, Any], path: str | Path | None = None) -> Path:
    """Write `payload` plus machine info and the command line as JSON; returns the path."""
    out = Path(path) if path else RESULTS_DIR / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        **payload,
    }
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    os.replace(tmp, out)
    return out
