"""Benchmark of `revision experiment`: every score, gap metric and timing of one run, as a committed JSON.

Runs the experiment through its Python API (the same `run_experiment` the command calls) into a work
directory and writes bench/results/experiment.json: results.json's whole document (runs, summary with
mean ± std over the seeds, gap metrics, samples, ablation) plus the wall time, the load average and
the command line that produced it. The README's experiment figures and "Which method when" cite it.

    python bench/bench_experiment.py --seeds 3                      # the full experiment (≤ 60 min)
    python bench/bench_experiment.py --quick --output /tmp/exp.json # the quick preset (≤ 10 min)
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from revision.bench.harness import write_results
from revision.experiment.config import full_config, quick_config
from revision.experiment.pipeline import run_experiment
from revision.experiment.results import table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=None, help="captioner seeds 0..N-1 (default: the preset's)")
    parser.add_argument("--quick", action="store_true", help="the quick preset (one seed, small splits)")
    parser.add_argument("--workdir", type=Path, default=None, help="experiment folder, kept (default: a temporary one)")
    parser.add_argument("--output", default=None, help="JSON path (default bench/results/experiment.json)")
    args = parser.parse_args(argv)
    # As every bench JSON records it (harness.write_results): the script's name and its arguments.
    command = shlex.join(["bench_experiment.py", *(sys.argv[1:] if argv is None else argv)])

    overrides: dict[str, Any] = {}
    if args.seeds is not None:
        if args.seeds < 1:
            parser.error(f"--seeds must be at least 1, got {args.seeds}")
        overrides["seeds"] = tuple(range(args.seeds))
    cfg = quick_config(**overrides) if args.quick else full_config(**overrides)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-experiment-") as tmp:
        work = args.workdir or Path(tmp) / "experiment"
        doc = run_experiment(cfg, work, command=command)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    shared = load_before[0] >= 0.5
    note = (
        f"load average {load_before[0]:.1f} before the run and {load_after[0]:.1f} after it on {os.cpu_count()} CPUs"
        + ("; the machine was shared, so the times are pessimistic" if shared else "")
    )
    payload = {
        **doc,
        "command": command,
        "wall_s": round(wall, 1),
        "load_average_before": list(load_before),
        "load_average_after": list(load_after),
        "note": note,
        "table": table(doc["summary"]).splitlines(),
    }
    path = write_results("experiment", payload, args.output)
    print(f"experiment wall time {wall:.0f} s ({note})\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
