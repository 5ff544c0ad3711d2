"""Round trips with nulls, NaN, bytes, big ints and mixed types; one id rule; vector dtypes by format."""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from revision.cli import main
from revision.errors import UserError
from revision.store import FeatureStore
from revision.store.export import export
from revision.store.ingest import ingest
from revision.store.pickle_io import PrecisionWarning, load_reference_pickle, write_reference_pickle


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _npy_layout(root: Path, meta: dict[str, Any]) -> np.ndarray:
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    x = np.arange(3 * 4, dtype=np.float16).reshape(3, 4)
    np.save(root / "img_emb" / "img_emb_0.npy", x)
    pq.write_table(pa.table({"id": ["a", "b", "c"], **meta}), root / "metadata" / "metadata_0.parquet")
    return x


def test_npy_parquet_with_null_captions_survives_store_pickle_store(tmp_path: Path) -> None:
    captions = ["x", None, "z"]
    scores = pa.array([1.5, float("nan"), None], pa.float64())
    _npy_layout(tmp_path / "in", {"caption": captions, "score": scores})
    ingest(tmp_path / "in", tmp_path / "a.zarr", fmt="npy")
    export(tmp_path / "a.zarr", tmp_path / "pk", fmt="reference-pkl")
    recs = load_reference_pickle(tmp_path / "pk" / "image_embeds_1.pkl")
    assert [r["caption"] for r in recs] == captions
    ingest(tmp_path / "pk", tmp_path / "b.zarr", fmt="reference-pkl")
    b = FeatureStore.open(tmp_path / "b.zarr")
    assert b.read_metadata("caption") == captions
    got = b.read_metadata("score")
    assert got[0] == 1.5 and math.isnan(got[1]) and got[2] is None, got  # NaN stays NaN, null stays None


def test_pickle_values_round_trip_through_store_and_every_export(tmp_path: Path) -> None:
    big = 2**70
    vec = np.ones(4, np.float16)
    recs = [
        {"id": "r0", "caption": "x", "n": big, "mixed": 1, "blob": b"\x00\xff", "f": 0.5, "embed": vec},
        {"id": "r1", "caption": None, "n": 3, "mixed": 1.5, "blob": b"", "f": float("nan"), "embed": vec * 2},
        {"id": "r2", "caption": "z", "n": -1, "mixed": "s", "blob": b"abc", "f": float("inf"), "embed": vec * 3},
    ]
    write_reference_pickle(tmp_path / "src" / "text_embeds_1.pkl", recs)
    ingest(tmp_path / "src", tmp_path / "a.zarr", fmt="reference-pkl")  # refused before: big int, None, bytes
    a = FeatureStore.open(tmp_path / "a.zarr")
    assert a.metadata_columns == {"caption": "json", "n": "json", "mixed": "json", "blob": "json", "f": "float64"}
    assert math.isnan(a.read_metadata("f")[1])
    export(tmp_path / "a.zarr", tmp_path / "pk", fmt="reference-pkl")
    back = load_reference_pickle(tmp_path / "pk" / "text_embeds_1.pkl")
    for got, want in zip(back, recs, strict=True):
        assert list(got) == list(want)
        for k in want:
            if k == "embed":
                assert got[k].tobytes() == want[k].tobytes()
            else:
                assert _same(got[k], want[k]), (k, got[k], want[k])
    for fmt, dest in (("parquet", "t.parquet"), ("npy", "npy")):
        export(tmp_path / "a.zarr", tmp_path / dest, fmt=fmt)
        ingest(tmp_path / dest, tmp_path / f"{fmt}.zarr", fmt=fmt)
        c = FeatureStore.open(tmp_path / f"{fmt}.zarr")
        assert c.metadata_columns == a.metadata_columns
        for col in a.metadata_columns:
            assert _same(list(c.read_metadata(col)), list(a.read_metadata(col))), (fmt, col)


def test_parquet_binary_and_nullable_columns_keep_their_values(tmp_path: Path) -> None:
    table = pa.table(
        {
            "id": ["a", "b"],
            "blob": pa.array([b"\x00\x01", None], pa.binary()),
            "f": pa.array([float("nan"), None], pa.float64()),
            "nested": pa.array([[1.0, float("nan")], None], pa.list_(pa.float64())),
            "embedding": pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float32(), 2)),
        }
    )
    pq.write_table(table, tmp_path / "in.parquet")
    ingest(tmp_path / "in.parquet", tmp_path / "s.zarr", fmt="parquet", modality="text")
    s = FeatureStore.open(tmp_path / "s.zarr")
    blob = s.read_metadata("blob")
    assert blob[1] is None and blob[0] != "b'\\x00\\x01'"  # not the Python repr
    f = s.read_metadata("f")
    assert math.isnan(f[0]) and f[1] is None
    nested = s.read_metadata("nested")
    assert nested[0][0] == 1.0 and math.isnan(nested[0][1]) and nested[1] is None
    export(tmp_path / "s.zarr", tmp_path / "pk", fmt="reference-pkl")
    assert load_reference_pickle(tmp_path / "pk" / "text_embeds_1.pkl")[0]["blob"] == b"\x00\x01"


