"""Stores on object storage, against real S3-protocol servers (moto's and SeaweedFS's) on loopback.

Every test talks HTTP to a server started here (tests/s3server.py; no mocked client), once per
server kind: ingest to s3://, info, align with text, image and --out on s3://, export from s3://, a
SIGKILL mid-upload and the resume, wrong credentials, a second writer refused, a stale lock taken
over (where the server honours the conditional PUT the lock is made with, probed first).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from s3server import BUCKET, KINDS, Server, bucket_prefix, honours_conditional_put, serve, start_moto  # noqa: E402

from revision.cli import main  # noqa: E402
from revision.store import FeatureStore, StoreConfig  # noqa: E402
from revision.store.lock import LockedError  # noqa: E402
from revision.store.objio import RemotePath  # noqa: E402


@pytest.fixture(scope="module", params=KINDS)
def s3_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    yield from serve(request.param)


@pytest.fixture()
def s3(s3_server: Server, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """A fresh prefix in the bucket, with the environment a user would set."""
    return bucket_prefix(s3_server.endpoint, monkeypatch, request.node.name)


def _make_npy(tmp: Path, name: str, rows: np.ndarray) -> Path:
    d = tmp / name
    d.mkdir()
    np.save(d / "emb.npy", rows)
    return d / "emb.npy"


def _objects(url: str) -> dict[str, bytes]:
    root = RemotePath(url)
    return {obj.key[len(root.key) + 1 :]: obj.read_bytes() for obj in root.files()}


def _local_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _store(url: str, rows: np.ndarray, modality: str, **geometry: int) -> None:
    cfg = StoreConfig(modality=modality, dim=rows.shape[1], dtype="float32", codec="none", **geometry)
    with FeatureStore.create(url, cfg) as st:
        st.append(rows, [f"{modality}{k}" for k in range(len(rows))])


def test_roundtrip_append_commit_and_reads(s3: str) -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(300, 8)).astype(np.float32)
    url = f"{s3}/t.zarr"
    cfg = StoreConfig(modality="text", dim=8, dtype="float32", codec="zstd", chunk_rows=32, chunks_per_shard=2)
    with FeatureStore.create(url, cfg, metadata_columns={"caption": "str"}) as st:
        st.append(rows[:100], [f"t{k}" for k in range(100)], {"caption": [f"c{k}" for k in range(100)]})
        st.commit()
        st.append(rows[100:], [f"t{k}" for k in range(100, 300)], {"caption": [f"c{k}" for k in range(100, 300)]})
    st = FeatureStore.open(url)
    assert st.rows == 300 and isinstance(st.path, RemotePath)
    np.testing.assert_array_equal(st.read(), rows)
    np.testing.assert_array_equal(st.read(45, 170), rows[45:170])
    blocks = [b for _, b in st.iter_chunks(block_rows=64)]
    np.testing.assert_array_equal(np.concatenate(blocks), rows)
    np.testing.assert_array_equal(st.read_rows([299, 3, 64]), rows[[299, 3, 64]])
    assert list(st.read_ids(298)) == ["t298", "t299"]
    assert list(st.read_metadata("caption", 0, 2)) == ["c0", "c1"]
    assert st.info()["bytes_on_disk"] > 0
    assert ".revision-lock" not in _objects(url)  # released on close
    st.close()


@pytest.mark.parametrize("client", ["obstore", "fsspec"])
def test_reader_paths_give_the_local_bytes(s3: str, client: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole shards fetched with their index, partial blocks through the index, a shard replaced
    since the commit (its size no longer the one the commit implies), and a missing shard, through
    both GET clients."""
    pytest.importorskip("obstore")
    from revision.store import objio
    from revision.store.errors import DamagedStoreError, UserError

    monkeypatch.setenv("REVISION_S3_CLIENT", client)
    monkeypatch.setattr(objio, "RANGE_PIECE_BYTES", 1000)  # several pieces per span, boundaries inside chunks
    rng = np.random.default_rng(5)
    rows = rng.normal(size=(170, 8)).astype(np.float32)
    url = f"{s3}/r.zarr"
    _store(url, rows, "text", chunk_rows=16, chunks_per_shard=4)  # shards of 64 rows; the last one short
    st = FeatureStore.open(url)
    np.testing.assert_array_equal(np.concatenate([b for _, b in st.iter_chunks()]), rows)
    st2 = FeatureStore.open(url)  # no cached index: partial blocks read the index first
    np.testing.assert_array_equal(st2.read(20, 150), rows[20:150])
    np.testing.assert_array_equal(np.concatenate([b for _, b in st2.iter_chunks(block_rows=32)]), rows)
    # A writer appends and rewrites the last shard after this reader opened: its object grew, and
    # the reader falls back to the object's own index, still seeing its commit's rows.
    from revision.store.shard import ShardReader

    before = FeatureStore.open(url)
    with FeatureStore.open(url, mode="a") as w:
        w.append(rows[:20], [f"x{k}" for k in range(20)])
    fallbacks: list[int] = []
    real = ShardReader._read_into_remote_indexed
    monkeypatch.setattr(
        ShardReader, "_read_into_remote_indexed", lambda self, *a: fallbacks.append(a[2]) or real(self, *a)
    )
    np.testing.assert_array_equal(before.read(128, 170), rows[128:170])
    assert fallbacks == [2]
    np.testing.assert_array_equal(st.read(128, 170), rows[128:170])
    np.testing.assert_array_equal(FeatureStore.open(url).read(0, 190), np.concatenate([rows, rows[:20]]))
    RemotePath(f"{url}/vectors/c/1/0").unlink()
    with pytest.raises(DamagedStoreError, match="missing"):
        FeatureStore.open(url).read()
    monkeypatch.setenv("REVISION_S3_CLIENT", "boto")
    with pytest.raises(UserError, match="REVISION_S3_CLIENT='boto': not one of obstore, fsspec"):
        FeatureStore.open(url).read()


