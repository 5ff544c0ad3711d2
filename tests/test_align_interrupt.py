"""Ctrl-C in pass 3 and a second `align` on the same --out (issue 16, defects 1, 2 and 12).

A real SIGINT is sent by the process to itself at chosen write calls of the output store
(store/faults.py, `sigint@k`): before the first commit, between commits, and inside the final
commit. The same command run again must finish with the bytes of a clean run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from revision.store import FeatureStore, StoreConfig


def _store(path: Path, modality: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cfg = StoreConfig(modality=modality, dim=16, dtype="float16", chunk_rows=8, chunks_per_shard=2)
    with FeatureStore.create(path, cfg, metadata_columns={"caption": "str"}) as st:
        x = rng.standard_normal((n, 16)).astype(np.float32) + (0.5 if modality == "image" else -0.5)
        st.append(x, [f"{modality[0]}{i}" for i in range(n)], {"caption": [f"c{i}" for i in range(n)]})


def _cli(args: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    full = {k: v for k, v in os.environ.items() if not k.startswith("REVISION_FAULT")}
    full.update({"REVISION_NO_PROGRESS": "1", **(env or {})})
    return subprocess.Popen(
        [sys.executable, "-m", "revision", *args],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _run(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    p = _cli(args, env)
    out, err = p.communicate(timeout=300)
    return p.returncode, out, err


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("interrupt")
    _store(root / "text.zarr", "text", 120, 1)
    _store(root / "image.zarr", "image", 50, 2)
    args = ["align", "--text", str(root / "text.zarr"), "--image", str(root / "image.zarr")]
    args += ["--commit-rows", "32", "--block-rows", "8"]
    clean = root / "clean.zarr"
    log = root / "points.log"
    rc, _, err = _run([*args, "--out", str(clean)], {"REVISION_FAULT": "count", "REVISION_FAULT_LOG": str(log)})
    assert rc == 0, err
    points = [line.split(" ", 2) for line in log.read_text().splitlines()]
    return {"root": root, "args": args, "clean": _tree(clean), "points": points, "clean_path": clean}


def _output_points(world: dict[str, object], out_name: str) -> list[tuple[int, str, str]]:
    """(k, kind, path) of the write calls that go into the output store (not the stats file)."""
    pts = [(int(n), kind, path) for n, kind, path in world["points"]]  # type: ignore[attr-defined]
    return [(n, kind, path) for n, kind, path in pts if "clean.zarr" in path and not path.endswith("stats.json")]


def _moments(world: dict[str, object]) -> dict[str, int]:
    pts = _output_points(world, "clean.zarr")
    group_renames = [n for n, kind, path in pts if kind == "rename" and path.endswith("clean.zarr/zarr.json")]
    assert len(group_renames) >= 4, group_renames  # creation, >= 2 intermediate commits, the final one
    first_shard = next(n for n, kind, path in pts if "/vectors/c/" in path and n > group_renames[0])
    return {
        "before the first commit": first_shard,
        "between commits": group_renames[1] + 1,
        "during the final commit": group_renames[-1],  # the commit point's own rename
    }


@pytest.mark.parametrize("moment", ["before the first commit", "between commits", "during the final commit"])
def test_sigint_in_pass3_then_rerun_equals_a_clean_run(world: dict[str, object], moment: str, tmp_path: Path) -> None:
    k = _moments(world)[moment]
    out = tmp_path / "clean.zarr"  # the same name as the clean run, so write calls line up
    args = [*world["args"], "--out", str(out)]  # type: ignore[misc]
    rc, _, err = _run(args, {"REVISION_FAULT": f"sigint@{k}"})
    assert rc in (130, 0), err
    assert "Traceback" not in err, err
    if rc == 130:
        assert "interrupted" in err and "re-run to resume" in err
        assert out.exists() and FeatureStore.open(out).progress is not None
    rc, stdout, err = _run(args)
    assert rc == 0, err
    assert _tree(out) == world["clean"]
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name or ".creating-" in p.name]


def test_rerun_of_a_finished_align_says_complete_at_once(world: dict[str, object], tmp_path: Path) -> None:
    clean = world["clean_path"]
    assert isinstance(clean, Path)
    args = [*world["args"], "--out", str(clean)]  # type: ignore[misc]
    before = {p: p.stat().st_mtime_ns for p in clean.rglob("*")}
    rc, stdout, err = _run(args)
    assert rc == 0, err
    assert "already complete" in stdout and "pass 1" not in stdout and "resumed" not in stdout
    assert {p: p.stat().st_mtime_ns for p in clean.rglob("*")} == before


def test_a_second_align_on_the_same_out_is_refused_without_harm(world: dict[str, object], tmp_path: Path) -> None:
    out = tmp_path / "clean.zarr"
    args = [*world["args"], "--out", str(out)]  # type: ignore[misc]
    first = _cli(args, {"REVISION_ALIGN_PAUSE_AFTER_COMMIT": "4"})
    try:
        assert first.stdout is not None
        deadline = time.time() + 120
        line = ""
        while "committed" not in line:
            assert time.time() < deadline and first.poll() is None
            line = first.stdout.readline()
        rc, _, err = _run(args)
        assert rc == 2, err
        assert "another writer" in err and f"pid {first.pid}" in err and "Traceback" not in err
    finally:
        out_rest, err_rest = first.communicate(timeout=300)
    assert first.returncode == 0, err_rest
    assert _tree(out) == world["clean"]


def test_apply_resumes_after_sigint_before_its_first_commit(world: dict[str, object], tmp_path: Path) -> None:
    root = world["root"]
    assert isinstance(root, Path)
    stats = tmp_path / "s.json"
    rc, _, err = _run(
        ["fit", "--text", str(root / "text.zarr"), "--image", str(root / "image.zarr"), "--stats", str(stats)]
    )
    assert rc == 0, err
    apply_args = ["apply", "--text", str(root / "text.zarr"), "--stats", str(stats), "--commit-rows", "32"]
    apply_args += ["--block-rows", "8", "--out"]
    log = tmp_path / "points.log"
    clean = tmp_path / "a.zarr"
    rc, _, err = _run([*apply_args, str(clean)], {"REVISION_FAULT": "count", "REVISION_FAULT_LOG": str(log)})
    assert rc == 0, err
    want = _tree(clean)
    lines = [line.split(" ", 2) for line in log.read_text().splitlines()]
    k = next(int(n) for n, kind, path in lines if "/vectors/c/" in path)
    import shutil

    shutil.rmtree(clean)
    rc, _, err = _run([*apply_args, str(clean)], {"REVISION_FAULT": f"sigint@{k}"})
    assert rc == 130 and "Traceback" not in err, err
    assert FeatureStore.open(clean).rows == 0  # nothing committed yet, and still resumable:
    rc, _, err = _run([*apply_args, str(clean)])
    assert rc == 0, err
    assert _tree(clean) == want
    doc = json.loads((clean / "zarr.json").read_text())
    assert doc["attributes"]["revision"]["progress"]["done"] is True


def test_eio_on_an_ids_shard_in_pass3_commits_nothing_unwritten_and_rerun_equals_clean(
    world: dict[str, object], tmp_path: Path
) -> None:
    """Issue 11 defect 2: the write-behind queue ran on after a failed ids write and committed."""
    out = tmp_path / "clean.zarr"
    args = [*world["args"], "--out", str(out)]  # type: ignore[misc]
    rc, _, err = _run(args, {"REVISION_FAULT": "eio@2", "REVISION_FAULT_MATCH": "clean.zarr/ids/c/"})
    assert rc == 2 and "write failed" in err and "Traceback" not in err, err
    st = FeatureStore.open(out)
    assert st.rows < 120
    ids = st.read_ids()  # every committed row's id is readable: nothing committed names a missing file
    assert len(ids) == st.rows
    assert st.progress is not None and not st.progress.get("done")
    rc, _, err = _run(args)
    assert rc == 0, err
    assert _tree(out) == world["clean"]