def test_one_id_rule_across_formats(tmp_path: Path) -> None:
    vec = np.zeros(3, np.float32)
    recs = [{"id": 7, "embed": vec}, {"id": np.str_("s"), "embed": vec}, {"id": np.int64(9), "embed": vec}]
    write_reference_pickle(tmp_path / "p" / "text_embeds_1.pkl", recs)
    ingest(tmp_path / "p", tmp_path / "p.zarr", fmt="reference-pkl")
    assert list(FeatureStore.open(tmp_path / "p.zarr").read_ids()) == ["7", "s", "9"]
    emb = pa.array([[0.0] * 3] * 2, pa.list_(pa.float32(), 3))
    pq.write_table(pa.table({"id": pa.array([7, 9], pa.int64()), "embedding": emb}), tmp_path / "i.parquet")
    ingest(tmp_path / "i.parquet", tmp_path / "q.zarr", fmt="parquet", modality="text")
    assert list(FeatureStore.open(tmp_path / "q.zarr").read_ids()) == ["7", "9"]
    pq.write_table(pa.table({"id": pa.array([1.5, 2.5]), "embedding": emb}), tmp_path / "f.parquet")
    with pytest.raises(UserError, match=r"f\.parquet: id column 'id' is double; ids must be strings or integers"):
        ingest(tmp_path / "f.parquet", tmp_path / "f.zarr", fmt="parquet", modality="text")
    write_reference_pickle(tmp_path / "b" / "text_embeds_1.pkl", [{"id": b"x", "embed": vec}])
    with pytest.raises(UserError, match=r"item 0: wrong item layout: 'id' is b'x' \(bytes\); ids must be str or int"):
        ingest(tmp_path / "b", tmp_path / "b.zarr", fmt="reference-pkl")


def test_mixed_vector_dtypes_keep_the_widest_of_the_first_file_and_warn_after(tmp_path: Path) -> None:
    x32 = np.array([1.0001, 2.0, 3.0], np.float32)  # 1.0001 is not a float16
    first = [{"id": "a", "embed": x32.astype(np.float16)}, {"id": "b", "embed": x32}]
    write_reference_pickle(tmp_path / "one" / "text_embeds_1.pkl", first)
    ingest(tmp_path / "one", tmp_path / "one.zarr", fmt="reference-pkl")
    st = FeatureStore.open(tmp_path / "one.zarr")
    assert st.dtype == "float32" and st.read()[1].tobytes() == x32.tobytes()  # widened, not cast to fp16
    write_reference_pickle(tmp_path / "two" / "text_embeds_1.pkl", first[:1])
    write_reference_pickle(tmp_path / "two" / "text_embeds_2.pkl", [{"id": "c", "embed": x32}])
    with pytest.warns(PrecisionWarning, match=r"text_embeds_2\.pkl: item 0 \(id 'c'\): float32 values are rounded"):
        ingest(tmp_path / "two", tmp_path / "two.zarr", fmt="reference-pkl")


@pytest.mark.parametrize(
    ("dtype", "why"),
    [
        ("f16", "128-bit floats"),
        ("c8", "complex numbers"),
        ("O", "Python objects"),
        ("f4,f4", "a structured"),
        ("M8[s]", "datetime64"),
        ("i4", "int32 values"),
    ],
)
def test_npy_dtypes_the_store_cannot_hold_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dtype: str, why: str
) -> None:
    path = tmp_path / "x.npy"
    arr = np.zeros((2, 3), dtype=dtype) if dtype != "O" else np.full((2, 3), None, dtype=object)
    np.save(path, arr, allow_pickle=True)
    rc = main(["ingest", str(path), str(tmp_path / "s.zarr"), "--format", "npy", "--modality", "text"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, lines
    assert re.search(rf"x\.npy: dtype .* holds {why}", lines[0]), lines[0]
    assert not (tmp_path / "s.zarr").exists()


def test_big_endian_npy_is_read_by_value(tmp_path: Path) -> None:
    x = np.arange(6, dtype=">f4").reshape(2, 3) / 7
    np.save(tmp_path / "x.npy", x)
    ingest(tmp_path / "x.npy", tmp_path / "s.zarr", fmt="npy", modality="text")
    assert np.array_equal(FeatureStore.open(tmp_path / "s.zarr").read(), x.astype("<f4"))


def test_pickle_float128_vectors_are_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    data = pickle.dumps([{"id": "a", "embed": np.zeros(3, np.longdouble)}], protocol=4)
    (tmp_path / "src" / "text_embeds_1.pkl").write_bytes(data)
    with pytest.raises(UserError, match=r"item 0: 'embed' is float128 \(128-bit floats\), which the store cannot"):
        ingest(tmp_path / "src", tmp_path / "s.zarr", fmt="reference-pkl")
