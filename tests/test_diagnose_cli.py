"""`revision diagnose` end to end on real feature stores: metrics.json, report.html, errors."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from revision.cli import main
from revision.diagnose import diagnose
from revision.store import FeatureStore, StoreConfig

D = 32


def cone(n: int, axis: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    x = axis + spread * rng.standard_normal((n, D)) * np.linspace(1.5, 0.2, D)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_store(path: Path, vectors: np.ndarray, ids: list[str], modality: str, dtype: str = "float32") -> Path:
    with FeatureStore.create(path, StoreConfig(modality=modality, dim=vectors.shape[1], dtype=dtype)) as st:
        st.append(vectors, ids)
    return path


def realign(t: np.ndarray, i: np.ndarray) -> np.ndarray:
    """ReAlign in float64 numpy, straight from the spec (the demo's aligned input)."""
    u = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    y, x = u(t.astype(np.float64)), u(i.astype(np.float64))
    mt, mi = y.mean(0), x.mean(0)
    h = u(mi + np.sqrt((1 - mi @ mi) / (1 - mt @ mt)) * (y - mt))
    return u(h - h.mean(0) + mi).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("diag")
    a = rng.standard_normal(D)
    b = rng.standard_normal(D)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    n = 600
    latent = rng.standard_normal((n, D)) * np.linspace(1.5, 0.2, D)
    image = (a + 0.4 * latent + 0.1 * rng.standard_normal((n, D))).astype(np.float32)
    text = (b + 0.3 * latent + 0.1 * rng.standard_normal((n, D))).astype(np.float32)
    ids = [f"s{j:05d}" for j in range(n)]
    return {
        "root": root,
        "text": write_store(root / "text.zarr", text, ids, "text"),
        "image": write_store(root / "image.zarr", image, ids, "image"),
        "aligned": write_store(root / "aligned.zarr", realign(text, image), ids, "text"),
        "text_v": text,
        "image_v": image,
        "ids": ids,
    }


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.links: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if tag == "img" and name == "src":
                self.srcs.append(value or "")
            elif name in ("href", "src"):
                self.links.append(value or "")


def unit(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)


def test_cli_writes_metrics_and_a_self_contained_report(corpus: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    rc = main(["diagnose", "--text", str(corpus["text"]), "--image", str(corpus["image"]),
               "--aligned", str(corpus["aligned"]), "--pairs", "--out", str(out), "--quiet"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "centroid gap" in printed and "report:" in printed

    m = json.loads((out / "metrics.json").read_text())
    assert set(m) == {"raw", "aligned"}
    raw, al = m["raw"], m["aligned"]
    # Independent computation in float64 over all rows.
    t, i, a = unit(corpus["text_v"]), unit(corpus["image_v"]), unit(realign(corpus["text_v"], corpus["image_v"]))
    assert abs(raw["centroid_gap"] - np.linalg.norm(i.mean(0) - t.mean(0))) < 1e-3
    d = lambda x, y: (1 - x @ y.T) / 2  # noqa: E731
    off = lambda mm: (mm.sum() - np.trace(mm)) / (len(mm) * (len(mm) - 1))  # noqa: E731
    cross = d(t, i).mean()
    want_rmg = cross / ((off(d(t, t)) + off(d(i, i))) / 2 + cross)
    assert abs(raw["rmg"] - want_rmg) < 1e-3, (raw["rmg"], want_rmg)
    assert abs(al["residual_drift"] - np.linalg.norm(a.mean(0) - i.mean(0))) < 1e-3
    # The gap closes after alignment.
    assert al["centroid_gap"] < 0.1 * raw["centroid_gap"]
    assert raw["linear_separability"] > 0.95 and al["linear_separability"] < raw["linear_separability"]
    assert al["knn_mixing"] > raw["knn_mixing"]
    for key in ("recall_at_1", "recall_at_5", "recall_at_10", "median_rank", "rmg_paired", "spectrum_text"):
        assert key in raw and key in al, key
    assert raw["pairs"]["kind"] == "identity" and raw["rmg_paired_rows"] == 600
    assert raw["sample"] == {"text_rows": 600, "image_rows": 600, "seed": 0}
    assert raw["faiss"]["threads"] >= 1

    page = (out / "report.html").read_text()
    parser = _Images()
    parser.feed(page)
    assert parser.tags[0] == "html" and "table" in parser.tags
    assert len(parser.srcs) >= 3
    for src in parser.srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not parser.links and "<script" not in page and not re.search(r"https?://", page)
    assert "centroid gap went from" in page


def test_pairs_file_recovers_shuffled_pairs_in_a_bf16_store(corpus: dict, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = len(corpus["ids"])
    perm = rng.permutation(n)
    text = corpus["text_v"]
    # Image row perm[j] is a slightly noisy copy of text row j, under another id.
    image = np.empty_like(text)
    image[perm] = text + 0.01 * rng.standard_normal(text.shape).astype(np.float32)
    image_ids = [f"img{j}" for j in range(n)]
    img = write_store(tmp_path / "img_bf16.zarr", image, image_ids, "image", dtype="bfloat16")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("text_id,image_id\n" + "".join(f"{corpus['ids'][j]},img{perm[j]}\n" for j in range(n)))
    m = diagnose(corpus["text"], img, pairs_file=pairs, sample=200, out=None)["raw"]
    assert m["pairs"]["kind"] == "file" and m["pairs"]["sampled"] == 200
    assert m["recall_at_1_t2i"] == 1.0 and m["recall_at_1_i2t"] == 1.0 and m["median_rank"] == 1.0
    assert m["sample"]["text_rows"] == 200


def test_several_aligned_stores_are_keyed_by_name(corpus: dict) -> None:
    m = diagnose(corpus["text"], corpus["image"], aligned={"realign": corpus["aligned"], "same": corpus["text"]},
                 sample=100)  # fmt: skip
    assert list(m) == ["raw", "realign", "same"]
    assert m["same"]["centroid_gap"] == pytest.approx(m["raw"]["centroid_gap"])
    assert m["realign"]["label"] == "realign"


def _run_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_bad_input_is_a_clear_error(corpus: dict, tmp_path: Path, capsys) -> None:
    base = ["diagnose", "--text", str(corpus["text"]), "--out", str(tmp_path / "o"), "--quiet"]
    wide = write_store(tmp_path / "wide.zarr", np.ones((20, D + 1), np.float32), [str(j) for j in range(20)], "image")
    err = _run_error([*base, "--image", str(wide)], capsys)
    assert "different dim" in err and "--text" in err

    err = _run_error([*base, "--image", str(corpus["image"]), "--sample", "601"], capsys)
    assert "--sample 601" in err and "600 rows" in err

    other = write_store(tmp_path / "other.zarr", corpus["image_v"][:50], [f"x{j}" for j in range(50)], "image")
    err = _run_error([*base, "--image", str(other), "--pairs"], capsys)
    assert "--pairs" in err and "none of" in err

    pairs = tmp_path / "nomatch.csv"
    pairs.write_text("text_id,image_id\nnope,nada\nzip,zap\n")
    err = _run_error([*base, "--image", str(corpus["image"]), "--pairs-file", str(pairs)], capsys)
    assert str(pairs) in err and "none of 2" in err

    not_dir = tmp_path / "file.txt"
    not_dir.write_text("x")
    err = _run_error(["diagnose", "--text", str(corpus["text"]), "--image", str(corpus["image"]),
                      "--out", str(not_dir), "--quiet", "--sample", "20"], capsys)  # fmt: skip
    assert "not a folder" in err

    err = _run_error([*base, "--image", str(tmp_path / "missing.zarr")], capsys)
    assert "missing.zarr" in err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_full_spectrum_covers_all_rows(corpus: dict) -> None:
    m = diagnose(corpus["text"], corpus["image"], sample=100, full_spectrum=True)["raw"]
    t = unit(corpus["text_v"])
    want = np.linalg.eigvalsh(np.cov(t, rowvar=False, bias=True))[::-1]
    got = np.asarray(m["spectrum_text"])
    assert m["spectrum_source"] == "all rows"
    assert np.abs(got - want[: len(got)]).max() < 1e-6, np.abs(got - want[: len(got)]).max()
    assert m["anisotropy_text"]["top1_fraction"] == pytest.approx(want[0] / want.sum(), rel=1e-5)
    default = diagnose(corpus["text"], corpus["image"], sample=100)["raw"]
    assert "sample of 100 text" in default["spectrum_source"]
