"""The restricted unpickler: loads the reference layout's pickles and nothing that could harm the process.

A pickle is a program for a stack machine that may call any global it names. Three kinds of harm
are shut out, each by its own means:

- Code execution. `find_class` resolves only the few globals numpy's own pickles name, and none of
  them to the real callable: each resolves to a checker that accepts exactly the arguments numpy
  writes (`numpy.dtype("f2", False, True)`, `_reconstruct(ndarray, (0,), b"b")`, …) and refuses
  anything else. `numpy.ndarray` resolves to an inert token, so it can only be named, never called.
- Forged arrays. An object dtype around pointer bytes taken from the file, or an array over
  uninitialised memory, crashes or leaks the process. numpy's own `__setstate__` therefore never
  sees pickle data: arrays and scalars are built here, from a numeric (or, for `np.str_` scalars,
  unicode) dtype and a bytes payload of exactly shape × itemsize bytes. A shape that would allocate
  terabytes is refused by that comparison, before anything is allocated.
- Crashes and hangs of the C unpickler itself. Hashing a tuple nested a million deep (a dict key,
  a set member) overflows the C stack; a tuple DAG (each level holding the previous one twice) hashes
  in exponential time. Neither can be seen before loading nor interrupted during it, so each file is
  first loaded by a forked child under a time limit; the process loads the file itself only once the
  child has finished cleanly. The child and the process read the same open file, and its size,
  inode and change time are compared before and after, so the bytes cannot change in between
  (`pickle_load`).

The price: each file is unpickled twice, and each array passes through two small Python calls. A
200k-row × 768 fp16 file (323 MB) took 6.3 s against 0.7 s for the stock unpickler (measured while
the 2-core machine was shared, load 7); in-process alone, 4.7 µs against 2.1 µs a record.
"""

from __future__ import annotations

import math
import pickle
import re
import reprlib
from typing import Any, Literal

import numpy as np

_MAX_NDIM = 32

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlevel = 3


def _brief(obj: object) -> str:
    """A short repr on one line: an error names one file on one line, and a numpy array's repr
    (what a mutated pickle can put where a dtype belongs) spans several."""
    return " ".join(_short.repr(obj).split())


class Refused(pickle.UnpicklingError):
    """The pickle asks for something outside the reference layout; the message says what."""


class _NdarrayToken:
    """What `numpy.ndarray` resolves to: a name `_reconstruct` accepts, but not a callable or a type."""

    __slots__ = ()

    def __call__(self, *args: Any) -> Any:
        raise Refused(f"numpy.ndarray{_brief(args)} cannot be called (numpy's pickles only name it)")

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayToken()


class _DType:
    """A numeric dtype named by the pickle; BUILD may set only its byte order."""

    __slots__ = ("dtype", "numeric")

    def __init__(self, dtype: np.dtype[Any]) -> None:
        self.dtype = dtype
        self.numeric = dtype.kind in "biufc"

    def __setstate__(self, state: Any) -> None:
        # numpy writes (3, byteorder, None, None, None, elsize, alignment, flags); only the byte order
        # matters for a plain dtype, and nothing of the state is handed to numpy.
        if type(state) is not tuple or len(state) not in (8, 9) or state[0] not in (3, 4):
            raise Refused(f"a dtype state {_brief(state)} is not one numpy writes for a numeric dtype")
        endian, subarray, names, fields = state[1:5]
        if endian not in ("<", ">", "|", "=") or subarray is not None or names is not None or fields is not None:
            raise Refused(f"dtype state {_brief(state)}: only plain numeric dtypes are allowed")
        if any(type(v) is not int for v in state[5:8]) or (len(state) == 9 and state[8] is not None):
            raise Refused(f"dtype state {_brief(state)}: only plain numeric dtypes are allowed")
        if endian in "<>" and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(endian)

    def __repr__(self) -> str:
        return f"dtype({self.dtype.str!r})"


_UNSET: Any = object()


class _Built:
    """An array or scalar under construction: `_reconstruct` makes it empty, BUILD fills it once."""

    __slots__ = ("value",)

    def __init__(self, value: Any = _UNSET) -> None:
        self.value = value

    def __setstate__(self, state: Any) -> None:
        if self.value is not _UNSET:
            raise Refused("BUILD on an array or scalar that is already complete")
        if type(state) is not tuple or len(state) != 5 or state[0] != 1 or type(state[0]) is not int:
            raise Refused(f"an array state {_brief(state)} is not (1, shape, dtype, fortran, bytes)")
        _, shape, dtype, fortran, raw = state
        if (
            type(shape) is tuple
            and len(shape) == 1
            and type(shape[0]) is int
            and type(dtype) is _DType
            and dtype.numeric
            and fortran is False
            and type(raw) is bytes
            and len(raw) == shape[0] * dtype.dtype.itemsize
        ):
            # The common case, one vector, checked field by field above; numpy's own C code then
            # copies the bytes (the state holds nothing but ints, a numeric dtype and exact bytes).
            arr = np.ndarray((0,), np.uint8)
            arr.__setstate__((1, shape, dtype.dtype, False, raw))  # type: ignore[arg-type]
            self.value = arr
            return
        self.value = _array(shape, dtype, fortran, raw, native=True)

    def get(self) -> Any:
        if self.value is _UNSET:
            raise Refused("an array reconstructed without its state (BUILD)")
        return self.value

    def __repr__(self) -> str:
        return "<array>" if self.value is _UNSET else repr(self.value)


