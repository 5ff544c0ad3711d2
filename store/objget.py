"""GET requests to S3 through obstore (a Rust client), the read side of stores at `s3://` URLs.

Why a second client beside s3fs: its requests run on Rust threads without the GIL, so they overlap
the reader's decoding and the server, and nothing is copied through Python's event loop. Measured
on this machine against SeaweedFS on loopback, which client scans faster changes from run to run on
the 2 shared cores: obstore 1.25x s3fs in one run, s3fs 1.27x obstore in the committed one
(bench/results/scale.json "object_storage" -> "servers" -> "seaweedfs" -> "s3_clients").
s3fs keeps every write, listing and conditional PUT (objio.py), whose semantics the commit protocol
and the writer lock are tested with.

`REVISION_S3_CLIENT=fsspec` sends GETs through s3fs as well (also chosen when `REVISION_STORAGE_OPTIONS`
is set, since those options are s3fs's and have no faithful obstore translation). Credentials are
botocore's, resolved the way s3fs resolves them (environment, ~/.aws files and profiles, SSO,
instance roles), and handed to obstore by a credential provider that botocore refreshes.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import threading
from collections.abc import Sequence
from typing import Any

CLIENT_ENV = "REVISION_S3_CLIENT"
_CLIENTS = ("obstore", "fsspec")


def wanted(protocol: str) -> bool:
    """True when GETs for `protocol` URLs go through obstore (s3:// with obstore installed)."""
    if protocol not in ("s3", "s3a"):
        return False
    choice = os.environ.get(CLIENT_ENV, "obstore").strip().lower() or "obstore"
    if choice not in _CLIENTS:
        from .objio import ObjectStorageError

        raise ObjectStorageError(f"{CLIENT_ENV}={choice!r}: not one of {', '.join(_CLIENTS)}")
    if choice == "fsspec" or os.environ.get("REVISION_STORAGE_OPTIONS"):
        return False
    try:
        import obstore  # noqa: F401
    except ImportError:
        return False
    return True


class _BotocoreCredentials:
    """obstore credential provider backed by botocore's credential chain (refreshable credentials stay fresh)."""

    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials

    def __call__(self) -> dict[str, Any]:
        frozen = self._credentials.get_frozen_credentials()
        refreshable = hasattr(self._credentials, "refresh_needed")
        # Ask again in a few minutes for credentials botocore refreshes (roles, SSO); never for static keys.
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5) if refreshable else None
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            "expires_at": expires,
        }


_lock = threading.Lock()
_stores: dict[tuple[str, str, str], Any] = {}


def _store(bucket: str) -> Any:
    """The obstore S3Store for `bucket`, made once per process, endpoint and region."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    import botocore.session

    session = botocore.session.get_session()
    region = session.get_config_variable("region") or os.environ.get("AWS_REGION") or "us-east-1"
    key = (bucket, endpoint, region)
    with _lock:
        store = _stores.get(key)
        if store is None:
            from obstore.store import S3Store

            kwargs: dict[str, Any] = {"region": region}
            if endpoint:
                kwargs["endpoint"] = endpoint
                kwargs["allow_http"] = endpoint.startswith("http://")
                kwargs["virtual_hosted_style_request"] = False
            credentials = session.get_credentials()
            if credentials is None:
                kwargs["skip_signature"] = True  # public buckets; a denied request is reported by its URL
            else:
                kwargs["credential_provider"] = _BotocoreCredentials(credentials)
            # Keep connections to the store open between blocks, and allow the ranged GETs of a
            # block and of the blocks read ahead to be in flight together.
            client = {"pool_max_idle_per_host": "32", "pool_idle_timeout": "60 seconds"}
            store = _stores[key] = S3Store(bucket, client_options=client, **kwargs)  # type: ignore[arg-type]
    return store


def _split(key: str) -> tuple[str, str]:
    bucket, _, path = key.partition("/")
    return bucket, path


def _translate(exc: Exception) -> Exception:
    from obstore.exceptions import NotFoundError

    if isinstance(exc, NotFoundError):
        return FileNotFoundError(str(exc).splitlines()[0] if str(exc) else "not found")
    return exc


def get(key: str) -> memoryview:
    """The whole object `bucket/path`."""
    import obstore

    bucket, path = _split(key)
    try:
        return memoryview(obstore.get(_store(bucket), path).bytes())
    except Exception as exc:
        raise _translate(exc) from None


def get_tail(key: str, n: int) -> memoryview:
    """The last `n` bytes of the object (one suffix-range GET, no HEAD); fewer when it is shorter."""
    import obstore

    bucket, path = _split(key)
    try:
        result = obstore.get(_store(bucket), path, options={"range": {"suffix": n}})
        return memoryview(result.bytes())
    except Exception as exc:
        raise _translate(exc) from None


# The event loop the async GETs of get_ranges run on: one daemon thread per process (made again in a
# forked child, which inherits the loop object but not its thread).
_loop_lock = threading.Lock()
_loop: tuple[int, asyncio.AbstractEventLoop] | None = None


def _event_loop() -> asyncio.AbstractEventLoop:
    """This process's loop thread for obstore's async requests, started on first use.

    Why not `asyncio.run` in the calling thread: obstore's async GETs awaited on a loop in the main
    thread ran ~30 times slower than on any other thread (8 concurrent 8 MiB ranges from a local
    SeaweedFS: 30 MB/s against 880 MB/s), and `FeatureStore.read` is called from the main thread.
    One long-lived loop also saves making a loop per block.
    """
    global _loop
    with _loop_lock:
        if _loop is None or _loop[0] != os.getpid() or _loop[1].is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="revision-s3-get", daemon=True).start()
            _loop = (os.getpid(), loop)
        return _loop[1]


def get_ranges(requests: Sequence[tuple[str, int, int]]) -> list[memoryview]:
    """Bytes [start, stop) of each (bucket/path, start, stop), each its own GET, all in flight together.

    Ranges are passed as given (the caller cuts them into pieces). Each is one `get_range` request:
    obstore's `get_ranges` merges ranges that touch even with `coalesce=0`, which made a whole
    shard's consecutive pieces one GET (measured: 8 adjacent ranges reached the server as 1 request).
    """
    if not requests:
        return []
    import obstore

    async def fetch() -> list[Any]:
        calls = []
        for key, start, stop in requests:
            bucket, path = _split(key)
            calls.append(obstore.get_range_async(_store(bucket), path, start=start, end=stop))
        return list(await asyncio.gather(*calls))

    try:
        got = asyncio.run_coroutine_threadsafe(fetch(), _event_loop()).result()
    except Exception as exc:
        raise _translate(exc) from None
    return [memoryview(data) for data in got]
