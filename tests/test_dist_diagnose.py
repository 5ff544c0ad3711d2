"""diagnose under torchrun with gloo on the CPU: metrics.json of 2 processes equals 1 process's.

The streamed numbers (centroid gap, traces, RMG, the streamed spectrum, the paired RMG over all
rows) are the same bits for any number of processes; the sampled ones are computed by rank 0 from
the same sampled rows, so with equal thread settings (OMP_NUM_THREADS=1, --threads 1) they are
identical too. Only the `seconds` of each entry differ. Also: only rank 0 writes, a killed rank
fails the job, an error found by rank 0 alone ends every rank with its message.

The simulated worlds (no processes) check the same for N = 1…8 and random chunkings: the segment
partials every rank would contribute, folded in rank order, are the one-process bits, and the
sampled rows the ranks read, joined in rank order, are the one-process sample.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revision import dist
from revision.diagnose import streamed
from revision.diagnose.sources import ArraySource, rank_segments, read_unit_rows, sample_indices, unit_rows
from revision.store import FeatureStore, StoreConfig

ENV = {"OMP_NUM_THREADS": "1", "REVISION_NO_PROGRESS": "1", "REVISION_DIST_BACKEND": "gloo", "REVISION_NO_FSYNC": "1"}
ROWS, DIM = 1600, 24
FLAGS = ["--block-rows", "64", "--threads", "1", "--no-gpu", "--sample", "300", "--k", "5", "--quiet"]


def _store(path: Path, x: np.ndarray, modality: str, ids: list[str]) -> Path:
    cfg = StoreConfig(modality=modality, dim=x.shape[1], dtype="float16", chunk_rows=32, chunks_per_shard=2)
    with FeatureStore.create(path, cfg) as st_:
        st_.append(x, ids)
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Text and image with equal ids (identity pairs), and an aligned set of two parts whose ids
    are a shuffled subset of the image's (pairs resolved from a sample, by rank 0)."""
    root = tmp_path_factory.mktemp("ddiag")
    rng = np.random.default_rng(5)
    ids = [f"r{k:06d}" for k in range(ROWS)]
    image = rng.normal(size=(ROWS, DIM)) - 0.7
    text = image + rng.normal(size=(ROWS, DIM)) * np.linspace(0.3, 2, DIM) + 1.5
    shuffled = rng.permutation(ROWS)[:1100]
    aligned = image[shuffled] + rng.normal(size=(len(shuffled), DIM))
    aligned_ids = [ids[k] for k in shuffled]
    _store(root / "aligned-a.zarr", aligned[:700], "text", aligned_ids[:700])
    _store(root / "aligned-b.zarr", aligned[700:], "text", aligned_ids[700:])
    return {
        "text": _store(root / "text.zarr", text, "text", ids),
        "image": _store(root / "image.zarr", image, "image", ids),
        "aligned": root / "aligned-*.zarr",
    }


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, **ENV, **extra}


def _cmd(n: int, *args: object) -> list[str]:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)] if n > 1 else []
    return [sys.executable, *launcher, "-m", "revision", "diagnose", *map(str, args)]


def _run(n: int, *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cmd(n, *args), env=_env(), capture_output=True, text=True, timeout=300)


def _without_seconds(doc: dict[str, Any]) -> dict[str, Any]:
    return {key: {k: v for k, v in entry.items() if k != "seconds"} for key, entry in doc.items()}


