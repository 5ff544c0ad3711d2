"""Store sets and distributed outputs on object storage, against moto's and SeaweedFS's S3 servers on loopback.

A glob of stores, a prefix of parts and a store whose parts exist beside it, all on s3://, read by
`revision info` and used as `--text` of `align`; a 2-process gloo `torchrun align --out s3://…/`
whose parts equal the local one-process output row for row and byte for byte, resumed after both
ranks were killed mid-upload, and refused with another world size; the same for `apply`; a missing part, parts of
different dims and an id in two parts, each a one-line error naming the part's URL. The 2-process
runs use moto only unless REVISION_TEST_S3_SERVERS names the servers (tests/s3server.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from s3server import BUCKET, KINDS, Server, client_env, serve  # noqa: E402

from revision.cli import main  # noqa: E402
from revision.store import FeatureStore, StoreConfig, StoreSet, open_readable  # noqa: E402
from revision.store.objio import RemotePath  # noqa: E402

ENV = {"OMP_NUM_THREADS": "1", "REVISION_NO_PROGRESS": "1", "REVISION_DIST_BACKEND": "gloo", "REVISION_NO_FSYNC": "1"}
FLAGS = ["--block-rows", "32", "--commit-rows", "64", "--no-progress"]
TEXT_ROWS, IMAGE_ROWS, DIM = 600, 400, 16
SPLIT = (0, 250, 420, TEXT_ROWS)  # three parts of unequal size


def _store(path: str | Path, x: np.ndarray, modality: str, ids: list[str]) -> None:
    cfg = StoreConfig(modality=modality, dim=x.shape[1], dtype="float16", chunk_rows=32, chunks_per_shard=2)
    with FeatureStore.create(path, cfg, metadata_columns={"caption": "str"}) as st:
        st.append(x, ids, {"caption": [f"caption of {i}" for i in ids]})


class Data:
    """The same text rows as one local store and as three parts in three set layouts on s3://."""

    def __init__(self, root: Path, url: str) -> None:
        self.root, self.url = root, url
        rng = np.random.default_rng(7)
        self.text = (rng.normal(size=(TEXT_ROWS, DIM)) * np.linspace(0.3, 2, DIM) + 1.5).astype(np.float16)
        self.image = (rng.normal(size=(IMAGE_ROWS, DIM)) - 0.7).astype(np.float16)
        self.ids = [f"t{k:05d}" for k in range(TEXT_ROWS)]
        _store(root / "text.zarr", self.text, "text", self.ids)
        _store(root / "image.zarr", self.image, "image", [f"i{k:05d}" for k in range(IMAGE_ROWS)])
        _store(f"{url}/text.zarr", self.text, "text", self.ids)
        _store(f"{url}/image.zarr", self.image, "image", [f"i{k:05d}" for k in range(IMAGE_ROWS)])
        names = {
            "glob": [f"glob/text-{k}.zarr" for k in range(3)],
            "dir": [f"dir/part{k:03d}-of-003.zarr" for k in range(3)],
            "beside": [f"emb/text.part{k:03d}-of-003.zarr" for k in range(3)],
        }
        for parts in names.values():
            for k, name in enumerate(parts):
                lo, hi = SPLIT[k], SPLIT[k + 1]
                _store(f"{url}/{name}", self.text[lo:hi], "text", self.ids[lo:hi])
        self.sets = {
            "glob": f"{url}/glob/text-*.zarr",
            "dir": f"{url}/dir/",
            "beside": f"{url}/emb/text.zarr",
        }
        self.part_urls = {k: [f"{url}/{n}" for n in v] for k, v in names.items()}


@pytest.fixture(scope="module", params=KINDS)
def s3_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    yield from serve(request.param)


@pytest.fixture(scope="module")
def data(s3_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Data]:
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {**client_env(s3_server.endpoint), **ENV}.items():
            mp.setenv(k, v)
        import boto3

        boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield Data(tmp_path_factory.mktemp("s3set"), f"s3://{BUCKET}/sets")


def _revision(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "revision", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)  # fmt: skip