_DTYPE_SPEC = re.compile(r"[biufcU]\d{1,4}\Z")


def _dtype(*args: Any) -> _DType:
    spec = args[0] if args else None
    if not 1 <= len(args) <= 3 or type(spec) is not str or not _DTYPE_SPEC.match(spec):
        raise Refused(f"numpy.dtype{_brief(args)}: only numeric dtypes (and unicode for np.str_ values) are allowed")
    if any(type(a) is not bool and a not in (0, 1) for a in args[1:]):
        raise Refused(f"numpy.dtype{_brief(args)}: unexpected arguments")
    try:
        dt = np.dtype(spec)
    except TypeError:
        raise Refused(f"numpy.dtype({spec!r}) is not a dtype") from None
    if dt.kind not in "biufcU" or dt.hasobject or dt.fields is not None or dt.subdtype is not None:
        raise Refused(f"numpy.dtype({spec!r}): only numeric dtypes are allowed")
    return _DType(dt)


_RECONSTRUCT_ARGS = ((_NDARRAY, (0,), b"b"), (_NDARRAY, (0,), "b"))


def _reconstruct(*args: Any) -> _Built:
    # Tuple equality on the pickle's builtins and the token: no code of the pickle's choosing runs.
    if args != _RECONSTRUCT_ARGS[0] and args != _RECONSTRUCT_ARGS[1]:
        raise Refused(f"numpy _reconstruct{_brief(args)}: only (numpy.ndarray, (0,), b'b'), as numpy writes")
    return _Built()


def _frombuffer(*args: Any) -> _Built:
    if len(args) != 4 or args[3] not in ("C", "F") or type(args[3]) is not str:
        raise Refused(f"numpy _frombuffer{_brief(args)}: not what numpy writes")
    buf, dtype, shape, order = args
    return _Built(_array(shape, dtype, order == "F", buf, native=False))


def _scalar(*args: Any) -> _Built:
    if len(args) != 2 or type(args[0]) is not _DType or type(args[1]) is not bytes:
        raise Refused(f"numpy scalar{_brief(args)}: only numeric (and np.str_) scalars are allowed")
    dt, payload = args[0].dtype, args[1]
    if len(payload) != dt.itemsize:
        raise Refused(f"numpy scalar of {dt}: {len(payload)} bytes, expected {dt.itemsize}")
    return _Built(np.frombuffer(payload, dtype=dt)[0])


def _encode(*args: Any) -> bytes:
    # Protocol 2 spells bytes as _codecs.encode(text, "latin1"); no other codec is ever needed.
    if len(args) != 2 or type(args[0]) is not str or args[1] not in ("latin1", "latin-1"):
        raise Refused(f"_codecs.encode{_brief(args)}: only latin1 text → bytes is allowed")
    try:
        return args[0].encode("latin-1")
    except UnicodeEncodeError:
        raise Refused("_codecs.encode: text outside latin-1") from None


def _empty_bytes(*args: Any) -> bytes:
    # Protocol 2 spells empty bytes (a zero-size array's data) as bytes().
    if args:
        raise Refused(f"bytes{_brief(args)}: only bytes() is allowed")
    return b""


