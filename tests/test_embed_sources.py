"""Input readers of `revision embed`: the streaming JSON walker equals json.load, layouts, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from revision.embed.jsonstream import iter_object_array, iter_top_array
from revision.embed.sources import DatasetSource
from revision.errors import UserError

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=12,
)
_FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FAST
@given(
    images=st.lists(_values, max_size=8),
    texts=st.lists(_values, max_size=8),
    other=_values,
    block=st.integers(1, 64),
    indent=st.sampled_from([None, 0, 2]),
)
def test_object_array_streaming_equals_json_load(
    tmp_path: Path, images: list[object], texts: list[object], other: object, block: int, indent: int | None
) -> None:
    doc = {"meta": other, "images": images, "texts": texts, "tail": [other, other]}
    path = tmp_path / "d.json"
    path.write_text(json.dumps(doc, indent=indent))
    # A block far smaller than one element forces every value to straddle buffer edges.
    for key in ("images", "texts", "tail"):
        got = list(iter_object_array(path, key, block_chars=block))
        assert got == doc[key], f"key {key!r}, block {block}: {got!r} != {doc[key]!r}"
    assert list(iter_object_array(path, "absent", block_chars=block)) == []


@_FAST
@given(items=st.lists(_values, max_size=10), block=st.integers(1, 64))
def test_top_array_streaming_equals_json_load(tmp_path: Path, items: list[object], block: int) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps(items))
    assert list(iter_top_array(path, block_chars=block)) == items


def test_number_at_buffer_edge_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "n.json"
    path.write_text('{"images": [123456789, 42]}')
    # 14 characters end the buffer inside 123456789: a naive raw_decode would return 1234.
    assert list(iter_object_array(path, "images", block_chars=14)) == [123456789, 42]


@pytest.mark.parametrize(
    "text",
    ['{"images": [{"id": "a"}, ', '{"images": [1 2]}', '{"images": [1,]}', "[1, 2] extra", '{"images" [1]}'],
)
def test_malformed_json_is_a_user_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(UserError, match="bad.json"):
        if text.startswith("["):
            list(iter_top_array(path, block_chars=3))
        else:
            list(iter_object_array(path, "images", block_chars=3))


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_seed_layout(tmp_path: Path) -> None:
    doc = {
        "images": [{"id": "i1", "image": "a.png"}, {"id": "i2", "image": "x/b.jpg"}],
        "texts": [{"id": "t1", "text": "hello"}, {"id": 7, "text": ""}],
    }
    src = DatasetSource.open(_write(tmp_path, "dataset.json", json.dumps(doc)))
    assert src.format == "seed"
    assert [(it.index, it.id, it.value) for it in src.items("image")] == [(0, "i1", "a.png"), (1, "i2", "x/b.jpg")]
    # Integer ids name the same sample as their string; empty texts are items (they fail later).
    assert [(it.id, it.value) for it in src.items("text")] == [("t1", "hello"), ("7", "")]


def test_llava_layout_takes_first_gpt_turn(tmp_path: Path) -> None:
    doc = [
        {
            "id": "s1",
            "image": "s1.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe."},
                {"from": "gpt", "value": "A cat on a mat."},
                {"from": "gpt", "value": "second"},
            ],
        },
        {"id": "s2", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "<image> A dog"}]},
        {"id": "s3", "image": "s3.jpg", "caption": "explicit caption"},
    ]
    src = DatasetSource.open(_write(tmp_path, "llava.json", json.dumps(doc)))
    assert src.format == "llava"
    assert [(it.index, it.id, it.value) for it in src.items("image")] == [(0, "s1", "s1.jpg"), (1, "s3", "s3.jpg")]
    assert [it.value for it in src.items("text")] == ["A cat on a mat.", "A dog", "explicit caption"]


def test_jsonl_layout_and_detection(tmp_path: Path) -> None:
    lines = [{"id": "a", "image": "a.png"}, {"id": "b", "text": "bee"}, {"id": "c", "image": "c.png", "text": "sea"}]
    body = "\n".join(json.dumps(x) for x in lines) + "\n\n"
    for name in ("d.jsonl", "d.json"):  # a .json file of one object per line is detected too
        src = DatasetSource.open(_write(tmp_path, name, body))
        assert src.format == "jsonl"
        assert [it.id for it in src.items("image")] == ["a", "c"]
        assert [(it.index, it.value) for it in src.items("text")] == [(0, "bee"), (1, "sea")]


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"images": [{"image": "a.png"}]}, r"images\[0\]: missing 'id'"),
        ({"images": [{"id": "a"}]}, r"images\[0\]: missing 'image'"),
        ({"images": [{"id": "a", "image": 3}]}, r"'image' must be a string"),
        ({"images": [{"id": "", "image": "a"}]}, r"'id' is empty"),
        ({"images": [{"id": ["x"], "image": "a"}]}, r"'id' must be a string"),
        ({"images": ["a.png"]}, r"expected an object"),
    ],
)
def test_bad_items_name_the_row(tmp_path: Path, doc: dict[str, object], match: str) -> None:
    src = DatasetSource.open(_write(tmp_path, "dataset.json", json.dumps(doc)))
    with pytest.raises(UserError, match=match):
        list(src.items("image"))


def test_jsonl_bad_line_names_the_line(tmp_path: Path) -> None:
    src = DatasetSource.open(_write(tmp_path, "d.jsonl", '{"id": "a", "text": "x"}\n{"id": "b", "text": \n'))
    with pytest.raises(UserError, match="line 2"):
        list(src.items("text"))


def test_missing_data_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--data"):
        DatasetSource.open(tmp_path / "nope.json")


@pytest.mark.parametrize("block", [1, 2, 3, 5])
def test_numbers_cut_by_the_buffer_are_read_whole(tmp_path: Path, block: int) -> None:
    path = tmp_path / "n.json"
    path.write_text('{"a": 0.5, "images": [1e-3, -0.25, 10, 3.0E+2]}')
    assert list(iter_object_array(path, "images", block_chars=block)) == [1e-3, -0.25, 10, 3.0e2]
