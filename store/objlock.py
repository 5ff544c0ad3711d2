"""The writer lock of a store on object storage: a lock object made by a conditional PUT.

Object storage has no flock, so a writer takes `<store>/.revision-lock` with a create-if-absent PUT
(If-None-Match: *, which S3, GCS and moto honour): exactly one of two racing writers creates it. The
object names its holder (host, pid, command) and a lease: the holder rewrites it every third of the
lease on a daemon thread (the heartbeat) and deletes it on release.

A lock left behind is taken over when it is stale:
- its lease has run out (the holder died, or lost its network, REVISION_LOCK_LEASE seconds ago;
  default 60), or
- it was taken on this host by a process that no longer exists (a SIGKILLed writer on this machine
  is taken over at once, as the kernel drops a local flock at once).
A takeover deletes the stale object and retries the conditional PUT, so two writers taking over the
same stale lock still end with one holder. A writer whose heartbeat cannot renew the lease for a
whole lease stops renewing; its next commit is then not protected (the documented limit: keep the
lease well above the longest network outage you want to survive).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from typing import Any

from .lock import LockedError
from .objio import ObjectStorageError, RemotePath

LOCK_NAME = ".revision-lock"
_LEASE_ENV = "REVISION_LOCK_LEASE"


def lease_seconds() -> float:
    raw = os.environ.get(_LEASE_ENV, "")
    try:
        value = float(raw) if raw else 60.0
    except ValueError:
        raise ObjectStorageError(f"{_LEASE_ENV}={raw!r}: expected a number of seconds") from None
    return max(1.0, value)


def _record(lease: float) -> bytes:
    cmd = " ".join(sys.argv)[:200]
    now = time.time()
    doc = {"host": socket.gethostname(), "pid": os.getpid(), "cmd": cmd, "taken": now, "expires": now + lease}
    return json.dumps(doc).encode()


def _stale(doc: dict[str, Any]) -> bool:
    if float(doc.get("expires", 0)) < time.time():
        return True
    if doc.get("host") == socket.gethostname():
        pid = int(doc.get("pid", 0))
        if pid <= 0:
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


def _describe(doc: dict[str, Any]) -> str:
    left = float(doc.get("expires", 0)) - time.time()
    return f"pid {doc.get('pid')} on {doc.get('host')}: {doc.get('cmd', '?')} (lease {max(0.0, left):.0f} s left)"


class ObjectLock:
    """The writer lock of the store at `root` (a RemotePath), held until `release`."""

    def __init__(self, root: RemotePath, lease: float) -> None:
        self.path = root
        self._obj = root / LOCK_NAME
        self._lease = lease
        self._stop = threading.Event()
        self._held = True
        self._thread = threading.Thread(target=self._beat, name="revision-lock-heartbeat", daemon=True)
        self._thread.start()

    @classmethod
    def acquire(cls, root: RemotePath, what: str) -> ObjectLock:
        """Take the lock or raise LockedError naming `what` and the holder. Never waits for a live one."""
        lease = lease_seconds()
        obj = root / LOCK_NAME
        for _ in range(5):
            if obj.put_if_absent(_record(lease)):
                return cls(root, lease)
            try:
                doc = json.loads(obj.read_bytes())
            except FileNotFoundError:
                continue  # released meanwhile: try again
            except ValueError:
                doc = {}
            if not isinstance(doc, dict):
                doc = {}
            if not _stale(doc):
                raise LockedError(
                    f"{what}: another writer is using it ({_describe(doc)}); wait for it to finish or stop it, "
                    f"then re-run (a lock whose holder died is taken over after its lease; delete {obj} to "
                    "force it)"
                )
            with contextlib.suppress(FileNotFoundError):
                obj.unlink()
        raise LockedError(f"{what}: the lock {obj} keeps changing hands; re-run")

    def _beat(self) -> None:
        # Renew at a third of the lease, so two missed beats still leave the lease in force.
        while not self._stop.wait(self._lease / 3):
            with contextlib.suppress(Exception):  # a failed renewal is retried at the next beat
                self._obj.put(_record(self._lease), fault_point=False)

    @property
    def held(self) -> bool:
        return self._held

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(Exception):  # a lock we cannot delete expires with its lease
            self._obj.unlink(missing_ok=True)

    def __enter__(self) -> ObjectLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
