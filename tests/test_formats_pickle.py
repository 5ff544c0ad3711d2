"""Reference pickles: restricted loading, bitwise round trips, layout errors, the reference's file order."""

from __future__ import annotations

import filecmp
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from revision.cli import main
from revision.errors import UserError
from revision.store import FeatureStore
from revision.store.export import export
from revision.store.ingest import ingest
from revision.store.pickle_io import (
    load_reference_pickle,
    reference_file_names,
    write_reference_pickle,
)

GOLDEN_ROOT = Path(__file__).parent / "data" / "golden"
PY = sys.executable


def _records(n: int, d: int, seed: int = 0, prefix: str = "t") -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float16)
    return [{"id": f"{prefix}{i:05d}", "caption": f"cap {i} ü", "embed": x[i].copy()} for i in range(n)]


def _assert_same_records(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert list(g) == list(w), f"record {i}: key order {list(g)} != {list(w)}"
        for k in w:
            if isinstance(w[k], np.ndarray):
                assert g[k].dtype == w[k].dtype and g[k].shape == w[k].shape, f"record {i} {k}"
                if g[k].tobytes() != w[k].tobytes():
                    diff = np.abs(g[k].astype(np.float64) - w[k].astype(np.float64))
                    raise AssertionError(f"record {i} {k}: bytes differ, max {diff.max()} mean {diff.mean()}")
            else:
                assert type(g[k]) is type(w[k]) and g[k] == w[k], f"record {i} {k}: {g[k]!r} != {w[k]!r}"


@pytest.mark.parametrize(
    "case", ["small-d64/input/text", "small-d64/input/image", "llm2clip-d1280/input/text", "llm2clip-d1280/input/image"]
)
def test_golden_round_trip_is_bitwise(tmp_path: Path, case: str) -> None:
    src = GOLDEN_ROOT / case
    names = sorted(p.name for p in src.glob("*.pkl"))
    originals = [load_reference_pickle(src / n) for n in names]
    ingest(src, tmp_path / "s.zarr", fmt="reference-pkl")
    st = FeatureStore.open(tmp_path / "s.zarr")
    assert (st.rows, st.dtype, st.modality) == (sum(map(len, originals)), "float16", case.rsplit("/", 1)[1])
    export(tmp_path / "s.zarr", tmp_path / "out", fmt="reference-pkl", rows_per_file=len(originals[0]))
    assert sorted(os.listdir(tmp_path / "out")) == names
    exported = [load_reference_pickle(tmp_path / "out" / n) for n in names]
    _assert_same_records([r for f in exported for r in f], [r for f in originals for r in f])
    for name, got, want in zip(names, exported, originals, strict=True):
        if len(got) == len(want):
            # Protocol, memo layout and array reconstruction all match: the very same bytes.
            assert filecmp.cmp(tmp_path / "out" / name, src / name, shallow=False), name


def test_metadata_kinds_key_order_and_skipped_none(tmp_path: Path) -> None:
    d = 7
    recs: list[dict[str, Any]] = []
    for i in range(40):
        v = np.arange(d, dtype=np.float16) + i
        recs.append({"embed": v, "score": i / 3, "id": f"x{i}", "n": -(2**40) + i, "ok": i % 2 == 0, "tags": [i, "a"]})
    recs[5]["embed"] = None
    recs[6]["tags"] = None
    write_reference_pickle(tmp_path / "src" / "image_embeds_1.pkl", recs)
    summary = ingest(tmp_path / "src", tmp_path / "s.zarr", fmt="reference-pkl")
    assert summary.skipped_none == 1 and summary.rows_added == 39 and summary.modality == "image"
    st = FeatureStore.open(tmp_path / "s.zarr")
    assert st.metadata_columns == {"score": "float64", "n": "int64", "ok": "bool", "tags": "json"}
    export(tmp_path / "s.zarr", tmp_path / "out", fmt="reference-pkl")
    _assert_same_records(load_reference_pickle(tmp_path / "out" / "image_embeds_1.pkl"), recs[:5] + recs[6:])


def test_export_file_names_follow_the_references_lexicographic_read_order(tmp_path: Path) -> None:
    recs = _records(23, 4)
    write_reference_pickle(tmp_path / "src" / "text_embeds_1.pkl", recs)
    ingest(tmp_path / "src", tmp_path / "s.zarr", fmt="reference-pkl", chunk_rows=8, chunks_per_shard=4)
    export(tmp_path / "s.zarr", tmp_path / "out", fmt="reference-pkl", rows_per_file=2)
    names = sorted(os.listdir(tmp_path / "out"))
    assert len(names) == 12 and set(names) == {f"text_embeds_{k}.pkl" for k in range(1, 13)}
    assert names == reference_file_names("text", 12)
    # The reference's reader: every *.pkl, in lexicographic order, concatenated.
    read_back = [r for name in names for r in load_reference_pickle(tmp_path / "out" / name)]
    _assert_same_records(read_back, recs)
    # A numeric-order reader would get a different order: the check above can tell them apart.
    numeric = sorted(names, key=lambda s: int(s.split("_")[-1].split(".")[0]))
    assert [r["id"] for n in numeric for r in load_reference_pickle(tmp_path / "out" / n)] != [r["id"] for r in recs]
    ingest(tmp_path / "out", tmp_path / "s2.zarr", fmt="reference-pkl", chunk_rows=8, chunks_per_shard=4)
    assert list(FeatureStore.open(tmp_path / "s2.zarr").read_ids()) == [r["id"] for r in recs]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_restricted_unpickler_reads_every_protocol(tmp_path: Path, protocol: int) -> None:
    recs = _records(3, 5)
    (tmp_path / "a.pkl").write_bytes(pickle.dumps(recs, protocol=protocol))
    _assert_same_records(load_reference_pickle(tmp_path / "a.pkl"), recs)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class _EvilEval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


@pytest.mark.parametrize("evil", [_Evil, _EvilEval])
def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], evil: type
) -> None:
    marker = tmp_path / "pwned"
    recs: list[Any] = _records(2, 3)
    recs[1]["caption"] = evil(marker)
    src = tmp_path / "src"
    src.mkdir()
    (src / "text_embeds_1.pkl").write_bytes(pickle.dumps(recs, protocol=4))
    # The check is known to bite: the plain unpickler does run the payload.
    pickle.loads((src / "text_embeds_1.pkl").read_bytes())
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UserError, match=r"text_embeds_1\.pkl: refused.*(posix|os|builtins)\.(system|eval)"):
        load_reference_pickle(src / "text_embeds_1.pkl")
    cmd = ["ingest", str(src), str(tmp_path / "s.zarr"), "--format", "reference-pkl"]
    if evil is _Evil:  # once through a real process, as a user would run it
        proc = subprocess.run([PY, "-m", "revision", *cmd], capture_output=True, text=True)
        rc, err = proc.returncode, proc.stderr
    else:
        rc, err = main(cmd), capsys.readouterr().err
    assert rc == 2, err
    assert "refused" in err and "text_embeds_1.pkl" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()
    assert not (tmp_path / "s.zarr").exists()


