"""Benchmark of `revision demo`: its wall time and the diagnose metrics it prints, as a committed JSON.

Runs the demo exactly as a user would (`python -m revision demo`, a fresh process, a fresh output
directory) and records its wall time, its peak RSS and the metrics of every method from the
report's `metrics.json`, so the README's demo table has a file behind it.

    python bench/bench_demo.py                                  # 200k + 200k × 768, every method
    python bench/bench_demo.py --rows 20000 --output /tmp/demo.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from revision.bench.harness import write_results
from revision.diagnose.report import text_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="rows per modality (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=768, help="embedding dimension (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the demo writes (default: a temporary dir)")
    parser.add_argument("--output", default=None, help="JSON path (default bench/results/demo.json)")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-demo-", dir=args.workdir) as tmp:
        out = Path(tmp) / "demo"
        cmd = [sys.executable, "-m", "revision", "demo", "--out", str(out), "--rows", str(args.rows)]
        # The demo's alignment part only: the quick experiment it runs next has its own JSON
        # (bench_experiment.py --quick).
        cmd += ["--dim", str(args.dim), "--no-experiment"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            print(f"bench_demo: error: {' '.join(cmd)} exited with status {proc.returncode}", file=sys.stderr)
            return 1
        metrics: dict[str, Any] = json.loads((out / "report" / "metrics.json").read_text())
    # The demo ran as a child: RUSAGE_CHILDREN's ru_maxrss is the largest child's peak (KiB on Linux).
    child_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    load_after = os.getloadavg()
    table = text_table(metrics)
    print(proc.stdout)
    print(f"demo wall time {wall:.1f} s, peak RSS {child_rss_mb:,.0f} MB")
    shared = load_before[0] >= 0.5
    note = (
        f"load average {load_before[0]:.1f} before the run and {load_after[0]:.1f} after it on {os.cpu_count()} CPUs"
        + ("; the machine was shared, so the wall time is pessimistic" if shared else "")
    )
    path = write_results(
        "demo",
        {
            "rows": args.rows,
            "dim": args.dim,
            "wall_s": wall,
            "peak_rss_mb": child_rss_mb,
            "load_average_before": list(load_before),
            "load_average_after": list(load_after),
            "note": note,
            "table": table.splitlines(),
            "metrics": metrics,
        },
        args.output,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
