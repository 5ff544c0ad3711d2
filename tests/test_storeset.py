"""Store sets: several stores read as one (globs, directories of parts, torchrun embed parts)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from revision.cli import main
from revision.store import FeatureStore, StoreConfig, StoreError, StoreSet, open_readable
from revision.store.storeset import part_name

CUTS = [0, 100, 100, 177, 307]  # the second part is empty
CHUNKS = [16, 32, 8, 64]


def write(path: Path, x: np.ndarray, ids: list[str], *, modality: str = "text", chunk_rows: int = 16,
          dtype: str = "float32") -> Path:  # fmt: skip
    cfg = StoreConfig(modality=modality, dim=x.shape[1], dtype=dtype, chunk_rows=chunk_rows, chunks_per_shard=2)
    columns = {"caption": "str", "extra": "json"}
    with FeatureStore.create(path, cfg, metadata_columns=columns) as st:
        if len(x):
            st.append(x, ids, {"caption": [f"c-{i}" for i in ids], "extra": [{"i": i} for i in ids]})
    return path


@pytest.fixture
def corpus() -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(CUTS[-1], 12)) + 0.5).astype(np.float32)
    return x, [f"row{k:05d}" for k in range(len(x))]


def write_parts(root: Path, corpus: tuple[np.ndarray, list[str]], name: str = "p-{k}.zarr", **kw: object) -> list[Path]:
    x, ids = corpus
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(len(CUTS) - 1):
        a, b = CUTS[k], CUTS[k + 1]
        paths.append(write(root / name.format(k=k), x[a:b], ids[a:b], chunk_rows=CHUNKS[k], **kw))  # type: ignore[arg-type]
    return paths


def test_a_glob_reads_as_the_concatenation(tmp_path: Path, corpus: tuple[np.ndarray, list[str]]) -> None:
    x, ids = corpus
    write_parts(tmp_path, corpus)
    with open_readable(str(tmp_path / "p-*.zarr")) as st:
        assert isinstance(st, StoreSet) and len(st.parts) == 4
        assert (st.rows, st.dim, st.dtype, st.modality) == (len(x), 12, "float32", "text")
        assert np.array_equal(st.read(), x)
        assert np.array_equal(st.read(90, 180), x[90:180])  # across the empty part and a boundary
        assert list(st.read_ids(95, 105)) == ids[95:105]
        assert list(st.read_metadata("caption", 170, 180)) == [f"c-{i}" for i in ids[170:180]]
        assert st.read_metadata("extra", 99, 101) == [{"i": ids[99]}, {"i": ids[100]}]
        rows = np.random.default_rng(1).integers(0, len(x), 50)
        assert np.array_equal(st.read_rows(rows), x[rows])
        views = list(st.iter_chunks(block_rows=32, zero_copy=True))  # also cut at shard boundaries
        assert np.array_equal(np.concatenate([b for _, b in views]), x)
        blocks = list(st.iter_chunks(50, 250, block_rows=32))
        assert np.array_equal(np.concatenate([b for _, b in blocks]), x[50:250])
        assert [lo for lo, _ in blocks] == [lo for lo, _ in st.block_ranges(50, 250, 32)]
        # Blocks are cut at part boundaries: each one lies in one part.
        assert all(not (a < c < b) for a, b in st.block_ranges(0, None, 32) for c in CUTS)
        assert [lo for lo, _ in st.iter_ids(16)][:3] == [0, 16, 32]


def test_directories_of_parts(tmp_path: Path, corpus: tuple[np.ndarray, list[str]]) -> None:
    x, _ = corpus
    # What a distributed align writes: out/partRRR-of-WWW.zarr.
    write_parts(tmp_path / "aligned", corpus, name=part_name(0, 4).replace("000", "00{k}"))
    with open_readable(tmp_path / "aligned") as st:
        assert isinstance(st, StoreSet) and np.array_equal(st.read(), x)
    # What embed writes under torchrun: out/text.partRRR-of-WWW.zarr beside the image parts; the
    # one-process name out/text.zarr finds them.
    emb = tmp_path / "emb"
    write_parts(emb, corpus, name="text." + part_name(0, 4).replace("000", "00{k}"))
    write_parts(emb, corpus, name="image." + part_name(0, 4).replace("000", "00{k}"), modality="image")
    with open_readable(emb / "text.zarr") as st:
        assert isinstance(st, StoreSet) and st.modality == "text" and st.rows == len(x)
    with pytest.raises(StoreError, match=r"holds the parts of 2 stores; name one .*image\.part\*"):
        open_readable(emb)
    (emb / "text.part002-of-004.zarr" / "zarr.json").unlink()
    with pytest.raises(StoreError, match="part 2 of 4 is missing"):
        open_readable(emb / "text.zarr")
    with pytest.raises(StoreError, match="no store matches"):
        open_readable(str(tmp_path / "nothing-*.zarr"))
    with pytest.raises(StoreError, match="--text .*nothing.zarr: no such store"):
        open_readable(tmp_path / "nothing.zarr", flag="--text")


@pytest.mark.parametrize(
    ("what", "kw"), [("dim", {}), ("dtype", {"dtype": "float16"}), ("modality", {"modality": "image"})]
)
def test_parts_that_disagree_are_refused(
    tmp_path: Path,
    corpus: tuple[np.ndarray, list[str]],
    what: str,
    kw: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    x, ids = corpus
    write(tmp_path / "s-0.zarr", x[:50], ids[:50])
    odd = x[50:80, :8] if what == "dim" else x[50:80]
    write(tmp_path / "s-1.zarr", odd, ids[50:80], **kw)  # type: ignore[arg-type]
    assert main(["info", str(tmp_path / "s-*.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"s-1.zarr: {what} " in err and "s-0.zarr" in err, err


def test_duplicate_ids_across_parts(tmp_path: Path, corpus: tuple[np.ndarray, list[str]]) -> None:
    x, ids = corpus
    write(tmp_path / "d-0.zarr", x[:60], ids[:60])
    write(tmp_path / "d-1.zarr", x[60:90], ids[70:90] + [ids[17]] + ids[91:100])
    with pytest.raises(StoreError) as err:
        open_readable(str(tmp_path / "d-*.zarr"))
    msg = str(err.value)
    assert "'row00017'" in msg and "d-0.zarr (row 17)" in msg and "d-1.zarr (row 20)" in msg, msg
    # The same with buckets split on disk (a budget far below the records' size).
    with open_readable(str(tmp_path / "d-*.zarr"), check_ids=False) as st:
        assert isinstance(st, StoreSet)
        with pytest.raises(StoreError, match="row00017"):
            st.check_unique_ids(budget_bytes=64)


def test_info_on_a_set(
    tmp_path: Path, corpus: tuple[np.ndarray, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    write_parts(tmp_path, corpus)
    spec = str(tmp_path / "p-*.zarr")
    assert main(["info", spec, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == CUTS[-1] and [p["rows"] for p in info["parts"]] == [100, 0, 77, 130]
    assert main(["info", spec]) == 0
    out = capsys.readouterr().out
    assert "4 (ids unique across them)" in out and f"{CUTS[-1]:,}" in out and "p-3.zarr: 130 rows" in out


def test_apply_on_a_set_equals_apply_on_one_store(tmp_path: Path, corpus: tuple[np.ndarray, list[str]]) -> None:
    """Per-row results do not depend on blocks, so a set aligns to the bytes of the same rows in one store."""
    x, ids = corpus
    write_parts(tmp_path, corpus)
    write(tmp_path / "whole.zarr", x, ids, chunk_rows=32)
    rng = np.random.default_rng(2)
    write(tmp_path / "image.zarr", (rng.normal(size=(200, 12)) - 0.4).astype(np.float32), [f"i{k}" for k in range(200)],
          modality="image")  # fmt: skip
    spec = str(tmp_path / "p-*.zarr")
    fit = ["fit", "--image", str(tmp_path / "image.zarr"), "--no-progress"]
    assert main([*fit, "--text", spec, "--stats", str(tmp_path / "set.json")]) == 0
    assert main([*fit, "--text", str(tmp_path / "whole.zarr"), "--stats", str(tmp_path / "whole.json")]) == 0
    set_stats = json.loads((tmp_path / "set.json").read_text())
    whole_stats = json.loads((tmp_path / "whole.json").read_text())
    assert set_stats["rows"] == whole_stats["rows"]
    assert np.allclose(set_stats["vectors"]["mu_hat"], whole_stats["vectors"]["mu_hat"], rtol=0, atol=1e-12)
    outs = {}
    for name, text in (("set", spec), ("whole", str(tmp_path / "whole.zarr"))):
        out = tmp_path / f"a-{name}.zarr"
        args = ["apply", "--text", text, "--stats", str(tmp_path / "set.json"), "--out", str(out), "--no-progress"]
        assert main(args) == 0
        with FeatureStore.open(out) as st:
            outs[name] = (st.read(), list(st.read_ids()), st.read_metadata("extra"))
    assert np.array_equal(outs["set"][0].view(np.uint32), outs["whole"][0].view(np.uint32))
    assert outs["set"][1:] == outs["whole"][1:]


def test_align_reads_the_parts_of_a_torchrun_embed(tmp_path: Path, corpus: tuple[np.ndarray, list[str]]) -> None:
    x, _ = corpus
    emb = tmp_path / "emb"
    write_parts(emb, corpus, name="text." + part_name(0, 4).replace("000", "00{k}"))
    rng = np.random.default_rng(3)
    write(emb / "image.zarr", (rng.normal(size=(90, 12)) - 0.4).astype(np.float32), [f"i{k}" for k in range(90)],
          modality="image")  # fmt: skip
    args = ["align", "--text", str(emb / "text.zarr"), "--image", str(emb / "image.zarr"), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a.zarr")]) == 0
    with FeatureStore.open(tmp_path / "a.zarr") as st:
        assert st.rows == len(x)


def test_diagnose_reads_a_set(tmp_path: Path, corpus: tuple[np.ndarray, list[str]]) -> None:
    x, ids = corpus
    write_parts(tmp_path, corpus)
    write(tmp_path / "whole.zarr", x, ids, chunk_rows=32)
    rng = np.random.default_rng(6)
    write(tmp_path / "image.zarr", (rng.normal(size=(150, 12)) - 0.4).astype(np.float32), [f"i{k}" for k in range(150)],
          modality="image")  # fmt: skip
    metrics = {}
    for name, text in (("set", str(tmp_path / "p-*.zarr")), ("whole", str(tmp_path / "whole.zarr"))):
        args = ["diagnose", "--text", text, "--image", str(tmp_path / "image.zarr"), "--sample", "100", "--quiet"]
        assert main([*args, "--no-gpu", "--out", str(tmp_path / f"d-{name}")]) == 0
        metrics[name] = json.loads((tmp_path / f"d-{name}" / "metrics.json").read_text())["raw"]
    assert metrics["set"]["rows_text"] == metrics["whole"]["rows_text"] == len(x)
    assert abs(metrics["set"]["centroid_gap"] - metrics["whole"]["centroid_gap"]) < 1e-9, metrics
