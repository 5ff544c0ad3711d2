"""Object storage for feature stores: `s3://`, `gs://`, `memory://` and other fsspec URLs.

A store on object storage has exactly the local layout (Zarr v3, sharded); only the I/O differs.
The interface a store needs is small, and `RemotePath` is it for URLs:

    read a byte range      `read_range` / `read_ranges` (several ranged GETs in flight)
    write an object whole  `put` (one PUT; a reader sees the old object or the new one)
    create-if-absent       `put_if_absent` (a conditional PUT, If-None-Match: *; the writer lock)
    list, delete, size     `files`, `delete`, `size`, `exists`, `is_file`, `is_dir`

The local backend is the local filesystem code in shard.py and atomic.py (positioned reads and
memory-mapped views; a temporary file renamed over its name, fsynced): `atomic_write_bytes` and the shard
reader choose by the type of the path, so local stores keep their bytes and their speed.

The commit protocol carries over unchanged, because it only ever needed "write a file whole" and
"the group zarr.json written last is the commit": every object is written with one PUT (never
appended to), shards before array metadata before the group's zarr.json. A store on object storage
*exists* once its zarr.json does; objects under a prefix without one are an unfinished creation.

Backends, chosen by measurement (bench/results/scale.json "object_storage"): GETs on s3:// go
through obstore (objget.py, a Rust client; on par with s3fs here, ahead or behind by run), everything
else (PUTs, listings, HEADs, the conditional PUT of the lock, and every request for other schemes)
through fsspec with s3fs, gcsfs, ... Credentials and endpoints come from
the standard places: AWS_* environment variables (AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL for an
S3-compatible server), ~/.aws, instance roles; `REVISION_STORAGE_OPTIONS` (a JSON object) adds
fsspec storage options for every URL.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from . import faults
from .errors import UserError

_URL = re.compile(r"^(?P<protocol>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<rest>.*)$")
_OPTIONS_ENV = "REVISION_STORAGE_OPTIONS"
#: Ranged reads are cut into pieces of at most this many bytes, fetched concurrently. 32 MiB (two
#: GETs per 64 MiB shard, so ~6 in flight with the scan's read-ahead) was the fastest of 8-64 MiB
#: scanning from SeaweedFS on loopback (bench/results/scale.json): smaller pieces cost the server and
#: the client more per byte than their concurrency gains when both share the machine's cores.
RANGE_PIECE_BYTES = 32 << 20

T = TypeVar("T")


class ObjectStorageError(UserError):
    """A request to object storage failed (credentials, permissions, endpoint); the message names the URL."""


def is_url(path: object) -> bool:
    """True for `scheme://...` strings other than file:// (those are local paths)."""
    if isinstance(path, RemotePath):
        return True
    if not isinstance(path, str):
        return False
    m = _URL.match(path)
    return m is not None and m["protocol"].lower() not in ("file", "local")


def location(path: str | os.PathLike[str] | RemotePath) -> Path | RemotePath:
    """A local `Path`, or a `RemotePath` for a URL (what every store entry point calls first)."""
    if isinstance(path, RemotePath):
        return path
    if isinstance(path, str) and is_url(path):
        return RemotePath(path)
    s = os.fspath(path)
    if isinstance(s, str) and s.startswith("file://"):
        s = s[len("file://") :]
    return Path(s)


def storage_options(protocol: str) -> dict[str, Any]:
    """fsspec options for `protocol`: the S3 endpoint from the environment, listings never cached."""
    opts: dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        # A listing cache would show one process's stale view of objects another process wrote.
        opts["use_listings_cache"] = False
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["client_kwargs"] = {"endpoint_url": endpoint}
    raw = os.environ.get(_OPTIONS_ENV)
    if raw:
        try:
            extra = json.loads(raw)
        except ValueError as exc:
            raise ObjectStorageError(f"{_OPTIONS_ENV}: not a JSON object ({exc})") from None
        if not isinstance(extra, dict):
            raise ObjectStorageError(f"{_OPTIONS_ENV}: not a JSON object")
        opts.update(extra)
    return opts


_fs_lock = threading.Lock()
_fs_cache: dict[tuple[str, str], Any] = {}


def filesystem(protocol: str) -> Any:
    """The fsspec filesystem for `protocol`, made once per process and set of options."""
    opts = storage_options(protocol)
    key = (protocol, json.dumps(opts, sort_keys=True, default=str))
    with _fs_lock:
        fs = _fs_cache.get(key)
        if fs is None:
            import fsspec

            try:
                cls = fsspec.get_filesystem_class(protocol)
            except (ImportError, ValueError) as exc:
                raise ObjectStorageError(
                    f"{protocol}://: no filesystem for this URL scheme ({exc}); for s3:// install revision[s3]"
                ) from None
            fs = _fs_cache[key] = cls(**opts)
    return fs


