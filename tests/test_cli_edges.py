"""Inputs people produce by accident, one table row each, through the real CLI (`revision.cli.main`).

Every row builds its inputs with revision's own API in a fresh folder, runs one command, and checks
the exit status, a fragment of the message, that an error is one line, and that nothing was left
behind and no input changed: the folder's files (bytes and mtimes) are the same after the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from test_align_oracle import make_store

from revision.cli import main

ROWS, DIM = 40, 16


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every input the rows need: stores, statistics, pickles, a tiny dataset and model."""
    from revision.align import AlignConfig, align_stores, fit_stores, save_stats
    from revision.store.export import export

    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    text = (rng.normal(size=(ROWS, DIM)) + 1).astype(np.float32)
    image = (rng.normal(size=(ROWS, DIM)) - 1).astype(np.float32)
    make_store(root / "t.zarr", text, "text", chunk_rows=16).close()
    make_store(root / "i.zarr", image, "image", chunk_rows=16).close()
    make_store(root / "tiny.zarr", text[:3], "text", chunk_rows=16).close()
    align_stores(root / "t.zarr", root / "i.zarr", root / "a.zarr", progress=False)
    stats, _ = fit_stores(root / "t.zarr", root / "i.zarr", AlignConfig(progress=False))
    save_stats(stats, root / "s.json")
    export(root / "t.zarr", root / "pkl_text", fmt="reference-pkl")
    export(root / "i.zarr", root / "pkl_image", fmt="reference-pkl")
    (root / "folder").mkdir()
    return root


@pytest.fixture(scope="module")
def embed_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from revision.embed.tiny import build_tiny_clip, write_tiny_dataset

    root = tmp_path_factory.mktemp("embed-inputs")
    build_tiny_clip(root / "model", seed=1)
    write_tiny_dataset(root / "data", n_images=4, n_texts=4, seed=2, broken=False)
    (root / "folder").mkdir()
    return root


def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file and folder under `root`: size, mtime and a digest of the bytes."""
    snap = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else ""
        snap[str(p.relative_to(root))] = (st.st_size if digest else 0, st.st_mtime_ns if digest else 0, digest)
    return snap


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    """The command line; "{w}" is the folder holding this row's inputs."""
    code: int
    message: str
    """A fragment expected on stderr (errors) or stdout (status 0)."""
    setup: Callable[[Path], None] | None = None
    """Extra inputs, made after the shared ones are copied in."""
    embed: bool = False
    """Uses the tiny dataset and model instead of the stores."""


def _link_to_text(w: Path) -> None:
    (w / "link.zarr").symlink_to(w / "t.zarr", target_is_directory=True)


def _anonymous_image_pickles(w: Path) -> None:
    # Pickles renamed away from the reference's image_embeds_*: their records still say images.
    from revision.store.pickle_io import write_reference_pickle

    vectors = np.random.default_rng(3).normal(size=(5, DIM)).astype(np.float16)
    records = [{"id": f"im{k}", "image_path": f"{k}.jpg", "embed": v} for k, v in enumerate(vectors)]
    (w / "pkl_anon").mkdir()
    write_reference_pickle(w / "pkl_anon" / "part_1.pkl", records)


def _duplicate_ids(w: Path) -> None:
    doc = json.loads((w / "data" / "dataset.json").read_text())
    doc["texts"].append(dict(doc["texts"][1]))
    (w / "data" / "dup.json").write_text(json.dumps(doc))


def _bad_json_line(w: Path) -> None:
    (w / "data" / "bad.jsonl").write_text('{"id": "a", "text": "a cat"}\n{"id": "b", "text": \n')


def _data_in_out(w: Path) -> None:
    (w / "o").mkdir()
    (w / "o" / "failures.jsonl").write_text('{"id": "a", "text": "a cat"}\n')


def _a_file(w: Path) -> None:
    (w / "file.txt").write_text("not a folder\n")


ALIGN = ("align", "--text", "{w}/t.zarr", "--image", "{w}/i.zarr", "--no-progress")
FIT = ("fit", "--text", "{w}/t.zarr", "--image", "{w}/i.zarr", "--no-progress")
APPLY = ("apply", "--stats", "{w}/s.json", "--no-progress")
DIAG = ("diagnose", "--quiet", "--no-gpu", "--sample", "10")
PKL = ("align-pkl", "--no-progress")
EMBED = ("embed", "--model", "{w}/model", "--no-progress", "--workers", "0")