def _torchrun(n: int, *args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
           "-m", "revision", *map(str, args)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)


def _rows_of(spec: str | Path) -> tuple[bytes, list[str], list[str]]:
    with open_readable(spec) as st:
        return st.read().tobytes(), list(st.read_ids()), list(st.read_metadata("caption"))


def _stats_numbers(doc: dict[str, object]) -> dict[str, object]:
    return {k: doc[k] for k in ("rows", "scale", "trace_text", "trace_image", "centroid_rows", "vectors", "moments")}


@pytest.fixture(scope="module")
def local_aligned(data: Data) -> Path:
    """The one-process local output every s3 output is compared with (one thread, as under torchrun)."""
    out = data.root / "aligned.zarr"
    run = _revision("align", "--text", data.root / "text.zarr", "--image", data.root / "image.zarr", *FLAGS,
                    "--out", out)  # fmt: skip
    assert run.returncode == 0, run.stderr
    return out


def test_sets_on_s3_read_by_info_and_aligned(
    data: Data, local_aligned: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for layout, spec in data.sets.items():
        capsys.readouterr()
        assert main(["info", spec, "--json"]) == 0, layout
        info = json.loads(capsys.readouterr().out)
        assert info["rows"] == TEXT_ROWS and info["dim"] == DIM, layout
        assert [p["path"] for p in info["parts"]] == data.part_urls[layout], layout
        assert [p["rows"] for p in info["parts"]] == [b - a for a, b in zip(SPLIT, SPLIT[1:], strict=False)]
        with open_readable(spec) as st:
            assert isinstance(st, StoreSet) and isinstance(st.path, RemotePath)
            assert st.read().tobytes() == data.text.tobytes() and list(st.read_ids()) == data.ids
    # A set used as --text: the aligned rows are the local one-store output's, byte for byte.
    for layout in ("glob", "dir"):
        out = f"{data.url}/aligned-{layout}.zarr"
        args = ["align", "--text", data.sets[layout], "--image", f"{data.url}/image.zarr", *FLAGS, "--out", out]
        assert main(args) == 0, layout
        assert _rows_of(out) == _rows_of(local_aligned), layout
        assert RemotePath(f"{out}.stats.json").is_file()


def test_two_process_align_to_s3_equals_local_and_resumes(data: Data, local_aligned: Path, s3_server: Server) -> None:
    if s3_server.kind != "moto" and "REVISION_TEST_S3_SERVERS" not in os.environ:
        # ~35 s of torchrun starts per server, and no S3 request the other tests here do not make.
        pytest.skip(f"2-process runs on {s3_server.kind} only with REVISION_TEST_S3_SERVERS={s3_server.kind}")
    common = ["align", "--text", f"{data.url}/text.zarr", "--image", f"{data.url}/image.zarr", *FLAGS]
    out = f"{data.url}/aligned/"
    # Each rank dies by SIGKILL at its 15th object PUT (4 create a part, 7 each commit: 3 shards,
    # 3 array zarr.json, the group's), inside its second commit, unless torchrun stopped it first
    # when the other died: the parts hold one commit (64 rows) each at most, and no stats exist.
    killed = _torchrun(2, *common, "--out", out, env={"REVISION_FAULT": "kill@15"})
    assert killed.returncode != 0
    committed = []
    for k in range(2):
        part = f"{data.url}/aligned/part{k:03d}-of-002.zarr"
        if RemotePath(f"{part}/zarr.json").is_file():
            with FeatureStore.open(part) as st:
                committed.append(st.rows)
    assert 64 in committed and set(committed) <= {0, 64}, committed
    assert not RemotePath(f"{data.url}/aligned.stats.json").is_file()
    # Another world size is refused before anything is written.
    refused = _revision(*common, "--out", out)
    assert refused.returncode == 2 and "parts of a run with 2 processes" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    resumed = _torchrun(2, *common, "--out", out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # (Only rank 0 prints, and its part may be the one that had no commit: the rows below show the
    # resume, a part that started over on top of its committed rows would hold them twice.)
    names = sorted({k.key.split("/")[3] for k in RemotePath(out).files()})
    assert names == ["part000-of-002.zarr", "part001-of-002.zarr"]
    with open_readable(out) as st:
        assert isinstance(st, StoreSet) and all(p.rows > 0 for p in st.parts)
    assert _rows_of(out) == _rows_of(local_aligned)
    remote_stats = json.loads(RemotePath(f"{data.url}/aligned.stats.json").read_text())
    local_stats = json.loads((data.root / "aligned.zarr.stats.json").read_text())
    assert _stats_numbers(remote_stats) == _stats_numbers(local_stats)
    again = _torchrun(2, *common, "--out", out)
    assert again.returncode == 0 and "already complete" in again.stdout, again.stderr[-2000:]
    # apply under torchrun, with the stats read from s3, writes the same rows as parts of its own.
    applied = f"{data.url}/applied/"
    run = _torchrun(2, "apply", "--text", f"{data.url}/text.zarr", "--stats", f"{data.url}/aligned.stats.json",
                    *FLAGS, "--out", applied)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert _rows_of(applied) == _rows_of(local_aligned)


def _one_line_error(spec: str, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["info", spec]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_sets_on_s3_name_the_part(data: Data, local_aligned: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = f"{data.url}/bad"
    rng = np.random.default_rng(3)
    # A missing part: parts 0 and 2 of 3.
    for k in (0, 2):
        _store(f"{base}/gap/part{k:03d}-of-003.zarr", data.text[:10], "text", [f"g{k}-{j}" for j in range(10)])
    err = _one_line_error(f"{base}/gap/", capsys)
    assert f"{base}/gap/part001-of-003.zarr" in err and "part 1 of 3 is missing" in err, err
    # Parts of different dims.
    _store(f"{base}/dims/text-a.zarr", data.text[:10], "text", [f"a{j}" for j in range(10)])
    _store(
        f"{base}/dims/text-b.zarr", rng.normal(size=(10, 8)).astype(np.float16), "text", [f"b{j}" for j in range(10)]
    )
    err = _one_line_error(f"{base}/dims/text-*.zarr", capsys)
    assert f"{base}/dims/text-b.zarr: dim 8 differs from 16" in err, err
    # An id in two parts (checked on local temporary disk).
    _store(f"{base}/dup/part000-of-002.zarr", data.text[:10], "text", [f"d{j}" for j in range(10)])
    _store(f"{base}/dup/part001-of-002.zarr", data.text[:10], "text", [f"d{j}" for j in range(9, 19)])
    err = _one_line_error(f"{base}/dup/", capsys)
    assert "'d9'" in err and f"{base}/dup/part000-of-002.zarr (row 9)" in err
    assert f"{base}/dup/part001-of-002.zarr (row 0)" in err, err
    # A glob matching nothing, and a prefix of parts used as --text while a part is missing.
    assert "no store matches" in _one_line_error(f"{base}/none-*.zarr", capsys)
    capsys.readouterr()
    assert main(["align", "--text", f"{base}/gap/", "--image", f"{data.url}/image.zarr", "--out",
                 str(data.root / "never.zarr"), "--no-progress"]) == 2  # fmt: skip
    assert "part 1 of 3 is missing" in capsys.readouterr().err
    assert not (data.root / "never.zarr").exists()
    # A NaN row found by pass 3 of apply: the output this run created on s3 is removed, objects and all.
    nan = data.text.copy()
    nan[500, 3] = np.nan
    _store(f"{base}/nan.zarr", nan, "text", data.ids)
    stats = str(data.root / "aligned.zarr.stats.json")
    capsys.readouterr()
    assert main(["apply", "--text", f"{base}/nan.zarr", "--stats", stats, "--out", f"{base}/nan-aligned.zarr",
                 "--commit-rows", "64", "--block-rows", "32", "--no-progress"]) == 2  # fmt: skip
    assert "row 500" in capsys.readouterr().err
    assert RemotePath(f"{base}/nan-aligned.zarr").files() == {}
