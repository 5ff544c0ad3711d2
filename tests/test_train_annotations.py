"""The vectorised annotation scanner finds exactly the records `json` finds, whatever the block size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from revision.train.annotations import AnnotationIndex, scan_records
from revision.train.errors import DataError

# Strings full of what a naive scanner trips on: braces, brackets, quotes and backslash runs.
tricky_text = st.text(alphabet=st.sampled_from(list('ab{}[]"\\\n é🙂,:')), max_size=12)
records = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.one_of(tricky_text, st.integers(0, 10**12)),
            "caption": tricky_text,
            "conversations": st.lists(
                st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt"]), "value": tricky_text}),
                max_size=3,
            ),
        }
    ),
    max_size=25,
)


def write(path: Path, recs: list[dict[str, Any]], style: str) -> None:
    if style == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    elif style == "pretty":
        path.write_text(json.dumps(recs, indent=2, ensure_ascii=False), encoding="utf-8")
    else:
        path.write_text(json.dumps(recs, ensure_ascii=bool(len(recs) % 2)), encoding="utf-8")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recs=records, style=st.sampled_from(["array", "pretty", "jsonl"]), block=st.integers(1, 64))
def test_scan_matches_json(tmp_path_factory, recs: list[dict[str, Any]], style: str, block: int) -> None:
    path = tmp_path_factory.mktemp("ann") / "a.json"
    if style == "jsonl" and not recs:
        recs = [{"id": "only"}]
    write(path, recs, style)
    index = AnnotationIndex(path, block_bytes=block)
    got = [index.record(i) for i in range(len(index))]
    assert len(got) == len(recs), f"found {len(got)} records, json has {len(recs)}"
    for i, (g, r) in enumerate(zip(got, recs, strict=True)):
        assert g == r, f"record {i} differs: {g!r} vs {r!r}"


def test_wrong_scanner_is_rejected() -> None:
    """A scanner that ignores strings (counting every brace) must fail on a caption with a brace."""
    text = json.dumps([{"id": "a", "caption": "x } y"}, {"id": "b", "caption": '\\"{'}]).encode()
    buf = np.frombuffer(text, np.uint8)
    starts, ends = scan_records(buf, "mem", block_bytes=7)
    assert [json.loads(text[s:e])["id"] for s, e in zip(starts, ends, strict=True)] == ["a", "b"]
    naive_opens = np.flatnonzero(buf == ord("{"))
    assert len(naive_opens) != len(starts)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty annotation file"),
        ("   \n", "empty annotation file"),
        ('"just a string"', "expected '\\['"),
        ('[{"id": "a"}', "truncated or malformed"),
        ('[{"id": "a}]', "truncated or malformed"),
        ('[{"id": "a"}]]', "unbalanced closing bracket"),
        ('[["id", "a"]]', "not an object"),
    ],
)
def test_malformed_files_raise(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        AnnotationIndex(path, block_bytes=3)


def test_bad_record_names_file_and_record(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"id": "a"}\n{"id": 1 2}\n')
    index = AnnotationIndex(path)
    assert index.record(0) == {"id": "a"}
    with pytest.raises(DataError, match=r"a\.jsonl: record 1 \(byte 12\)"):
        index.record(1)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        AnnotationIndex(tmp_path / "nope.json")


def test_pickle_keeps_offsets_not_text(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "a.json"
    recs = [{"id": str(i), "caption": "c" * 500} for i in range(200)]
    write(path, recs, "array")
    index = AnnotationIndex(path)
    blob = pickle.dumps(index)
    assert len(blob) < path.stat().st_size / 10
    again = pickle.loads(blob)
    assert again.record(199) == recs[199]
    path.write_text("[]")
    with pytest.raises(DataError, match="changed since it was indexed"):
        pickle.loads(blob)
