"""Distributed passes under torchrun: this process's rank, its rows, and merges that do not depend on N.

Bitwise equality with a one-process run needs the same float64 operations in the same order, and
the merges of partial statistics are not associative in floating point. So the order is fixed by
the data, never by the number of processes: a pass cuts its input's blocks into at most
`max_segments` *segments* (contiguous runs of blocks, the same for every N), folds the blocks of a
segment in order, then folds the segment results in order. One process does exactly that on the
fly; N processes each take a contiguous run of segments (rank order = row order), fold each of
their segments, gather every segment result on every rank, and fold them in order. The result is
the same bits for any N ≤ the number of segments (ranks past that have no rows of a pass).

The process group (gloo on the CPU, NCCL when CUDA is there) is created on first use, so a
one-process run never touches torch.distributed. A rank that dies makes torchrun stop the others.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from revision.errors import UserError

T = TypeVar("T")

#: Upper bound of the segments of a pass: the gathered partials stay small (1,024 × 3 × D float64
#: is 31 MB at D = 1280) and up to 1,024 ranks all get rows.
MAX_SEGMENTS = 1024
#: The gathered partials of one pass stay under this (realign-ot's D×D co-moments are large).
SEGMENT_BUDGET_BYTES = 256 << 20
#: Ranks wait for each other's whole passes at a gather; the default 30 minutes is too short.
_TIMEOUT_ENV = "REVISION_DIST_TIMEOUT_S"
_DEFAULT_TIMEOUT_S = 7 * 24 * 3600


@dataclass(frozen=True)
class World:
    """This process's place in a torchrun job (rank 0 of 1 outside one)."""

    rank: int
    size: int
    local_rank: int

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None


def world() -> World:
    """Rank and world size from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if size < 1 or not 0 <= rank < size:
        raise UserError(f"RANK={rank}, WORLD_SIZE={size}: not a rank of that world")
    return World(rank=rank, size=size, local_rank=_env_int("LOCAL_RANK", rank))


def backend() -> str:
    """NCCL where CUDA is available (REVISION_DIST_BACKEND=gloo overrides), else gloo."""
    forced = os.environ.get("REVISION_DIST_BACKEND")
    if forced:
        return forced
    import torch  # here, not at the top: a one-process diagnose never loads torch (~1 s, ~250 MB)

    return "nccl" if torch.cuda.is_available() else "gloo"


def _group() -> Any:
    import torch.distributed as tdist

    if not tdist.is_initialized():
        w = world()
        name = backend()
        if name == "nccl":
            import torch

            torch.cuda.set_device(w.local_rank)
        timeout = timedelta(seconds=_env_int(_TIMEOUT_ENV, _DEFAULT_TIMEOUT_S))
        tdist.init_process_group(name, rank=w.rank, world_size=w.size, timeout=timeout)
    return tdist


def max_segments(partial_bytes: int) -> int:
    """How many segments a pass whose partial result takes `partial_bytes` is cut into, at most."""
    return max(1, min(MAX_SEGMENTS, SEGMENT_BUDGET_BYTES // max(1, partial_bytes)))


def segments(ranges: Sequence[tuple[int, int]], count: int) -> list[tuple[int, int]]:
    """Cut consecutive block `ranges` into at most `count` contiguous row spans of whole blocks.

    Segment k holds blocks [k·B/S, (k+1)·B/S) of the B blocks: a function of the blocks alone.
    """
    b = len(ranges)
    s = max(1, min(count, b))
    cuts = [k * b // s for k in range(s + 1)]
    return [(ranges[cuts[k]][0], ranges[cuts[k + 1] - 1][1]) for k in range(s) if cuts[k + 1] > cuts[k]]


def share(items: Sequence[T], w: World | None = None) -> list[T]:
    """This rank's contiguous run of `items` (runs differ in length by at most one; rank order)."""
    w = w or world()
    n = len(items)
    return list(items[w.rank * n // w.size : (w.rank + 1) * n // w.size])


def span(segs: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The rows [lo, hi) a contiguous run of segments covers; (0, 0) when there is none."""
    return (segs[0][0], segs[-1][1]) if segs else (0, 0)


def fold_in_order(partials: Iterable[T], init: T, merge: Callable[[T, T], T]) -> T:
    """Fold this rank's segment partials with every other rank's, all in segment (= rank) order.

    One process folds as the partials come (memory: one partial); N processes gather the lists of
    partials on every rank first (memory: every segment's partial, bounded by SEGMENT_BUDGET_BYTES).
    """
    state = init
    if not world().distributed:
        for p in partials:
            state = merge(state, p)
        return state
    gathered = gather(list(partials))
    for rank_parts in gathered:
        for p in rank_parts:
            state = merge(state, p)
    return state


def gather(obj: Any) -> list[Any]:
    """`obj` of every rank, in rank order, on every rank (a list of one outside torchrun)."""
    w = world()
    if not w.distributed:
        return [obj]
    tdist = _group()
    out: list[Any] = [None] * w.size
    tdist.all_gather_object(out, obj)
    return out


def gather_to_root(obj: Any) -> list[Any] | None:
    """`obj` of every rank, in rank order, on rank 0 only (None on the others; a list of one outside
    torchrun). For large payloads only rank 0 needs, such as sampled rows: `gather` would copy them
    to every rank."""
    w = world()
    if not w.distributed:
        return [obj]
    tdist = _group()
    out: list[Any] | None = [None] * w.size if w.rank == 0 else None
    tdist.gather_object(obj, out, dst=0)
    return out


def on_root(fn: Callable[[], T]) -> T:
    """`fn()` run on rank 0 only, its result given to every rank (just `fn()` outside torchrun).

    A UserError raised by `fn` on rank 0 is raised on every rank with the same message, so the job
    ends with the one-line error and exit status 2, not with ranks waiting for rank 0 to answer.
    """
    w = world()
    if not w.distributed:
        return fn()
    box: list[Any] = [None]
    if w.rank == 0:
        try:
            box[0] = ("ok", fn())
        except UserError as exc:
            box[0] = ("error", str(exc))
    _group().broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise UserError(value)
    return value  # type: ignore[no-any-return]


def all_ranks(flag: bool) -> bool:
    """True when `flag` is true on every rank: for decisions every rank must take alike."""
    return all(gather(bool(flag)))


def barrier() -> None:
    """Wait for every rank (nothing outside torchrun)."""
    if world().distributed:
        gather(None)


def shutdown() -> None:
    """Tear down the process group if this process made one."""
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()
