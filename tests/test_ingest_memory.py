"""Peak RSS of ingest follows the batch and shard size, not the number of rows."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

# Imports happen before the baseline is taken, so only the ingest's own growth is measured.
CHILD = textwrap.dedent(
    """
    import gc, json, resource, sys
    from revision.store.ingest import ingest
    import revision.store.idindex, pyarrow.parquet  # noqa: F401 - what ingest loads, before the baseline

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) / 1024
        raise KeyError(key)

    gc.collect()
    try:  # reset the high-water mark so import-time peaks do not hide the ingest's own
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    base = status("VmRSS:")
    if sys.argv[3] == "wrong":  # deliberately wrong: the whole input in memory, as a row-bound reader would
        import numpy as np
        whole = np.load(sys.argv[1]).copy()
    ingest(sys.argv[1], sys.argv[2], fmt="npy", modality="image", batch_rows=2048, chunk_rows=1024, chunks_per_shard=4)
    print(json.dumps({"base_mb": base, "peak_mb": status("VmHWM:")}))
    """
)


def _peak_growth_mb(tmp: Path, rows: int, dim: int, mode: str = "ingest") -> float:
    src = tmp / f"x{rows}.npy"
    # Written in blocks through a memmap so the test itself stays small too.
    if src.exists():
        return _measure(src, tmp / f"s{rows}{mode}.zarr", mode)
    out = np.lib.format.open_memmap(src, mode="w+", dtype=np.float32, shape=(rows, dim))
    rng = np.random.default_rng(0)
    for lo in range(0, rows, 8192):
        out[lo : lo + 8192] = rng.standard_normal((min(8192, rows - lo), dim), dtype=np.float32)
    out.flush()
    del out
    return _measure(src, tmp / f"s{rows}{mode}.zarr", mode)


def _measure(src: Path, dest: Path, mode: str) -> float:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(src), str(dest), mode], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(got["peak_mb"] - got["base_mb"])


def test_peak_rss_does_not_grow_with_rows(tmp_path: Path) -> None:
    dim = 256
    small, large = 8_192, 65_536  # 8 MiB and 64 MiB of float32 input
    grow_small = _peak_growth_mb(tmp_path, small, dim)
    grow_large = _peak_growth_mb(tmp_path, large, dim)
    data_growth = (large - small) * dim * 4 / 2**20
    print(f"peak RSS growth: {grow_small:.1f} MiB at {small} rows, {grow_large:.1f} MiB at {large} rows")
    # Bounded: 8x the rows may not cost more than a fifth of the extra data (a row-bound ingest would
    # need all 56 extra MiB at least once).
    assert grow_large - grow_small < 0.2 * data_growth, (grow_small, grow_large, data_growth)
    assert grow_large < 48, grow_large
    # The same check rejects an ingest that holds the input in memory.
    wrong = _peak_growth_mb(tmp_path, large, dim, "wrong") - _peak_growth_mb(tmp_path, small, dim, "wrong")
    assert not wrong < 0.2 * data_growth, wrong
