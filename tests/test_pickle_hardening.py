"""The restricted unpickler against hostile pickles: hand-built attacks, the real CLI, and a fuzzer.

Every case must end in a valid load or a one-line UserError naming the file: no crash, no hang, no
other exception. Each attack here crashed, hung, leaked memory contents or escaped as a raw exception
before the loader was hardened. The fuzzer mutates real reference pickles' opcode streams for a fixed
budget (REVISION_FUZZ_EXAMPLES=N runs N cases instead, for a longer run).
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from revision.cli import main
from revision.errors import UserError
from revision.store.pickle_io import PickleSource, load_pickle_restricted, load_reference_pickle

PY = sys.executable
GOLDEN = Path(__file__).parent / "data" / "golden" / "small-d64"


# -- opcode builders (protocol 2 framing, so every opcode below is legal) -----------------------------
def _glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _bytes(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data


def _int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def _dtype(spec: str) -> bytes:
    return _glob("numpy", "dtype") + _str(spec) + b"\x89\x88\x87R"  # (spec, False, True) REDUCE


_DTYPE_STATE = b"(" + _int(3) + _str("<") + b"NNN" + _int(-1) + _int(-1) + _int(0) + b"tb"


def _record(embed_ops: bytes, ident: str = "a") -> bytes:
    """[{"id": ident, "embed": <embed_ops>}] as a whole pickle."""
    return b"\x80\x02]}(" + _str("id") + _str(ident) + _str("embed") + embed_ops + b"ua."


def _reconstruct(state_ops: bytes) -> bytes:
    head = _glob("numpy._core.multiarray", "_reconstruct") + _glob("numpy", "ndarray")
    return head + _int(0) + b"\x85" + _bytes(b"b") + b"\x87R" + state_ops + b"b"


def _state(shape: tuple[int, ...], dtype_ops: bytes, payload_ops: bytes) -> bytes:
    dims = b"(" + b"".join(b"\x8a\x09" + n.to_bytes(9, "little", signed=True) for n in shape) + b"t"
    return b"(" + _int(1) + dims + dtype_ops + b"\x89" + payload_ops + b"t"


_F4 = _dtype("f4") + _DTYPE_STATE
_ND = _glob("numpy", "ndarray")

HOSTILE: dict[str, tuple[bytes, str]] = {
    # The forged pointer: an object array whose element is the pointer 0x4141414141414141.
    "object_dtype_pointer": (
        _record(_ND + b"(" + _int(1) + b"\x85" + _dtype("O") + _bytes(b"A" * 8) + b"tR"),
        r"refused to load: numpy\.dtype\('O'",
    ),
    # ndarray(shape, dtype) without a buffer: uninitialised heap memory as embed values.
    "uninitialised_memory": (
        _record(_ND + b"(" + _int(4) + b"\x85" + _F4 + b"tR"),
        r"refused to load: numpy\.ndarray\(.*cannot be called",
    ),
    "bad_codec": (
        _record(_glob("_codecs", "encode") + _str("x") + _str("no-such-codec") + b"\x86R"),
        r"refused to load: _codecs\.encode",
    ),
    "object_array_state": (
        _record(_reconstruct(_state((2,), _dtype("O") + _DTYPE_STATE, b"]" + _int(1) + b"a"))),
        r"refused to load: numpy\.dtype\('O'",
    ),
    "void_dtype_with_fields": (
        _record(_reconstruct(_state((1,), _dtype("V8") + _DTYPE_STATE, _bytes(b"\0" * 8)))),
        r"refused to load: numpy\.dtype\('V8'",
    ),
    "dtype_state_with_fields": (
        _record(
            _reconstruct(
                _state(
                    (1,),
                    _dtype("f4")
                    + b"("
                    + _int(3)
                    + _str("<")
                    + b"N"
                    + b"("
                    + _str("x")
                    + b"t}"
                    + _int(-1)
                    + _int(-1)
                    + _int(0)
                    + b"tb",
                    _bytes(b"\0" * 4),
                )
            )
        ),
        r"refused to load: dtype state",
    ),
    "payload_too_short": (
        _record(_reconstruct(_state((4,), _F4, _bytes(b"\0" * 15)))),
        r"needs 16 bytes; the pickle holds 15",
    ),
    # 4e18 bytes announced, nothing allocated: refused by the size comparison before any allocation.
    "memory_bomb_shape": (
        _record(_reconstruct(_state((10**9, 10**9), _F4, _bytes(b"")))),
        r"needs 4000000000000000000 bytes; the pickle holds 0",
    ),
    "memory_bomb_frombuffer": (
        _record(
            _glob("numpy._core.numeric", "_frombuffer")
            + b"("
            + _bytes(b"")
            + _F4
            + b"("
            + _int(2**30)
            + _int(2**30)
            + _int(2**30)
            + b"t"
            + _str("C")
            + b"tR"
        ),
        r"needs \d+ bytes; the pickle holds 0",
    ),
    "reconstruct_other_type": (
        _record(
            _glob("numpy._core.multiarray", "_reconstruct")
            + _glob("numpy", "dtype")
            + _int(0)
            + b"\x85"
            + _bytes(b"b")
            + b"\x87R"
        ),
        r"refused to load: numpy _reconstruct",
    ),
    "build_twice": (
        _record(_reconstruct(_state((1,), _F4, _bytes(b"\0" * 4))) + _state((1,), _F4, _bytes(b"\0" * 4)) + b"b"),
        r"BUILD on an array or scalar that is already complete",
    ),
    "array_without_state": (
        _record(_glob("numpy._core.multiarray", "_reconstruct") + _ND + _int(0) + b"\x85" + _bytes(b"b") + b"\x87R"),
        r"an array reconstructed without its state",
    ),
    "object_scalar": (
        _record(_glob("numpy._core.multiarray", "scalar") + _dtype("O") + _str("x") + b"\x86R"),
        r"refused to load: numpy\.dtype\('O'",
    ),
    "os_system": (_record(_glob("os", "system") + _str("true") + b"\x85R"), r"refused to load: .*os\.system"),
    "bytearray_bomb": (
        _record(_glob("builtins", "bytearray") + _int(2**31 - 1) + b"\x85R"),
        r"refused to load: .*builtins\.bytearray",
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_pickles_are_refused_naming_the_file(tmp_path: Path, name: str) -> None:
    data, pattern = HOSTILE[name]
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(data)
    with pytest.raises(UserError, match=pattern) as info:
        load_reference_pickle(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message


def _deep_tuple_key(depth: int) -> bytes:
    return b"\x80\x04}" + b")" + b"\x85" * depth + b"K\x01s."  # {((((...)))): 1}


def _tuple_dag_key(levels: int) -> bytes:
    # t_{k+1} = (t_k, t_k): tiny to write, 2**levels steps to hash.
    return b"\x80\x04})" + b"2\x86" * levels + b"K\x01s."


def test_a_pickle_that_crashes_the_c_unpickler_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "deep.pkl"
    path.write_bytes(_deep_tuple_key(3_000_000))
    # The check is known to bite: the stock unpickler dies of it (in a child, to keep pytest alive).
    probe = subprocess.run([PY, "-c", f"import pickle; pickle.loads(open({str(path)!r}, 'rb').read())"])
    assert probe.returncode < 0, probe.returncode
    with pytest.raises(UserError, match=r"deep\.pkl: refused to load: a trial load .* failed \(it crashed, signal"):
        load_pickle_restricted(path)


def test_a_pickle_that_hangs_the_c_unpickler_is_refused_in_time(tmp_path: Path) -> None:
    path = tmp_path / "dag.pkl"
    path.write_bytes(_tuple_dag_key(200))
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"dag\.pkl: refused to load: unpickling took longer than 2 s"):
        load_pickle_restricted(path, time_limit=2)
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("shape", ["cycle", "deep", "dag"])
def test_metadata_that_cannot_be_stored_is_refused_without_recursing(tmp_path: Path, shape: str) -> None:
    vec = np.zeros(4, np.float16)
    if shape == "cycle":
        value: Any = []
        value.append(value)
        data = pickle.dumps([{"id": "a", "tags": value, "embed": vec}], protocol=4)
    else:
        if shape == "deep":
            nested = b"]" * 200_000 + b"a" * 199_999  # [[[…]]] 200,000 deep
        else:  # L0 = [], L_k = [L_k-1, L_k-1]: 2**60 leaves through 61 lists, memo slots far above the record's

            def put(k: int) -> bytes:
                return b"r" + struct.pack("<I", 100_000 + k)

            def get(k: int) -> bytes:
                return b"j" + struct.pack("<I", 100_000 + k)

            nested = (
                b"]" + put(0) + b"0" + b"".join(b"](" + get(k - 1) * 2 + b"e" + put(k) + b"0" for k in range(1, 61))
            )
            nested += get(60)
        data = pickle.dumps([{"id": "a", "tags": "@@", "embed": vec}], protocol=2)
        data = data.replace(_str("@@"), nested, 1)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "text_embeds_1.pkl").write_bytes(data)
    with pytest.raises(UserError, match=r"text_embeds_1\.pkl: item 0 \(id 'a'\): wrong item layout: 'tags'"):
        src = PickleSource(tmp_path / "src")
        for _ in src.batches(0, 0, 10):
            pass


def _two_records(caption_ops: bytes) -> bytes:
    vec = _reconstruct(_state((2,), _dtype("f2") + _DTYPE_STATE, _bytes(b"\0" * 4)))

    def rec(ident: str, caption: bytes) -> bytes:
        return b"}(" + _str("id") + _str(ident) + _str("caption") + caption + _str("embed") + vec + b"u"

    return b"\x80\x02](" + rec("a", _str("x")) + rec("b", caption_ops) + b"e."


def test_hostile_pickle_through_the_cli_exits_2_with_one_line_and_creates_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    # The forged object array sits where an error message would print it: dereferencing the pointer
    # killed the process (rc 139) before the loader refused object dtypes.
    forged = _ND + b"(" + _int(1) + b"\x85" + _dtype("O") + _bytes(b"A" * 8) + b"tR"
    (src / "text_embeds_1.pkl").write_bytes(_two_records(forged))
    dest = tmp_path / "s.zarr"
    proc = subprocess.run(
        [PY, "-m", "revision", "ingest", str(src), str(dest), "--format", "reference-pkl"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("revision ingest: error: ") and "text_embeds_1.pkl" in lines[0]
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_align_pkl_shares_the_hardened_loader(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, image = tmp_path / "t", tmp_path / "i"
    text.mkdir()
    image.mkdir()
    (text / "text_embeds_1.pkl").write_bytes(HOSTILE["uninitialised_memory"][0])
    (image / "image_embeds_1.pkl").write_bytes(pickle.dumps([{"id": "b", "embed": np.ones(4, np.float16)}]))
    rc = main(
        ["align-pkl", "--input_dir", str(text), "--img_input_dir", str(image), "--output_dir", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "text_embeds_1.pkl: refused to load" in err[0], err


# -- what real pickles hold still loads, equal to the stock unpickler's result -------------------------
def _valid_records() -> list[dict[str, Any]]:
    rng = np.random.default_rng(1)
    return [
        {"id": "s", "embed": rng.standard_normal(5).astype(np.float16), "n": 3, "x": None},
        {"id": np.str_("np-str"), "embed": rng.standard_normal(5).astype(">f4"), "n": 2**70, "x": [1.5, "a"]},
        {"id": 7, "embed": np.asfortranarray(rng.standard_normal((2, 3))), "n": np.int64(-4), "x": float("nan")},
        {"id": np.int32(8), "embed": np.zeros(0, np.float64), "n": np.float32(0.5), "x": {"k": b"\x00\xff"}},
        {"id": "u1", "embed": np.arange(6, dtype=np.uint8).reshape(2, 3), "n": np.bool_(True), "x": np.str_("é")},
    ]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_what_numpy_writes_loads_exactly(tmp_path: Path, protocol: int) -> None:
    recs = _valid_records()
    (tmp_path / "v.pkl").write_bytes(pickle.dumps(recs, protocol=protocol))
    got = load_reference_pickle(tmp_path / "v.pkl")
    want = pickle.loads((tmp_path / "v.pkl").read_bytes())
    for g, w in zip(got, want, strict=True):
        for k in w:
            assert type(g[k]) is type(w[k]), (k, type(g[k]), type(w[k]))
            if isinstance(w[k], np.ndarray):
                assert g[k].dtype == w[k].dtype and g[k].shape == w[k].shape and g[k].flags.writeable
                assert g[k].tobytes(order="A") == w[k].tobytes(order="A")
                assert g[k].flags.f_contiguous == w[k].flags.f_contiguous
            elif isinstance(w[k], float) and w[k] != w[k]:
                assert g[k] != g[k]
            else:
                assert g[k] == w[k] and getattr(g[k], "dtype", None) == getattr(w[k], "dtype", None)


def test_the_reference_statistics_pickle_loads(tmp_path: Path) -> None:
    path = GOLDEN / "expected" / "trace_stats.pkl"
    got, want = load_pickle_restricted(path), pickle.loads(path.read_bytes())
    assert got.keys() == want.keys()
    for k in want:
        assert np.array_equal(got[k], want[k]) and type(got[k]) is type(want[k])


# -- the fuzzer -----------------------------------------------------------------------------------------
_WORKER = textwrap.dedent(
    """
    import json, os, pickle, pickletools, random, sys, time, traceback
    from pathlib import Path
    from revision.store.errors import UserError
    from revision.store.pickle_io import PickleSource

    seeds_dir, work, n, budget, seed, mode = sys.argv[1:7]
    work, n, budget = Path(work), int(n), float(budget)
    rng = random.Random(int(seed))
    seeds = [p.read_bytes() for p in sorted(Path(seeds_dir).glob("*.pkl"))]
    bounds = [[pos for _, _, pos in pickletools.genops(s)] + [len(s)] for s in seeds]
    snippets = [bytes.fromhex(h) for h in json.loads((Path(seeds_dir) / "snippets.json").read_text())]
    codes = [op.code.encode("latin-1") for op in pickletools.opcodes]

    def mutate(data, cuts):
        for _ in range(rng.choice((1, 1, 2, 3))):
            j = rng.randrange(len(cuts) - 1)
            a, b = cuts[j], cuts[j + 1]
            kind = rng.randrange(8)
            if kind == 0 and data:
                buf = bytearray(data)
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
                data = bytes(buf)
            elif kind == 1:
                data = data[:a] + data[b:]
            elif kind == 2:
                k = rng.randrange(len(cuts) - 1)
                data = data[:a] + data[cuts[k]:cuts[k + 1]] + data[a:]
            elif kind == 3 and b - a > 1:
                data = data[:a + 1] + bytes(rng.randrange(256) for _ in range(b - a - 1)) + data[b:]
            elif kind == 4:
                data = data[:rng.randrange(len(data) + 1)]
            elif kind == 5:
                data = data[:a] + rng.choice(snippets) + data[a:]
            elif kind == 6:
                data = data[:a] + rng.choice(codes) + data[a + 1:]
            else:
                data = data[:a] + rng.choice(snippets) + data[b:]
        return data

    out = {"cases": 0, "loaded": 0, "refused": 0}
    case = work / "text_embeds_1.pkl"
    t0 = time.monotonic()
    while (out["cases"] < n) if n else (time.monotonic() - t0 < budget):
        k = rng.randrange(len(seeds))
        data = mutate(seeds[k], bounds[k]) if mode == "fuzz" else seeds[k]
        case.write_bytes(data)  # left behind if the worker dies: the failing case
        try:
            if mode == "plain":
                pickle.loads(data)
            src = PickleSource(case)
            for _ in src.batches(0, 0, 7):
                pass
            src.close()
            out["loaded"] += 1
        except UserError as exc:
            msg = str(exc)
            if "\\n" in msg or case.name not in msg:
                print("a refusal that is not one line naming the file:", msg)
                sys.exit(3)
            out["refused"] += 1
        except BaseException:
            traceback.print_exc()
            print("case kept in", case)
            sys.exit(3)
        out["cases"] += 1
    print(json.dumps(out))
    """
)


def _fuzz_seeds(root: Path) -> Path:
    """Real reference pickles (the first records of the golden inputs, their statistics) and variants."""
    root.mkdir()
    for i, f in enumerate(sorted((GOLDEN / "input").glob("*/*.pkl"))[:2]):
        records = pickle.loads(f.read_bytes())[:6]
        (root / f"golden_{i}.pkl").write_bytes(pickle.dumps(records, protocol=4))
    (root / "stats.pkl").write_bytes((GOLDEN / "expected" / "trace_stats.pkl").read_bytes())
    for protocol in (2, 3, 5):
        recs = [{k: v for k, v in r.items() if k != "x"} for r in _valid_records()[:2]]
        for r in recs:
            r["embed"] = np.asarray(r["embed"], np.float32).reshape(-1)[:5]
            r["tags"] = [1, None, "a"]
        (root / f"variant_{protocol}.pkl").write_bytes(pickle.dumps(recs, protocol=protocol))
    snippets = [
        _deep_tuple_key(300_000)[2:-1],
        _tuple_dag_key(22)[2:-1],
        _ND + b"(" + _int(4) + b"\x85" + _F4 + b"tR",
        _dtype("O"),
        _reconstruct(_state((10**9, 10**9), _F4, _bytes(b""))),
        _glob("_codecs", "encode") + _str("x") + _str("rot13") + b"\x86R",
        _glob("os", "system") + _str("true") + b"\x85R",
        b"\x8e" + struct.pack("<Q", 2**62),  # BINBYTES8 announcing 4 EiB
        b"\x8b" + struct.pack("<i", 2**30),  # LONG4 announcing 1 GiB of digits
        b"h\xff",  # BINGET of a memo slot never set
        b"]" * 5000 + b"a" * 4999,
        b"b",
        b"R",
        b"0",
    ]
    (root / "snippets.json").write_text(json.dumps([s.hex() for s in snippets]))
    return root


def _run_worker(tmp_path: Path, examples: int, budget_s: float, mode: str = "fuzz") -> subprocess.CompletedProcess[str]:
    seeds = _fuzz_seeds(tmp_path / "seeds")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "REVISION_PICKLE_TIME_LIMIT": "5"}
    argv = [PY, "-c", _WORKER, str(seeds), str(work), str(examples), str(budget_s), "20240611", mode]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=budget_s + 240)


def test_fuzzed_reference_pickles_load_or_are_refused_cleanly(tmp_path: Path) -> None:
    examples = int(os.environ.get("REVISION_FUZZ_EXAMPLES", "0"))
    proc = _run_worker(tmp_path, examples, budget_s=30.0)
    assert proc.returncode == 0, f"rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # Both outcomes occur, so the mutations neither all break nor all miss the streams.
    assert out["loaded"] > 20 and out["refused"] > 20 and out["cases"] >= (examples or 150), out


def test_the_fuzz_harness_catches_a_crash(tmp_path: Path) -> None:
    # A deliberately unsafe loader (the stock unpickler) on a crashing seed must fail the harness.
    proc = _run_worker(tmp_path, 1, budget_s=30.0, mode="plain")
    assert proc.returncode == 0  # the real seeds are benign for the stock unpickler too
    (tmp_path / "crash").mkdir()
    seeds = _fuzz_seeds(tmp_path / "crash" / "seeds")
    for f in seeds.glob("*.pkl"):
        f.unlink()
    (seeds / "deep.pkl").write_bytes(_deep_tuple_key(3_000_000))
    work = tmp_path / "crash" / "work"
    work.mkdir()
    argv = [PY, "-c", _WORKER, str(seeds), str(work), "1", "30", "1", "plain"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0 and (work / "text_embeds_1.pkl").exists()


def test_a_refusal_quoting_an_array_stays_on_one_line() -> None:
    # Found by the fuzzer: a mutated pickle put a dict holding an array where a dtype belongs, and
    # the array's repr spans lines, so the refusal did too.
    from revision.store import pickle_safe

    where = {"embed": np.linspace(0.0, 1.0, 40, dtype=np.float32), "id": "s", "tags": [1, None, "a"]}
    assert "\n" in repr(where)
    with pytest.raises(pickle_safe.Refused) as info:
        pickle_safe._array((40,), where, False, b"", native=True)
    message = str(info.value)
    assert "\n" not in message and message.startswith("an array's dtype is {")