def test_two_processes_write_the_metrics_of_one(tmp_path: Path, stores: dict[str, Path]) -> None:
    common = ["--text", stores["text"], "--image", stores["image"], "--aligned", stores["aligned"],
              "--pairs", "--full-spectrum", *FLAGS]  # fmt: skip
    one = _run(1, *common, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run(2, *common, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    # Only rank 0 wrote and printed: the two files, no temporaries, one table.
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["metrics.json", "report.html"]
    assert two.stdout.count("metrics: ") == 1, two.stdout
    a = json.loads((tmp_path / "one" / "metrics.json").read_text())
    b = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert a["raw"]["pairs"]["kind"] == "identity" and a["aligned"]["pairs"]["kind"] == "ids"
    assert a["raw"]["spectrum_source"] == "all rows"
    for key in a:
        for name, value in _without_seconds(a)[key].items():
            assert b[key][name] == value, f"{key}.{name}: 1 process {value!r}, 2 processes {b[key][name]!r}"
    assert _without_seconds(a) == _without_seconds(b)


def test_an_error_of_rank_0_ends_every_rank(tmp_path: Path, stores: dict[str, Path]) -> None:
    """Pairs from a file are resolved by rank 0; its error reaches every rank (no rank left waiting)."""
    bad = tmp_path / "pairs.csv"
    bad.write_text("text_id,image_id\nnope,nada\n")
    t0 = time.monotonic()
    run = _run(2, "--text", stores["text"], "--image", stores["image"], "--pairs-file", bad, *FLAGS,
               "--out", tmp_path / "out")  # fmt: skip
    assert run.returncode != 0 and time.monotonic() - t0 < 120
    assert run.stderr.count("none of 1 sampled pairs matches ids in both stores") == 2, run.stderr[-3000:]
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_killed_rank_fails_the_job(tmp_path: Path, stores: dict[str, Path]) -> None:
    cmd = _cmd(2, "--text", stores["text"], "--image", stores["image"], *FLAGS, "--out", tmp_path / "out")
    env = _env(REVISION_DIAGNOSE_PAUSE_AFTER_SEGMENT="0.5")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    try:
        victim = None
        while victim is None and time.monotonic() - t0 < 60:
            workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "diagnose" in p.cmdline()]
            victim = next((p for p in workers if p.environ().get("RANK") == "1"), None)
            time.sleep(0.2)
        assert victim is not None, "rank 1 never started"
        time.sleep(3)  # past the imports, into the streamed pass (13 segments of 0.5 s a rank)
        os.kill(victim.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "SIGKILL" in err or "Signal 9" in err, err[-3000:]
    assert time.monotonic() - t0 < 120
    assert not (tmp_path / "out" / "metrics.json").exists()


# Simulated worlds: the partials each rank would hand to the gather, folded in rank order.


def _simulate(n: int, run: Callable[[], object]) -> list[Any]:
    """Run `run` as each rank of an n-process world; returns, per fold, every rank's partials folded
    in rank order (what `dist.fold_in_order` computes after its gather)."""
    per_rank: list[list[Any]] = []

    def fake_fold(partials: Any, init: Any, merge: Callable[[Any, Any], Any]) -> Any:
        per_rank[-1].append((list(partials), init, merge))
        return init

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dist, "fold_in_order", fake_fold)
        for r in range(n):
            _as_rank(mp, r, n)
            per_rank.append([])
            run()
    results = []
    for call, (_, state, merge) in enumerate(per_rank[0]):
        for folds in per_rank:
            for p in folds[call][0]:
                state = merge(state, p)
        results.append(state)
    return results


def _as_rank(mp: pytest.MonkeyPatch, rank: int, size: int) -> None:
    mp.setenv("RANK", str(rank))
    mp.setenv("WORLD_SIZE", str(size))


def _same_bits(a: streamed.RowSums, b: streamed.RowSums) -> bool:
    same = a.n == b.n and a.total.tobytes() == b.total.tobytes() and a.sq_norms == b.sq_norms
    if a.comoment is not None or b.comoment is not None:
        same = same and a.comoment is not None and b.comoment is not None
        same = same and a.comoment.tobytes() == b.comoment.tobytes()
    return same


@settings(max_examples=20, deadline=None)
@given(
    rows=st.integers(10, 700),
    block=st.integers(1, 64),
    block_rows=st.one_of(st.none(), st.integers(1, 90)),
    n=st.integers(2, 8),
    seed=st.integers(0, 2**16),
)
def test_streamed_sums_are_the_same_bits_in_any_world(
    rows: int, block: int, block_rows: int | None, n: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    image = ArraySource(rng.normal(size=(rows, 7)).astype(np.float32) - 1, block=block)
    text = ArraySource(rng.normal(size=(rows, 7)).astype(np.float32) + 1, block=block)
    other = ArraySource(rng.normal(size=(rows // 2 + 3, 7)).astype(np.float32), block=max(1, block // 2))

    def run() -> tuple[streamed.RowSums, list[streamed.TextPass]]:
        return streamed.stream_together(image, [text, other], [True, False], covariance=True, block_rows=block_rows)

    one_img, (one_t, one_o) = run()
    together, alone = _simulate(n, run)
    assert _same_bits(together.image, one_img), f"N={n}: image sums differ"
    (tp,) = together.texts
    assert _same_bits(tp.sums, one_t.sums) and tp.pair_cos_sum == one_t.pair_cos_sum, f"N={n}: paired text"
    assert tp.pair_rows == rows
    assert _same_bits(alone, one_o.sums), f"N={n}: unpaired text"


def test_folding_each_rank_first_is_not_bitwise() -> None:
    """The check bites: merging each rank's total after folding its own segments (the obvious
    distributed merge) changes the bits for some N; the segment order does not."""
    rng = np.random.default_rng(3)
    src = ArraySource(rng.normal(size=(3000, 16)).astype(np.float32), block=16)
    one = streamed.stream_sums(src, covariance=True)
    naive_differs = []
    for n in range(2, 9):
        (ours,) = _simulate(n, lambda: streamed.stream_sums(src, covariance=True))
        assert _same_bits(ours, one), f"N={n}"
        ranks = []
        with pytest.MonkeyPatch.context() as mp:
            for r in range(n):
                _as_rank(mp, r, n)
                lo, hi = dist.span(rank_segments(src, None, 8 * 16 * 17))
                blocks = (unit_rows(b) for _, b in src.iter_chunks(lo, hi))
                ranks.append(streamed.sums_of_blocks(blocks, 16) if hi > lo else None)
        naive = streamed.RowSums(16)
        for part in ranks:
            if part is not None:
                unit = streamed.RowSums(16)
                naive = naive.merge(unit.merge(part))
        naive_differs.append(not _same_bits(naive, one))
    assert any(naive_differs), "the naive merge happened to be exact for every N: the data do not bite"


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(10, 5000),
    frac=st.floats(0.001, 1.0),
    block=st.integers(1, 400),
    block_rows=st.one_of(st.none(), st.integers(1, 900)),
    n=st.integers(1, 8),
    seed=st.integers(0, 2**31),
)
def test_the_sample_is_the_same_in_any_world_and_chunking(
    rows: int, frac: float, block: int, block_rows: int | None, n: int, seed: int
) -> None:
    """Which rows are sampled depends on (seed, sample size, rows) only; the rows each rank reads
    (those inside its run of segments), joined in rank order, are the one-process sample."""
    size = max(1, int(rows * frac))
    idx = sample_indices(rows, size, seed)
    assert len(idx) == size and np.all(np.diff(idx) > 0) and idx[0] >= 0 and idx[-1] < rows
    x = np.random.default_rng(seed).normal(size=(rows, 5)).astype(np.float32)
    src = ArraySource(x, block=block)
    want = read_unit_rows(ArraySource(x), idx)
    pieces = []
    with pytest.MonkeyPatch.context() as mp:
        for r in range(n):
            _as_rank(mp, r, n)
            lo, hi = dist.span(rank_segments(src, block_rows, 8 * 5))
            a, b = np.searchsorted(idx, [lo, hi])
            pieces.append(read_unit_rows(src, idx[a:b]))
    got = np.concatenate(pieces)
    assert got.tobytes() == want.tobytes(), f"N={n}: sampled rows differ"


def test_the_one_process_sample_is_pinned() -> None:
    """sample_indices is unchanged by the distributed work: the rows a seed picks stay the rows it
    picked before (metrics of earlier runs stay reproducible)."""
    idx = sample_indices(10**6, 1000, 0)
    assert idx[:6].tolist() == PINNED_FIRST and int(idx.sum()) == PINNED_SUM
    assert sample_indices(50, 50, 3).tolist() == list(range(50))


# Computed with sample_indices as it was before diagnose ran under torchrun (commit 12e5ae0).
PINNED_FIRST = [300, 2738, 3535, 4899, 5352, 5358]
PINNED_SUM = 515565135
