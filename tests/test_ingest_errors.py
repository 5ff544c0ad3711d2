"""Ingest's bad inputs and appends: one-line errors naming file/row/id, exit code 2, nothing half-written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from revision.cli import main
from revision.errors import UserError
from revision.store import FeatureStore
from revision.store.ingest import ingest
from revision.store.pickle_io import write_reference_pickle

SMALL = {"chunk_rows": 4, "chunks_per_shard": 2}


def _pkls(
    root: Path, files: list[int], d: int = 6, *, prefix: str = "t", modality: str = "text", start: int = 0
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(len(files) + start)
    out: list[dict[str, Any]] = []
    k = start
    for j, n in enumerate(files):
        recs = [
            {"id": f"{prefix}{k + i}", "caption": f"c{k + i}", "embed": rng.standard_normal(d).astype(np.float16)}
            for i in range(n)
        ]
        write_reference_pickle(root / f"{modality}_embeds_{j + 1}.pkl", recs)
        out += recs
        k += n
    return out


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = main(list(args))
    err = capsys.readouterr().err.strip()
    if rc:
        assert len(err.splitlines()) == 1, err
    return rc, err


def _nothing_written(dest: Path) -> None:
    assert not dest.exists()
    assert not list(dest.parent.glob(f".{dest.name}*")), list(dest.parent.glob(f".{dest.name}*"))


def test_nonfinite_rows_error_skip_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recs = _pkls(tmp_path / "src", [5, 6])
    recs[7]["embed"][2] = np.nan
    recs[9]["embed"][0] = np.inf
    write_reference_pickle(tmp_path / "src" / "text_embeds_2.pkl", recs[5:])
    dest = tmp_path / "s.zarr"
    rc, err = _cli(capsys, "ingest", str(tmp_path / "src"), str(dest), "--format", "reference-pkl")
    assert rc == 2 and "text_embeds_2.pkl item 2 (id 't7'): non-finite values" in err and "--nonfinite" in err
    _nothing_written(dest)
    s = ingest(tmp_path / "src", dest, fmt="reference-pkl", nonfinite="skip", **SMALL)
    assert s.nonfinite == 2 and s.rows_added == 9
    assert list(FeatureStore.open(dest).read_ids()) == [f"t{i}" for i in range(11) if i not in (7, 9)]
    s = ingest(tmp_path / "src", tmp_path / "z.zarr", fmt="reference-pkl", nonfinite="zero", **SMALL)
    assert s.nonfinite == 2 and s.rows_added == 11
    z = FeatureStore.open(tmp_path / "z.zarr").read()
    want = np.stack([r["embed"] for r in recs])
    want[~np.isfinite(want)] = 0
    assert z.tobytes() == want.tobytes()


def test_overflow_into_float16_counts_as_nonfinite(tmp_path: Path) -> None:
    x = np.ones((3, 4), np.float32)
    x[1, 1] = 1e6  # finite in float32, Inf in float16
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(
        UserError, match=r"x\.npy row 1 \(id '1'\): non-finite values \(NaN/Inf\) after conversion to float16"
    ):
        ingest(tmp_path / "x.npy", tmp_path / "s.zarr", fmt="npy", modality="text", dtype="float16")
    _nothing_written(tmp_path / "s.zarr")


@pytest.mark.parametrize("where", ["same_file", "across_files"])
def test_duplicate_ids_in_the_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    recs = _pkls(tmp_path / "src", [4, 5, 3])
    if where == "same_file":
        recs[6]["id"] = "t8"
        write_reference_pickle(tmp_path / "src" / "text_embeds_2.pkl", recs[4:9])
        expect = "duplicate id 't8': {0}/text_embeds_2.pkl item 2 and {0}/text_embeds_2.pkl item 4"
    else:
        recs[10]["id"] = "t1"
        write_reference_pickle(tmp_path / "src" / "text_embeds_3.pkl", recs[9:])
        expect = "duplicate id 't1': {0}/text_embeds_1.pkl item 1 and {0}/text_embeds_3.pkl item 1"
    dest = tmp_path / "s.zarr"
    rc, err = _cli(capsys, "ingest", str(tmp_path / "src"), str(dest), "--format", "reference-pkl", "--chunk-rows", "4")
    assert rc == 2 and expect.format(tmp_path / "src") in err, err
    _nothing_written(dest)


def test_append_checks_duplicates_against_dest_and_leaves_it_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _pkls(tmp_path / "a", [5, 4])
    dest = tmp_path / "s.zarr"
    ingest(tmp_path / "a", dest, fmt="reference-pkl", **SMALL)
    before = {p.relative_to(dest): p.read_bytes() for p in sorted(dest.rglob("*")) if p.is_file()}
    clash = _pkls(tmp_path / "b", [3, 3], start=20)
    clash[4]["id"] = "t6"
    write_reference_pickle(tmp_path / "b" / "text_embeds_2.pkl", clash[3:])
    rc, err = _cli(capsys, "ingest", str(tmp_path / "b"), str(dest), "--format", "reference-pkl")
    assert rc == 2 and f"duplicate id 't6': {dest} row 6 and {tmp_path / 'b'}/text_embeds_2.pkl item 1" in err, err
    after = {p.relative_to(dest): p.read_bytes() for p in sorted(dest.rglob("*")) if p.is_file()}
    assert FeatureStore.open(dest).rows == 9
    assert {k: v for k, v in after.items() if k in before} == before  # committed bytes never change
    assert not list(tmp_path.glob(".s.zarr*"))
    # A good append lands in one commit; running it again is a no-op, not a duplicate error.
    more = _pkls(tmp_path / "c", [2, 5], start=30)
    s = ingest(tmp_path / "c", dest, fmt="reference-pkl")
    assert (s.mode, s.rows_added, s.rows_total) == ("append", 7, 16)
    again = ingest(tmp_path / "c", dest, fmt="reference-pkl")
    assert again.mode == "noop" and FeatureStore.open(dest).rows == 16
    st = FeatureStore.open(dest)
    assert list(st.read_ids()) == [r["id"] for r in first + more]
    assert st.read().tobytes() == np.stack([r["embed"] for r in first + more]).tobytes()


def test_dest_of_another_modality_dim_or_not_a_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _pkls(tmp_path / "txt", [3])
    _pkls(tmp_path / "img", [3], prefix="i", modality="image")
    _pkls(tmp_path / "wide", [3], d=9, prefix="w")
    dest = tmp_path / "s.zarr"
    ingest(tmp_path / "txt", dest, fmt="reference-pkl", **SMALL)
    rc, err = _cli(capsys, "ingest", str(tmp_path / "img"), str(dest), "--format", "reference-pkl")
    assert rc == 2 and "DEST holds text rows; the input is image" in err
    rc, err = _cli(capsys, "ingest", str(tmp_path / "wide"), str(dest), "--format", "reference-pkl")
    assert rc == 2 and "DEST has dim 6; the input's vectors have 9 values" in err
    rc, err = _cli(
        capsys, "ingest", str(tmp_path / "txt"), str(dest), "--format", "reference-pkl", "--dtype", "float32"
    )
    assert rc == 2 and "--dtype float32" in err
    assert FeatureStore.open(dest).rows == 3
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    rc, err = _cli(capsys, "ingest", str(tmp_path / "txt"), str(tmp_path / "plain"), "--format", "reference-pkl")
    assert rc == 2 and "DEST exists but is not a feature store" in err
    assert [p.name for p in (tmp_path / "plain").iterdir()] == ["notes.txt"]


def test_empty_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "none").mkdir()
    rc, err = _cli(capsys, "ingest", str(tmp_path / "none"), str(tmp_path / "s.zarr"), "--format", "reference-pkl")
    assert rc == 2 and "empty input" in err
    write_reference_pickle(tmp_path / "nulls" / "text_embeds_1.pkl", [{"id": "a", "embed": None}])
    rc, err = _cli(capsys, "ingest", str(tmp_path / "nulls"), str(tmp_path / "s.zarr"), "--format", "reference-pkl")
    assert rc == 2 and "empty input" in err
    x = np.full((2, 3), np.nan, np.float32)
    np.save(tmp_path / "nan.npy", x)
    rc, err = _cli(
        capsys,
        "ingest",
        str(tmp_path / "nan.npy"),
        str(tmp_path / "s.zarr"),
        "--format",
        "npy",
        "--modality",
        "text",
        "--nonfinite",
        "skip",
    )
    assert rc == 2 and "empty input" in err
    _nothing_written(tmp_path / "s.zarr")


def test_flags_that_do_not_apply_are_named(tmp_path: Path) -> None:
    _pkls(tmp_path / "src", [2])
    with pytest.raises(UserError, match="--id-column does not apply"):
        ingest(tmp_path / "src", tmp_path / "s.zarr", fmt="reference-pkl", id_column="x")
    with pytest.raises(UserError, match="--nonfinite"):
        ingest(tmp_path / "src", tmp_path / "s.zarr", fmt="reference-pkl", nonfinite="ignore")
    with pytest.raises(UserError, match="--format"):
        ingest(tmp_path / "src", tmp_path / "s.zarr", fmt="csv")


def test_a_second_concurrent_ingest_into_the_same_dest_is_refused(tmp_path: Path) -> None:
    from revision.store.lock import WriterLock

    _pkls(tmp_path / "src", [3])
    staging = tmp_path / ".s.zarr.ingest"
    staging.mkdir()
    lock = WriterLock.acquire(staging, "test")  # as a running ingest holds it
    try:
        with pytest.raises(UserError, match="another ingest into this DEST is running"):
            ingest(tmp_path / "src", tmp_path / "s.zarr", fmt="reference-pkl", **SMALL)
    finally:
        lock.release()
    assert not (tmp_path / "s.zarr").exists()
    assert ingest(tmp_path / "src", tmp_path / "s.zarr", fmt="reference-pkl", **SMALL).rows_added == 3