def _call(url: str, what: str, fn: Callable[[], T]) -> T:
    """Run one storage request; failures other than a missing object become one-line errors naming `url`."""
    try:
        return fn()
    except FileNotFoundError:
        raise
    except UserError:
        raise
    except Exception as exc:  # botocore, aiohttp and fsspec raise many types; all mean the same here
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if len(reason) > 300:
            reason = reason[:297] + "..."
        raise ObjectStorageError(
            f"{url}: {what} failed ({reason}); check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE, ...) "
            "and the endpoint (AWS_ENDPOINT_URL_S3)"
        ) from None


def _precondition_failed(exc: BaseException) -> bool:
    """True when `exc` (or an error it was raised from) is a refused conditional PUT: S3's 412
    PreconditionFailed, or a ConditionalRequestConflict with a concurrent one.

    s3fs raises FileExistsError only when the error names its condition (`<Condition>If-None-Match`,
    as AWS and moto send); SeaweedFS sends a bare 412, which s3fs turns into OSError(EINVAL) with the
    botocore error as its cause, so the cause's code is what tells.
    """
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
                return True
        text = str(seen)
        if "PreconditionFailed" in text or "412" in text or "ConditionalRequestConflict" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class RemotePath:
    """A path in object storage, with the few `pathlib.Path` methods stores use, and ranged I/O."""

    __slots__ = ("protocol", "key")

    def __init__(self, url: str, *, _parts: tuple[str, str] | None = None) -> None:
        if _parts is None:
            m = _URL.match(url)
            if m is None:
                raise ValueError(f"{url}: not a URL")
            _parts = (m["protocol"].lower(), m["rest"].strip("/"))
        self.protocol, self.key = _parts
        if not self.key:
            raise ObjectStorageError(f"{url}: a URL needs a bucket (and a key), e.g. s3://bucket/text.zarr")

    # -- path arithmetic ----------------------------------------------------------------------
    def __truediv__(self, other: str) -> RemotePath:
        return RemotePath("", _parts=(self.protocol, f"{self.key}/{str(other).strip('/')}"))

    def __str__(self) -> str:
        return f"{self.protocol}://{self.key}"

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and (self.protocol, self.key) == (other.protocol, other.key)

    def __hash__(self) -> int:
        return hash((self.protocol, self.key))

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        name = self.name
        return name[name.rfind(".") :] if "." in name.lstrip(".") else ""

    @property
    def stem(self) -> str:
        return self.name[: len(self.name) - len(self.suffix)]

    @property
    def parent(self) -> RemotePath:
        head = self.key.rsplit("/", 1)[0] if "/" in self.key else self.key
        return RemotePath("", _parts=(self.protocol, head))

    @property
    def parents(self) -> list[RemotePath]:
        out, p = [], self
        while "/" in p.key:
            p = p.parent
            out.append(p)
        return out

    def with_name(self, name: str) -> RemotePath:
        return self.parent / name

    def resolve(self) -> RemotePath:
        return self

    def expanduser(self) -> RemotePath:
        return self

    @property
    def fs(self) -> Any:
        return filesystem(self.protocol)

    @property
    def _fs_path(self) -> str:
        # s3fs and friends take "bucket/key"; the memory filesystem keeps its own leading slash.
        return self.fs._strip_protocol(str(self))  # type: ignore[no-any-return]

    # -- queries ------------------------------------------------------------------------------
    def is_file(self) -> bool:
        def probe() -> bool:
            # Not fs.isfile: it answers False on any error, which would report a denied request
            # (bad credentials) as a missing store.
            try:
                info = self.fs.info(self._fs_path)
            except FileNotFoundError:
                return False
            return bool(info.get("type") == "file")

        return _call(str(self), "a HEAD request", probe)

    def is_dir(self) -> bool:
        """True when objects exist under this prefix (object storage has no directories)."""
        return bool(_call(str(self), "a listing", lambda: self.fs.isdir(self._fs_path)))

    def exists(self) -> bool:
        """An object of this name, or a Zarr node here (its zarr.json): objects under a prefix without
        one are an unfinished creation, which `FeatureStore.create` takes over."""
        return self.is_file() or (self / "zarr.json").is_file()

    def size(self) -> int:
        return int(_call(str(self), "a HEAD request", lambda: self.fs.size(self._fs_path)))

    def iterdir(self) -> Iterator[RemotePath]:
        names = _call(str(self), "a listing", lambda: self.fs.ls(self._fs_path, detail=False))
        for n in sorted(names):
            yield self / str(n).rstrip("/").rsplit("/", 1)[-1]

    def expand(self) -> list[RemotePath]:
        """Every object or prefix whose name matches this path read as a glob (`*`, `?`, `[...]`), by
        listings of the part before the first wildcard (fsspec's glob)."""
        names = _call(str(self), "a listing", lambda: self.fs.glob(self._fs_path))
        return [RemotePath("", _parts=(self.protocol, str(n).strip("/"))) for n in names]

    def files(self) -> dict[RemotePath, int]:
        """Every object under this prefix and its size."""
        found = _call(str(self), "a listing", lambda: self.fs.find(self._fs_path, detail=True))
        base = self._fs_path.rstrip("/") + "/"
        out = {}
        for name, info in found.items():
            if name.startswith(base) and info.get("type", "file") == "file":
                out[self / name[len(base) :]] = int(info.get("size") or 0)
        return out

    # -- reading ------------------------------------------------------------------------------
    def _obstore(self) -> bool:
        from . import objget

        return objget.wanted(self.protocol)

    def read_bytes(self) -> bytes:
        return bytes(self.read_buffer())

    def read_buffer(self) -> memoryview | bytes:
        """The whole object in one GET, without a copy where the client allows it."""
        if self._obstore():
            from . import objget

            return _call(str(self), "a GET request", lambda: objget.get(self.key))
        return bytes(_call(str(self), "a GET request", lambda: self.fs.cat_file(self._fs_path)))

    def read_tail(self, n: int) -> memoryview | bytes:
        """The last `n` bytes of the object (all of it when shorter): a suffix-range GET."""
        if self._obstore():
            from . import objget

            return _call(str(self), "a ranged GET", lambda: objget.get_tail(self.key, n))
        size = self.size()
        return self.read_range(max(0, size - n), size)

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def read_range(self, start: int, stop: int) -> bytes:
        """Bytes [start, stop) of the object, in one ranged GET."""
        if self._obstore():
            from . import objget

            return bytes(_call(str(self), "a ranged GET", lambda: objget.get_ranges([(self.key, start, stop)])[0]))
        return bytes(_call(str(self), "a ranged GET", lambda: self.fs.cat_file(self._fs_path, start=start, end=stop)))

    # -- writing ------------------------------------------------------------------------------
    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: prefixes exist by the objects under them."""

    def put(self, data: bytes | Iterable[bytes], *, fault_point: bool = True) -> None:
        """Write the object whole in one PUT (a reader sees the old object or the new one)."""
        body = data if isinstance(data, bytes) else b"".join(bytes(p) for p in data)
        if fault_point:  # the fault suite's kill@N counts object PUTs the way it counts local writes
            faults.point("write", str(self))
        _call(str(self), "a PUT request", lambda: self.fs.pipe_file(self._fs_path, body))

    def put_if_absent(self, data: bytes) -> bool:
        """A conditional PUT (If-None-Match: *): True if it created the object, False if one existed."""

        def attempt() -> bool:
            try:
                self.fs.pipe_file(self._fs_path, data, mode="create")
            except FileExistsError:
                return False
            except Exception as exc:
                if _precondition_failed(exc):
                    return False
                raise
            return True

        return _call(str(self), "a conditional PUT", attempt)

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            _call(str(self), "a DELETE request", lambda: self.fs.rm_file(self._fs_path))
        except FileNotFoundError:
            if not missing_ok:
                raise

    def delete_tree(self) -> None:
        """Delete every object under this prefix."""
        paths = [f._fs_path for f in self.files()]
        if paths:
            _call(str(self), "a DELETE request", lambda: self.fs.rm(paths))


def read_pieces(requests: list[tuple[RemotePath, int, int]]) -> list[list[memoryview | bytes]]:
    """Bytes [start, stop) of each (object, start, stop), as consecutive pieces, fetched concurrently.

    Big ranges are cut into RANGE_PIECE_BYTES pieces so one block is several GETs in flight (one
    stream to an object store is far slower than its aggregate bandwidth). The pieces are returned
    as they came, so the caller copies each once, into its own buffer.
    """
    if not requests:
        return []
    pieces: list[tuple[int, RemotePath, int, int]] = []
    for k, (path, start, stop) in enumerate(requests):
        pos = start
        while pos < stop:
            end = min(stop, pos + RANGE_PIECE_BYTES)
            pieces.append((k, path, pos, end))
            pos = end
    first = requests[0][0]
    got: list[Any]
    if first._obstore():
        from . import objget

        got = _call(
            str(first.parent), "ranged GETs", lambda: objget.get_ranges([(p.key, a, b) for _, p, a, b in pieces])
        )
    else:
        fs = first.fs
        got = _call(
            str(first.parent),
            "ranged GETs",
            lambda: fs.cat_ranges(
                [p._fs_path for _, p, _, _ in pieces], [a for _, _, a, _ in pieces], [b for _, _, _, b in pieces],
                on_error="raise",
            ),
        )  # fmt: skip
    out: list[list[memoryview | bytes]] = [[] for _ in requests]
    for (k, _, _, _), data in zip(pieces, got, strict=True):
        if isinstance(data, BaseException):
            raise ObjectStorageError(f"{requests[k][0]}: ranged GET failed ({data})")
        out[k].append(data)
    return out


def read_ranges(requests: list[tuple[RemotePath, int, int]]) -> list[bytes]:
    """Bytes [start, stop) of each (object, start, stop), fetched concurrently (see read_pieces)."""
    return [b"".join(parts) for parts in read_pieces(requests)]