def test_truncated_and_garbage_pickles_name_the_file(tmp_path: Path) -> None:
    raw = pickle.dumps(_records(20, 8), protocol=4)
    for cut in (1, 10, len(raw) // 2, len(raw) - 1):
        (tmp_path / "t.pkl").write_bytes(raw[:cut])
        with pytest.raises(UserError, match=r"t\.pkl: (truncated or unreadable|refused)"):
            load_reference_pickle(tmp_path / "t.pkl")
    (tmp_path / "g.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(UserError, match=r"g\.pkl: truncated or unreadable"):
        load_reference_pickle(tmp_path / "g.pkl")


def _write(tmp: Path, name: str, recs: Any) -> Path:
    src = tmp / "src"
    src.mkdir(exist_ok=True)
    (src / name).write_bytes(pickle.dumps(recs, protocol=4))
    return src


@pytest.mark.parametrize(
    ("case", "pattern"),
    [
        ("dict", r"text_embeds_1\.pkl: wrong item layout: expected a list"),
        ("item", r"text_embeds_1\.pkl: item 1: wrong item layout: expected a dict"),
        ("no_embed", r"wrong item layout: records have no 'embed'"),
        ("keys", r"text_embeds_1\.pkl: item 2: wrong item layout: keys"),
        ("id_float", r"item 3: wrong item layout: 'id' is 3\.5 \(float\); ids must be str or int"),
        ("value_type", r"text_embeds_2\.pkl: item 0 \(id 'u00000'\): wrong item layout: 'caption' is 5 \(int\)"),
        ("dim", r"text_embeds_2\.pkl: item 0 \(id 'u00000'\): dimension mismatch: embed has 9 values.* has 8"),
        ("embed_list", r"item 0 \(id 'u00000'\): wrong item layout: 'embed' is not"),
    ],
)
def test_wrong_layouts_are_rejected_naming_file_and_item(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, pattern: str
) -> None:
    recs: Any = _records(6, 8)
    if case == "dict":
        recs = {"a": 1}
    elif case == "item":
        recs[1] = ["x"]
    elif case == "no_embed":
        recs = [{"id": "a", "caption": "b"}]
    elif case == "keys":
        recs[2] = {"caption": "x", "id": "t2", "embed": recs[2]["embed"]}
    elif case == "id_float":
        recs[3]["id"] = 3.5
    src = _write(tmp_path, "text_embeds_1.pkl", recs)
    if case in ("dim", "embed_list", "value_type"):
        # Kinds come from every record of the first file, so a type clash shows in a later one.
        more = _records(3, 9 if case == "dim" else 8, prefix="u")
        if case == "embed_list":
            more[0]["embed"] = more[0]["embed"].tolist()
        if case == "value_type":
            more[0]["caption"] = 5
        _write(tmp_path, "text_embeds_2.pkl", more)
    rc = main(["ingest", str(src), str(tmp_path / "s.zarr"), "--format", "reference-pkl"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("revision ingest: error: "), lines
    assert re.search(pattern, lines[0]), lines[0]
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / ".s.zarr.ingest").exists()


def test_mixed_directory_needs_modality(tmp_path: Path) -> None:
    write_reference_pickle(tmp_path / "src" / "text_embeds_1.pkl", _records(3, 4, prefix="t"))
    write_reference_pickle(tmp_path / "src" / "image_embeds_1.pkl", _records(4, 4, prefix="i"))
    with pytest.raises(UserError, match="--modality"):
        ingest(tmp_path / "src", tmp_path / "s.zarr", fmt="reference-pkl")
    s = ingest(tmp_path / "src", tmp_path / "s.zarr", fmt="reference-pkl", modality="image")
    assert s.rows_added == 4 and s.modality == "image"
