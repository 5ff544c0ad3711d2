"""The fault-injection suite (bench/fault_suite.py), a sampled subset in CI.

Each writer runs through the real CLI with SIGKILL, EIO and ENOSPC injected at sampled write calls
(always the first and the last, the rest drawn with a seed); after each fault the output must open at
its last commit and read consistently with zarr-python, and a re-run must finish with the clean run's
bytes and leave nothing behind. `REVISION_FAULT_SAMPLE=all` runs every write call (the full sweep, as
`python bench/fault_suite.py --json-out bench/results/faults.json` does); `REVISION_FAULT_SEED` picks
other write calls.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest

from revision.bench import fault_suite

_SAMPLE = os.environ.get("REVISION_FAULT_SAMPLE", "")
_SEED = int(os.environ.get("REVISION_FAULT_SEED", "0"))

# Write calls tried per writer and fault kind in CI; embed is the slowest to start (a model load).
SAMPLES = {"ingest": 3, "align": 3, "export-memmap": 3, "embed": 2, "train": 2}


@pytest.mark.parametrize("writer", list(SAMPLES))
def test_faults_at_write_calls_lose_nothing(writer: str) -> None:
    sample = None if _SAMPLE == "all" else int(_SAMPLE or SAMPLES[writer])
    rng = random.Random(f"{_SEED}-{writer}")
    with tempfile.TemporaryDirectory(prefix="revision-faults-") as tmp:
        prep = fault_suite.prepare(writer, Path(tmp))
        assert len(prep.points) >= 10, prep.points  # the writer really goes through the fault points
        failures = []
        for kind in fault_suite.KINDS:
            for k in fault_suite.choose_points(len(prep.points), sample, rng):
                rec = fault_suite.one_fault(prep, kind, k)
                if not rec["ok"]:
                    failures.append(rec)
    assert not failures, "\n".join(f"{r['kind']}@{r['point']} ({r['where']}): {r['problems']}" for r in failures)


def test_the_check_bites_on_a_writer_that_commits_unwritten_rows(tmp_path: Path) -> None:
    """A store whose commit names a shard that is not there must be reported, not passed."""
    import numpy as np

    from revision.store import FeatureStore, StoreConfig

    path = tmp_path / "s.zarr"
    with FeatureStore.create(path, StoreConfig(modality="text", dim=4, chunk_rows=4, chunks_per_shard=1)) as st:
        st.append(np.ones((8, 4), np.float32), [f"i{i}" for i in range(8)])
    (path / "ids" / "c" / "1").unlink()
    problem = fault_suite.check_store_after_fault(path, 8)
    assert problem is not None and "ids/c/1" in problem
