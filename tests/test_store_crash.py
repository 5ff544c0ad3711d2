"""Crash safety: a writer killed with SIGKILL at random moments resumes to the clean-run store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from revision.store import FeatureStore

# A resumable job: appends batch k (deterministic content) and commits progress {"next": k + 1}.
JOB = r"""
import sys
import numpy as np
from pathlib import Path
from revision.store import FeatureStore, StoreConfig

path, batches = Path(sys.argv[1]), int(sys.argv[2])
if path.exists():
    st = FeatureStore.open(path, mode="a")
else:
    st = FeatureStore.create(path, StoreConfig(modality="text", dim=24, chunk_rows=16, chunks_per_shard=3),
                             metadata_columns={"caption": "str"})
start = (st.progress or {}).get("next", 0)
for k in range(start, batches):
    rng = np.random.default_rng(k)
    n = int(rng.integers(1, 70))
    x = rng.standard_normal((n, 24)).astype(np.float16)
    ids = [f"b{k}_{i}" for i in range(n)]
    st.append(x, ids, {"caption": [f"caption {k} {i}" for i in range(n)]})
    st.commit(progress={"next": k + 1})
    print(k, flush=True)
"""


def _run(path: Path, batches: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", JOB, str(path), str(batches)], stdout=subprocess.PIPE, text=True)


def _tree(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_at_random_moments_then_resume_equals_clean_run(tmp_path: Path, seed: int) -> None:
    batches = 150
    clean = tmp_path / "clean.zarr"
    assert _run(clean, batches).wait() == 0

    crashed = tmp_path / "crashed.zarr"
    rng = np.random.default_rng(seed)
    kills = 0
    mid_job = 0
    for _ in range(6):
        proc = _run(crashed, batches)
        # wait for the job to get going, then kill it at a random moment
        line = proc.stdout.readline() if proc.stdout else ""
        time.sleep(float(rng.uniform(0.0, 0.15)))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        if line and FeatureStore.open(crashed).progress == {"next": batches}:
            break
        # after every kill the store is readable at its last commit
        st = FeatureStore.open(crashed)
        done = (st.progress or {}).get("next", 0)
        mid_job += 0 < done < batches
        assert st.rows == sum(int(np.random.default_rng(k).integers(1, 70)) for k in range(done))
        assert len(st.read_ids()) == st.rows and st.read().shape == (st.rows, 24)
    assert kills >= 1 and mid_job >= 1
    assert _run(crashed, batches).wait() == 0
    assert _tree(crashed) == _tree(clean)