def test_ingest_info_align_export(s3: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(1)
    text = (rng.normal(size=(400, 16)) + 1).astype(np.float32)
    image = (rng.normal(size=(250, 16)) - 1).astype(np.float32)
    src_t, src_i = _make_npy(tmp_path, "t", text), _make_npy(tmp_path, "i", image)
    os.environ["REVISION_STAGING_DIR"] = str(tmp_path / "staging")
    try:
        for src, name, mod in ((src_t, "text.zarr", "text"), (src_i, "image.zarr", "image")):
            for dest in (f"{s3}/{name}", str(tmp_path / name)):
                assert main(["ingest", str(src), dest, "--format", "npy", "--modality", mod,
                             "--chunk-rows", "64"]) == 0  # fmt: skip
    finally:
        del os.environ["REVISION_STAGING_DIR"]
    # The uploaded store is byte for byte the local one.
    assert _objects(f"{s3}/text.zarr") == _local_tree(tmp_path / "text.zarr")
    capsys.readouterr()
    assert main(["info", f"{s3}/text.zarr", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == 400 and info["path"] == f"{s3}/text.zarr"

    flags = ["--commit-rows", "128", "--block-rows", "64", "--no-progress"]
    assert main(["align", "--text", f"{s3}/text.zarr", "--image", f"{s3}/image.zarr",
                 "--out", f"{s3}/aligned.zarr", *flags]) == 0  # fmt: skip
    assert main(["align", "--text", str(tmp_path / "text.zarr"), "--image", str(tmp_path / "image.zarr"),
                 "--out", str(tmp_path / "aligned.zarr"), *flags]) == 0  # fmt: skip
    remote, local = FeatureStore.open(f"{s3}/aligned.zarr"), FeatureStore.open(tmp_path / "aligned.zarr")
    np.testing.assert_array_equal(remote.read(), local.read())
    assert RemotePath(f"{s3}/aligned.zarr.stats.json").is_file()
    remote.close()
    local.close()
    # Re-running the finished command is a no-op.
    capsys.readouterr()
    assert main(["align", "--text", f"{s3}/text.zarr", "--image", f"{s3}/image.zarr",
                 "--out", f"{s3}/aligned.zarr", *flags]) == 0  # fmt: skip
    assert "already complete" in capsys.readouterr().out

    assert main(["export", f"{s3}/aligned.zarr", str(tmp_path / "a.npy.d"), "--format", "npy"]) == 0
    assert main(["export", str(tmp_path / "aligned.zarr"), str(tmp_path / "b.npy.d"), "--format", "npy"]) == 0
    assert _local_tree(tmp_path / "a.npy.d") == _local_tree(tmp_path / "b.npy.d")


def test_align_killed_mid_upload_resumes_to_the_same_bytes(s3: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    _store(f"{s3}/t.zarr", (rng.normal(size=(600, 8)) + 1).astype(np.float32), "text", chunk_rows=16)
    _store(f"{s3}/i.zarr", (rng.normal(size=(200, 8)) - 1).astype(np.float32), "image", chunk_rows=16)
    cmd = [sys.executable, "-m", "revision", "align", "--text", f"{s3}/t.zarr", "--image", f"{s3}/i.zarr",
           "--commit-rows", "64", "--block-rows", "32", "--no-progress"]  # fmt: skip
    assert subprocess.run([*cmd, "--out", f"{s3}/clean.zarr"], capture_output=True).returncode == 0
    # SIGKILL at the 15th object PUT: 3 to create, 5 per commit (2 shards, 2 array zarr.json, the
    # group's), so two commits are in and the third dies among its shard uploads.
    env = {**os.environ, "REVISION_FAULT": "kill@15"}
    killed = subprocess.run([*cmd, "--out", f"{s3}/killed.zarr"], capture_output=True, env=env)
    assert killed.returncode == -signal.SIGKILL
    partial = FeatureStore.open(f"{s3}/killed.zarr")
    assert 0 < partial.rows < 600
    partial.close()
    again = subprocess.run([*cmd, "--out", f"{s3}/killed.zarr"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "resumed at row" in again.stdout
    clean, resumed = _objects(f"{s3}/clean.zarr"), _objects(f"{s3}/killed.zarr")
    assert clean.keys() == resumed.keys()
    for key in clean:
        if key != "zarr.json":  # the group record names its own source rows and commits
            assert clean[key] == resumed[key], key
    np.testing.assert_array_equal(FeatureStore.open(f"{s3}/killed.zarr").read(),
                                  FeatureStore.open(f"{s3}/clean.zarr").read())  # fmt: skip


def test_wrong_credentials_fail_in_one_line(s3_server: Server, tmp_path: Path) -> None:
    # SeaweedFS checks keys; for moto, a second server with authentication on (moto checks keys once
    # INITIAL_NO_AUTH_ACTION_COUNT runs out).
    server = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) if s3_server.kind == "moto" else None
    endpoint = server.endpoint if server is not None else s3_server.endpoint
    try:
        env = {**os.environ, "AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": "nobody",
               "AWS_SECRET_ACCESS_KEY": "wrong", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
        url = f"s3://{BUCKET}/creds/t.zarr"
        r = subprocess.run([sys.executable, "-m", "revision", "info", url], capture_output=True, text=True, env=env)
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and url in lines[0] and "credentials" in lines[0], r.stderr
        # Writing fails the same way, before anything is committed.
        src = _make_npy(tmp_path, "t", np.ones((10, 4), dtype=np.float32))
        r = subprocess.run([sys.executable, "-m", "revision", "ingest", str(src), url, "--format", "npy",
                            "--modality", "text"], capture_output=True, text=True,
                           env={**env, "REVISION_STAGING_DIR": str(tmp_path / "st")})  # fmt: skip
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and url in r.stderr, r.stderr
    finally:
        if server is not None:
            server.stop()


def test_second_writer_refused_and_stale_lock_taken_over(s3: str, s3_server: Server) -> None:
    if not honours_conditional_put(s3_server.endpoint, BUCKET):
        pytest.skip(f"{s3_server.kind} does not refuse a PUT with If-None-Match: * of an existing object, "
                    "which the writer lock (store/objlock.py) needs")  # fmt: skip
    rows = np.ones((20, 4), dtype=np.float32)
    url = f"{s3}/t.zarr"
    _store(url, rows, "text")
    first = FeatureStore.open(url, mode="a")
    with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
        FeatureStore.open(url, mode="a")
    first.close()
    # A lock left by a holder that died elsewhere (another host) is taken over once its lease ran out.
    lock = RemotePath(url) / ".revision-lock"
    lock.put(json.dumps({"host": "elsewhere", "pid": 1, "cmd": "x", "expires": time.time() + 30}).encode())
    with pytest.raises(LockedError, match="elsewhere"):
        FeatureStore.open(url, mode="a")
    lock.put(json.dumps({"host": "elsewhere", "pid": 1, "cmd": "x", "expires": time.time() - 1}).encode())
    st = FeatureStore.open(url, mode="a")
    st.append(rows, [f"x{k}" for k in range(20)])
    st.commit()
    st.close()
    assert FeatureStore.open(url).rows == 40


def test_bad_urls(s3: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", f"{s3}/missing.zarr"]) == 2
    assert "no such store" in capsys.readouterr().err
    assert main(["info", f"s3://{BUCKET}-missing/x.zarr"]) == 2
