"""The obstore GET path of s3:// reads (store/objget.py) against a recording HTTP endpoint.

Each requested range must reach the server as its own GET, all in flight together, whatever thread
asks: obstore's own `get_ranges` merges touching ranges even with coalesce=0 (a whole shard's
pieces became one request), and its async GETs awaited on the main thread's loop ran ~30 times
slower; the old implementation is kept here to show that the request check bites.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

pytest.importorskip("obstore")

from revision.store import objget  # noqa: E402

OBJECTS = {
    "bkt/a": np.random.default_rng(0).integers(0, 256, 3_000_003, dtype=np.uint8).tobytes(),
    "bkt/b": np.random.default_rng(1).integers(0, 256, 70_001, dtype=np.uint8).tobytes(),
}


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0


def _handler(rec: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
            key = self.path.lstrip("/").split("?")[0]
            header = self.headers.get("Range", "")
            with rec.lock:
                rec.requests.append((key, header))
                rec.in_flight += 1
                rec.max_in_flight = max(rec.max_in_flight, rec.in_flight)
            try:
                time.sleep(0.05)  # long enough for the others of a batch to arrive meanwhile
                data = OBJECTS[key]
                lo, _, hi = header.removeprefix("bytes=").partition("-")
                start, stop = int(lo), min(int(hi) + 1, len(data))
                self.send_response(206)
                self.send_header("Content-Length", str(stop - start))
                self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
                self.send_header("Last-Modified", formatdate(usegmt=True))
                self.send_header("ETag", '"0123456789abcdef"')
                self.end_headers()
                self.wfile.write(data[start:stop])
            finally:
                with rec.lock:
                    rec.in_flight -= 1

    return Handler


@pytest.fixture()
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    rec = Recorder()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(rec))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for k, v in {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{server.server_address[1]}", "AWS_ACCESS_KEY_ID": "k",
                 "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()


# Touching pieces of one object (as read_pieces cuts a shard), one more of another, a one-byte range.
REQUESTS = [("bkt/a", 0, 1_000_000), ("bkt/a", 1_000_000, 2_000_000), ("bkt/a", 2_000_000, 3_000_003),
            ("bkt/b", 5, 70_001), ("bkt/a", 17, 18)]  # fmt: skip


def _check(got: list[Any], rec: Recorder) -> None:
    for (key, a, b), data in zip(REQUESTS, got, strict=True):
        assert bytes(data) == OBJECTS[key][a:b], (key, a, b, len(data))
    sent = sorted(rec.requests)
    assert sent == sorted((key, f"bytes={a}-{b - 1}") for key, a, b in REQUESTS), sent


@pytest.mark.parametrize("where", ["main thread", "worker thread"])
def test_each_range_is_its_own_request_all_in_flight(endpoint: Recorder, where: str) -> None:
    out: list[Any] = []
    if where == "main thread":
        out = objget.get_ranges(REQUESTS)
    else:
        worker = threading.Thread(target=lambda: out.extend(objget.get_ranges(REQUESTS)))
        worker.start()
        worker.join()
    _check(out, endpoint)
    assert endpoint.max_in_flight >= 2, endpoint.max_in_flight
    assert objget.get_ranges([]) == []


def _merged_get_ranges(requests: list[tuple[str, int, int]]) -> list[Any]:
    """The former implementation: obstore's get_ranges per object, coalesce=0."""
    import obstore

    async def fetch() -> list[Any]:
        out: list[Any] = []
        for key in dict.fromkeys(k for k, _, _ in requests):
            bucket, path = key.split("/", 1)
            mine = [(a, b) for k, a, b in requests if k == key]
            got = await obstore.get_ranges_async(objget._store(bucket), path, starts=[a for a, _ in mine],
                                                 ends=[b for _, b in mine], coalesce=0)  # fmt: skip
            out.extend(got)
        return out

    return asyncio.run(fetch())


def test_the_request_check_bites(endpoint: Recorder) -> None:
    got = _merged_get_ranges(REQUESTS[:3])
    assert b"".join(bytes(g) for g in got) == OBJECTS["bkt/a"]
    assert endpoint.requests == [("bkt/a", "bytes=0-3000002")]  # three touching ranges, one GET