CASES = [
    # 3: the modality of every input store and pickle directory is checked.
    Case(
        "apply-image-as-text",
        (*APPLY, "--text", "{w}/i.zarr", "--out", "{w}/o.zarr"),
        2,
        "pass the text store with --text",
    ),
    Case(
        "align-swapped",
        ("align", "--text", "{w}/i.zarr", "--image", "{w}/t.zarr", "--out", "{w}/o.zarr"),
        2,
        "pass the text store with --text",
    ),
    Case(
        "diagnose-swapped",
        (*DIAG, "--text", "{w}/i.zarr", "--image", "{w}/t.zarr", "--out", "{w}/d"),
        2,
        "pass the text store with --text",
    ),
    Case(
        "diagnose-image-as-aligned",
        (*DIAG, "--text", "{w}/t.zarr", "--image", "{w}/i.zarr", "--aligned", "{w}/i.zarr", "--out", "{w}/d"),
        2,
        "an image store; pass an aligned text store with --aligned",
    ),
    Case(
        "align-pkl-image-pickles-as-text",
        (*PKL, "--input_dir", "{w}/pkl_image", "--img_input_dir", "{w}/pkl_text", "--output_dir", "{w}/o"),
        2,
        "--input_dir",
    ),
    Case(
        "align-pkl-image-pickles-by-keys",
        (*PKL, "--input_dir", "{w}/pkl_anon", "--img_input_dir", "{w}/pkl_image", "--output_dir", "{w}/o"),
        2,
        "image_path",
        _anonymous_image_pickles,
    ),
    Case(
        "align-pkl-text-pickles-as-image",
        (*PKL, "--input_dir", "{w}/pkl_text", "--img_input_dir", "{w}/pkl_text", "--output_dir", "{w}/o"),
        2,
        "--img_input_dir",
    ),
    # 4: outputs that are, hold or lie inside an input, or another output.
    Case("align-out-is-text", (*ALIGN, "--out", "{w}/t.zarr"), 2, "is the input --text"),
    Case("align-out-is-text-via-link", (*ALIGN, "--out", "{w}/link.zarr"), 2, "is the input --text", _link_to_text),
    Case("align-out-inside-image", (*ALIGN, "--out", "{w}/i.zarr/o.zarr"), 2, "lies inside the input --image"),
    Case(
        "align-trace-stats-is-stats",
        (*ALIGN, "--out", "{w}/o.zarr", "--export-trace-stats", "{w}/o.zarr.stats.json"),
        2,
        "is the output",
    ),
    Case(
        "align-trace-stats-inside-out",
        (*ALIGN, "--out", "{w}/o.zarr", "--export-trace-stats", "{w}/o.zarr/trace_stats.pkl"),
        2,
        "lies inside the output --out",
    ),
    Case("apply-out-is-stats", (*APPLY, "--text", "{w}/t.zarr", "--out", "{w}/s.json"), 2, "is the input --stats"),
    Case(
        "align-pkl-mean-is-input",
        (
            *PKL,
            "--input_dir",
            "{w}/pkl_text",
            "--img_input_dir",
            "{w}/pkl_image",
            "--output_dir",
            "{w}/o",
            "--mean_file_path",
            "{w}/pkl_text/text_embeds_1.pkl",
        ),
        2,
        "--mean_file_path",
    ),
    Case(
        "align-pkl-output-is-input",
        (*PKL, "--input_dir", "{w}/pkl_text", "--img_input_dir", "{w}/pkl_image", "--output_dir", "{w}/pkl_text"),
        2,
        "the input --input_dir",
    ),
    Case(
        "diagnose-out-inside-text",
        (*DIAG, "--text", "{w}/t.zarr", "--image", "{w}/i.zarr", "--out", "{w}/t.zarr"),
        2,
        "lies inside the input --text",
    ),
    Case(
        "export-dest-inside-store",
        ("export", "{w}/t.zarr", "{w}/t.zarr/x", "--format", "npy"),
        2,
        "lies inside the input STORE",
    ),
    Case(
        "ingest-dest-is-src",
        ("ingest", "{w}/pkl_text", "{w}/pkl_text", "--format", "reference-pkl"),
        2,
        "is the input SRC",
    ),
    Case(
        "fit-stats-is-trace-stats",
        (*FIT, "--stats", "{w}/x.json", "--export-trace-stats", "{w}/x.json"),
        2,
        "is the output --stats",
    ),
    Case("fit-stats-is-text", (*FIT, "--stats", "{w}/t.zarr"), 2, "is the input --text"),
    Case(
        "fit-stats-is-merge-input", ("fit", "--merge", "{w}/s.json", "--stats", "{w}/s.json"), 2, "is the input --merge"
    ),
    # 7: a folder given where a file goes, and a file where a folder goes: refused before any pass.
    Case(
        "align-trace-stats-dir",
        (*ALIGN, "--out", "{w}/o.zarr", "--export-trace-stats", "{w}/folder"),
        2,
        "is a directory",
    ),
    Case("fit-stats-dir", (*FIT, "--stats", "{w}/folder"), 2, "is a directory"),
    Case(
        "fit-trace-stats-dir",
        (*FIT, "--stats", "{w}/x.json", "--export-trace-stats", "{w}/folder"),
        2,
        "is a directory",
    ),
    Case("align-out-file", (*ALIGN, "--out", "{w}/file.txt"), 2, "exists and is not a directory", _a_file),
    Case("apply-out-file", (*APPLY, "--text", "{w}/t.zarr", "--out", "{w}/file.txt"), 2, "not a directory", _a_file),
    Case(
        "demo-out-file",
        ("demo", "--rows", "50", "--dim", "130", "--out", "{w}/file.txt"),
        2,
        "not a directory",
        _a_file,
    ),
    # 10: contradictions refused with one line before any work.
    Case(
        "export-rows-per-file-0",
        ("export", "{w}/t.zarr", "{w}/e", "--format", "npy", "--rows-per-file", "0"),
        2,
        "--rows-per-file",
    ),
    Case(
        "export-rows-per-file-parquet",
        ("export", "{w}/t.zarr", "{w}/e.parquet", "--format", "parquet", "--rows-per-file", "10"),
        2,
        "--rows-per-file",
    ),
    Case("export-parquet-to-dir-slash", ("export", "{w}/t.zarr", "{w}/e/", "--format", "parquet"), 2, "a file"),
    Case(
        "export-parquet-to-existing-dir",
        ("export", "{w}/t.zarr", "{w}/folder", "--format", "parquet"),
        2,
        "parquet writes one file",
    ),
    Case("demo-dim-small", ("demo", "--rows", "50", "--dim", "32", "--out", "{w}/demo"), 2, "--dim 32"),
    Case(
        "demo-sample-0", ("demo", "--rows", "50", "--dim", "130", "--sample", "0", "--out", "{w}/demo"), 2, "--sample 0"
    ),
    Case(
        "demo-sample-over-rows",
        ("demo", "--rows", "50", "--dim", "130", "--sample", "60", "--out", "{w}/demo"),
        2,
        "--sample 60",
    ),
    Case("demo-rows-under-sample-floor", ("demo", "--rows", "5", "--dim", "130", "--out", "{w}/demo"), 2, "--rows 5"),
    # 12: small stores and missing arguments get a useful answer.
    Case("info-tiny-store", ("info", "{w}/tiny.zarr"), 0, "n/a (store smaller than one chunk)"),
    Case("bench-no-name", ("bench",), 0, "align"),
    # 8: embed validates its inputs before it creates OUT.
    Case(
        "embed-bad-image-root",
        (*EMBED, "--data", "{w}/data/dataset.json", "--image-root", "{w}/folder", "--out", "{w}/o"),
        2,
        "--image-root",
        embed=True,
    ),
    Case(
        "embed-missing-image-root",
        (*EMBED, "--data", "{w}/data/dataset.json", "--image-root", "{w}/nope", "--out", "{w}/o"),
        2,
        "--image-root",
        embed=True,
    ),
    Case(
        "embed-duplicate-ids",
        (*EMBED, "--data", "{w}/data/dup.json", "--out", "{w}/o", "--image-root", "{w}/data/images"),
        2,
        "duplicate text id",
        _duplicate_ids,
        embed=True,
    ),
    Case(
        "embed-bad-json-line",
        (*EMBED, "--data", "{w}/data/bad.jsonl", "--out", "{w}/o"),
        2,
        "line 2",
        _bad_json_line,
        embed=True,
    ),
    Case(
        "embed-bad-model",
        ("embed", "--model", "{w}/nope", "--data", "{w}/data/dataset.json", "--out", "{w}/o"),
        2,
        "model",
        embed=True,
    ),
    Case(
        "embed-data-is-failures-output",
        (*EMBED, "--data", "{w}/o/failures.jsonl", "--out", "{w}/o", "--modality", "text"),
        2,
        "is the input --data",
        _data_in_out,
        embed=True,
    ),
    Case(
        "embed-out-file",
        (*EMBED, "--data", "{w}/data/dataset.json", "--out", "{w}/file.txt"),
        2,
        "not a directory",
        _a_file,
        embed=True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_edge(case: Case, base: Path, embed_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = tmp_path / "w"
    shutil.copytree(embed_base if case.embed else base, w, symlinks=True)
    if case.setup is not None:
        case.setup(w)
    before = _snapshot(tmp_path)
    argv = [a.replace("{w}", str(w)) for a in case.argv]
    os.environ["REVISION_NO_PROGRESS"] = "1"
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert code == case.code, f"revision {' '.join(argv)} exited {code}\nstdout: {out}\nstderr: {err}"
    if case.code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1, f"not one line:\n{err}"
        assert lines[0].startswith(f"revision {argv[0]}: error: "), err
        assert case.message in lines[0], err
    else:
        assert case.message in out, out
    assert _snapshot(tmp_path) == before, "files were added, removed or changed"