def _array(shape: Any, dtype: Any, fortran: Any, raw: Any, *, native: bool) -> np.ndarray:
    """A new array of `dtype` and `shape` holding `raw`, which must be exactly its bytes.

    native: convert to native byte order, as numpy's `__setstate__` does (its `_frombuffer` does not).
    """
    if type(dtype) is not _DType:
        raise Refused(f"an array's dtype is {_brief(dtype)}, not a numeric numpy dtype")
    dt = dtype.dtype
    if dt.kind not in "biufc":
        raise Refused(f"an array of dtype {dt}: only numeric arrays are allowed")
    if type(shape) is not tuple or len(shape) > _MAX_NDIM or any(type(n) is not int or n < 0 for n in shape):
        raise Refused(f"an array shape {_brief(shape)} is not a tuple of non-negative ints")
    if type(fortran) is not bool and fortran not in (0, 1):
        raise Refused(f"an array's order flag is {_brief(fortran)}")
    if type(raw) not in (bytes, bytearray):
        raise Refused(f"an array's data is a {type(raw).__name__}, not bytes")
    need = math.prod(shape) * dt.itemsize  # exact: Python ints do not overflow
    if len(raw) != need:
        raise Refused(f"an array of shape {_brief(shape)} {dt} needs {need} bytes; the pickle holds {len(raw)}")
    order: Literal["C", "F"] = "F" if fortran else "C"
    try:
        if need == 0:
            return np.empty(shape, dtype=dt, order=order)
        # Always a copy that owns its memory: an array over bytes would be read-only, and one over a
        # bytearray would hold a buffer export that a garbage-collected cycle can outlive.
        arr = np.frombuffer(raw, dtype=dt).reshape(shape, order=order)
        if native and not dt.isnative:  # as numpy's __setstate__: native byte order, same values
            return arr.astype(dt.newbyteorder("="), order="K")
        return arr.copy(order="K")
    except (ValueError, OverflowError, MemoryError) as exc:
        raise Refused(f"an array of shape {_brief(shape)} {dt}: {exc}") from None


_CHECKERS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _encode,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}

#: The globals a list of dicts of str/numbers/numpy arrays names, across numpy 1.x (`numpy.core`) and
#: 2.x (`numpy._core`) and pickle protocols 2 (bytes via `_codecs.encode` and `bytes()`) to 5 (`_frombuffer`).
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(_CHECKERS)


class RefusedGlobal(Refused):
    """A pickle asked for a global outside the allow-list."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(
            f"the pickle asks for {_brief(module)[1:-1]}.{_brief(name)[1:-1]}, which the reference "
            "layout never needs (a pickle can run code on load; only numpy arrays and plain values are allowed)"
        )
        self.module = module
        self.name = name


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose globals are the checkers above; nothing else can be named or called."""

    def find_class(self, module: str, name: str) -> Any:
        checker = _CHECKERS.get((module, name))
        if checker is None:
            raise RefusedGlobal(module, name)
        return checker

    def persistent_load(self, pid: Any) -> Any:
        raise Refused("persistent ids are not part of the reference layout")


_CONTAINERS = (list, dict, tuple, set, frozenset)
_PLACEHOLDERS = (_Built, _DType, _NdarrayToken)


def _resolve(root: Any) -> Any:
    """Replace the arrays and scalars under construction by their values, without recursion.

    Every container is visited once (memoised by identity), so cycles and shared sub-structures cost
    no more than their size. Arrays and scalars are replaced where the layout has them, as list items
    and dict values; one inside a tuple, a set or a dict key, or a bare dtype anywhere, is refused.
    """
    if type(root) is _Built:
        return root.get()
    if type(root) in _PLACEHOLDERS:
        _refuse_nested(root)
    stack = [root]
    if type(root) is list:
        # The reference layout, a list of flat dicts, in one cheap pass; anything nested goes on the
        # stack for the general walk below (which may see these dicts again: replacing is idempotent).
        stack = []
        for rec in root:
            if type(rec) is dict:
                for k, v in rec.items():
                    tv = type(v)
                    if tv is _Built:
                        rec[k] = v.get()
                    elif tv in _CONTAINERS or tv in _PLACEHOLDERS or type(k) is not str:
                        stack.append(rec)
                        break
            elif type(rec) in _CONTAINERS or type(rec) in _PLACEHOLDERS:
                stack.append(root)
                break
    seen: set[int] = set()
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        t = type(obj)
        if t is list:
            for i, v in enumerate(obj):
                tv = type(v)
                if tv is _Built:
                    obj[i] = v.get()
                elif tv in _CONTAINERS:
                    stack.append(v)
                elif tv in _PLACEHOLDERS:
                    _refuse_nested(v)
        elif t is dict:
            for k, v in obj.items():
                tv = type(v)
                if tv is _Built:
                    obj[k] = v.get()
                elif tv in _CONTAINERS:
                    stack.append(v)
                elif tv in _PLACEHOLDERS:
                    _refuse_nested(v)
                if type(k) in _PLACEHOLDERS:
                    _refuse_nested(k)
                elif type(k) in _CONTAINERS:
                    stack.append(k)
        elif t in _CONTAINERS:  # tuple, set, frozenset: immutable, so nothing can be replaced
            for v in obj:
                if type(v) in _PLACEHOLDERS:
                    _refuse_nested(v)
                if type(v) in _CONTAINERS:
                    stack.append(v)
    return root


def _refuse_nested(v: Any) -> None:
    raise Refused(f"a numpy value ({_brief(v)}) outside a list item or dict value is not part of the layout")
