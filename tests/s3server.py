"""A real S3-protocol server for the object-storage tests: moto's standalone server on loopback.

No mocked client: the tests talk HTTP to `python -m moto.server` started here, with the
environment a user would set (AWS_ENDPOINT_URL_S3 and keys). A test module makes its fixtures
from these helpers (a plain module, not a plugin, so pytest rewrites nothing twice):

    @pytest.fixture(scope="module")
    def s3_server() -> Iterator[str]:
        yield from s3server.serve()
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

BUCKET = "revision-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto(env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start a moto server on a free loopback port; (process, endpoint URL) once it answers."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            return proc, endpoint
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    proc.wait(timeout=10)
    pytest.fail("moto server did not start")


def client_env(endpoint: str) -> dict[str, str]:
    """The variables a user of an S3-compatible server sets."""
    return {
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def serve() -> Iterator[str]:
    """A moto server's endpoint while the generator is suspended (the body of a module fixture)."""
    proc, endpoint = start_moto()
    try:
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def bucket_prefix(endpoint: str, monkeypatch: pytest.MonkeyPatch, name: str) -> str:
    """`s3://BUCKET/name`, with the bucket made and the environment a user would set."""
    for k, v in client_env(endpoint).items():
        monkeypatch.setenv(k, v)
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    return f"s3://{BUCKET}/{name}"
