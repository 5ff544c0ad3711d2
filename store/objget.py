"""GET requests to S3 through obstore (a Rust client), the read side of stores at `s3://` URLs.

Why a second client beside s3fs: measured on this machine against moto's server on loopback
(bench/results/scale.json "object_storage" -> "s3_clients"), obstore scanned the same store 2.7
times faster than s3fs: its requests run on Rust threads without the GIL, so they
overlap the reader's decoding and the server, and nothing is copied through Python's event loop.
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


def get_ranges(requests: Sequence[tuple[str, int, int]]) -> list[memoryview]:
    """Bytes [start, stop) of each (bucket/path, start, stop), all in flight together.

    Ranges are passed as given (the caller cuts them into pieces); obstore's own coalescing is off
    so that pieces stay separate requests.
    """
    if not requests:
        return []
    import obstore

    by_object: dict[str, list[int]] = {}
    for k, (key, _, _) in enumerate(requests):
        by_object.setdefault(key, []).append(k)

    async def fetch() -> list[list[Any]]:
        calls = []
        for key, ks in by_object.items():
            bucket, path = _split(key)
            starts = [requests[k][1] for k in ks]
            ends = [requests[k][2] for k in ks]
            calls.append(obstore.get_ranges_async(_store(bucket), path, starts=starts, ends=ends, coalesce=0))
        return list(await asyncio.gather(*calls))

    try:
        got = asyncio.run(fetch())
    except Exception as exc:
        raise _translate(exc) from None
    out: list[memoryview] = [memoryview(b"")] * len(requests)
    for ks, datas in zip(by_object.values(), got, strict=True):
        for k, data in zip(ks, datas, strict=True):
            out[k] = memoryview(data)
    return out
