"""`revision embed` end to end with a tiny random-init CLIP loaded offline through the CLI.

Checks: every readable image and non-empty text becomes a unit row in input order, equal to a
one-item-at-a-time reference; failures are listed; interrupted runs (an exception, a SIGKILL)
resume to byte-identical stores; worker counts do not change bytes; bad input exits 2.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from revision.cli import main
from revision.embed import runner
from revision.embed.encoders import features_of
from revision.embed.tiny import build_tiny_clip, build_tiny_siglip, write_tiny_dataset
from revision.store import FeatureStore

# Small batches and a commit at every group, so a few dozen items make many resumable points.
SMALL = ["--batch-size", "3", "--group-batches", "2", "--commit-seconds", "0", "--workers", "0"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("embed")
    model = build_tiny_clip(root / "model", seed=1)
    data = write_tiny_dataset(root / "data", n_images=14, n_texts=23, seed=2)
    return {"model": model, "data": data, "images": data.parent / "images"}


def _embed(tiny: dict[str, Path], out: Path, *extra: str) -> int:
    argv = ["embed", "--data", str(tiny["data"]), "--image-root", str(tiny["images"]), "--out", str(out)]
    return main([*argv, "--model", str(tiny["model"]), "--no-progress", *extra])


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_tree(a: Path, b: Path) -> None:
    ta, tb = _tree_bytes(a), _tree_bytes(b)
    assert sorted(ta) == sorted(tb), f"file sets differ: {sorted(set(ta) ^ set(tb))}"
    differ = [k for k in ta if ta[k] != tb[k]]
    assert not differ, f"files differ: {differ}"


def assert_rows_close(got: np.ndarray, want: np.ndarray, atol: float) -> None:
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    worst = np.unravel_index(int(diff.argmax()), diff.shape) if diff.size else None
    assert diff.size == 0 or diff.max() <= atol, f"max diff {diff.max():.3g} at {worst}, mean {diff.mean():.3g}"


def _reference_rows(tiny: dict[str, Path], modality: str) -> tuple[list[str], np.ndarray]:
    """The naive path: each good item through the model alone, normalised in float64."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(tiny["model"], local_files_only=True).eval()
    doc = json.loads(tiny["data"].read_text())
    ids, rows = [], []
    with torch.inference_mode():
        if modality == "image":
            proc = AutoImageProcessor.from_pretrained(tiny["model"], local_files_only=True)
            for item in doc["images"]:
                path = tiny["images"] / item["image"]
                try:
                    image = Image.open(path).convert("RGB")
                except Exception:  # noqa: BLE001 - the broken items the run must report
                    continue
                px = proc(images=[image], return_tensors="pt")["pixel_values"]
                rows.append(features_of(model.get_image_features(pixel_values=px), "image")[0])
                ids.append(item["id"])
        else:
            tok = AutoTokenizer.from_pretrained(tiny["model"], local_files_only=True)
            for item in doc["texts"]:
                if not item["text"].strip():
                    continue
                enc = tok([item["text"]], truncation=True, return_tensors="pt")
                rows.append(features_of(model.get_text_features(**enc), "text")[0])
                ids.append(item["id"])
    mat = torch.stack(rows).double().numpy()
    return ids, mat / np.linalg.norm(mat, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def clean(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "out"
    assert _embed(tiny, out, *SMALL) == 0
    return out


@pytest.mark.parametrize("modality", ["image", "text"])
def test_rows_are_unit_and_match_one_at_a_time_reference(tiny: dict[str, Path], clean: Path, modality: str) -> None:
    store = FeatureStore.open(clean / f"{modality}.zarr")
    ref_ids, ref = _reference_rows(tiny, modality)
    got = store.read().astype(np.float32)
    assert list(store.read_ids()) == ref_ids
    assert store.dtype == "float16" and store.normalized
    norms = np.linalg.norm(got.astype(np.float64), axis=1)
    assert np.abs(norms - 1).max() < 2e-3, f"norms off by {np.abs(norms - 1).max():.3g}"
    assert_rows_close(got, ref, atol=2e-3)  # fp16 storage; batching and padding change nothing more
    # The check bites: rows written in batch (length-sorted) order instead of input order fail it.
    with pytest.raises(AssertionError):
        assert_rows_close(got[::-1], ref, atol=2e-3)
    assert store.config.encoder and str(tiny["model"]) in store.config.encoder
    embed = store.attrs["embed"]
    assert embed["encoder"]["name"] == str(tiny["model"]) and embed["encoder"]["revision"].startswith("sha256:")


def test_failures_are_listed_and_counted(clean: Path) -> None:
    records = [json.loads(line) for line in (clean / "failures.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in records}
    assert set(by_id) == {"img_corrupt", "img_missing", "txt_empty"}
    assert by_id["img_corrupt"]["reason"].startswith("unreadable image")
    assert by_id["img_missing"]["reason"].startswith("missing file")
    assert by_id["txt_empty"]["reason"] == "empty text"
    assert FeatureStore.open(clean / "image.zarr").progress["failed"] == 2
    assert FeatureStore.open(clean / "text.zarr").rows == 23


def test_workers_do_not_change_bytes(tiny: dict[str, Path], clean: Path, tmp_path: Path) -> None:
    out = tmp_path / "w2"
    assert _embed(tiny, out, *SMALL, "--workers", "2") == 0
    assert_same_tree(clean, out)


def test_rerun_of_a_finished_run_changes_nothing(tiny: dict[str, Path], clean: Path) -> None:
    before = _tree_bytes(clean)
    assert _embed(tiny, clean, *SMALL) == 0
    assert _tree_bytes(clean) == before


@pytest.mark.parametrize(("crash_at", "modality"), [(2, "image"), (5, "text")])
def test_resume_after_exception_equals_clean(
    tiny: dict[str, Path], clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: int, modality: str
) -> None:
    out = tmp_path / "crash"
    real = runner._ModalityWriter.commit
    calls = {"n": 0}

    def crashing_commit(self: Any, next_item: int, stop: int) -> None:
        calls["n"] += 1
        # Images: 16 items = 3 groups of 6, then texts: 24 items = 4 groups.
        if calls["n"] == crash_at:
            # Rows of the group being committed are appended, failures logged: both must be undone.
            raise RuntimeError("simulated crash")
        real(self, next_item, stop)

    monkeypatch.setattr(runner._ModalityWriter, "commit", crashing_commit)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _embed(tiny, out, *SMALL)
    partial = FeatureStore.open(out / f"{modality}.zarr")
    assert 0 < partial.rows < partial.attrs["embed"]["items_total"] and not partial.progress["done"]
    monkeypatch.setattr(runner._ModalityWriter, "commit", real)
    assert _embed(tiny, out, *SMALL) == 0
    assert_same_tree(clean, out)


@pytest.mark.slow  # ~10-20 s: a fresh interpreter loads torch + transformers; the in-process crash tests stay fast
def test_sigkill_then_resume_equals_clean(tiny: dict[str, Path], tmp_path: Path) -> None:
    # Many one-item commits make the run last long enough to be killed in the middle of the texts.
    args = [*SMALL, "--batch-size", "1", "--group-batches", "1", "--modality", "text"]
    ref = tmp_path / "ref"
    assert _embed(tiny, ref, *args) == 0
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "revision", "embed", "--data", str(tiny["data"]), "--out", str(out)]
    cmd += ["--model", str(tiny["model"]), "--no-progress", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    meta = out / "text.zarr" / "zarr.json"
    deadline = time.monotonic() + 60
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            progress = json.loads(meta.read_text())["attributes"]["revision"]["progress"]
        except (OSError, ValueError, KeyError, TypeError):
            progress = None
        if progress and progress["next_item"] >= 3:
            proc.send_signal(signal.SIGKILL)
            killed_at = progress["next_item"]
            break
        time.sleep(0.005)
    proc.wait()
    assert killed_at is not None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-400:]}"
    assert FeatureStore.open(out / "text.zarr").rows < 23, "killed too late to test resuming"
    assert _embed(tiny, out, *args) == 0
    assert_same_tree(ref, out)


def test_duplicate_ids_exit_2(tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(tiny["data"].read_text())
    doc["texts"].append(dict(doc["texts"][3]))
    data = tmp_path / "dup.json"
    data.write_text(json.dumps(doc))
    code = main(["embed", "--data", str(data), "--out", str(tmp_path / "o"), "--model", str(tiny["model"])])
    assert code == 2
    assert "duplicate text id 'txt_00003'" in capsys.readouterr().err
    assert not (tmp_path / "o" / "text.zarr").exists()


def test_resume_with_other_settings_exit_2(
    tiny: dict[str, Path], clean: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _embed(tiny, clean, *SMALL, "--batch-size", "4") == 2
    assert "batch_size" in capsys.readouterr().err


def test_missing_model_and_llm2clip_messages(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["embed", "--data", str(tiny["data"]), "--image-root", str(tiny["images"]), "--out", str(tmp_path / "o")]
    assert main([*base, "--model", str(tmp_path / "no-such-model")]) == 2
    assert "cannot load model" in capsys.readouterr().err
    assert main([*base, "--modality", "text"]) == 2
    assert "--text-model" in capsys.readouterr().err
    try:
        import llm2vec  # noqa: F401
    except ImportError:
        args = [*base, "--encoder", "llm2clip", "--image-model", str(tiny["model"]), "--text-model", "x"]
        assert main(args) == 2
        assert "llm2vec" in capsys.readouterr().err


def test_jsonl_text_only_run(tiny: dict[str, Path], tmp_path: Path) -> None:
    doc = json.loads(tiny["data"].read_text())
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(t) + "\n" for t in doc["texts"]))
    out = tmp_path / "o"
    assert main(["embed", "--data", str(data), "--out", str(out), "--model", str(tiny["model"]),
                 "--modality", "text", "--no-progress", "--workers", "0", "--store-dtype", "float32"]) == 0  # fmt: skip
    store = FeatureStore.open(out / "text.zarr")
    assert store.rows == 23 and store.dtype == "float32" and not (out / "image.zarr").exists()
    _, ref = _reference_rows(tiny, "text")
    assert_rows_close(store.read(), ref, atol=1e-5)


def test_features_of_tensor_and_output_object() -> None:
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    t = torch.randn(3, 4)
    assert features_of(t, "image") is t
    assert features_of(BaseModelOutputWithPooling(last_hidden_state=torch.zeros(3, 5, 8), pooler_output=t), "text") is t


def test_wrong_image_root_exit_2(tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Without --image-root the paths resolve against the folder of dataset.json, where they are not.
    code = main(["embed", "--data", str(tiny["data"]), "--out", str(tmp_path / "o"), "--model", str(tiny["model"]),
                 "--modality", "image", "--no-progress", "--workers", "0"])  # fmt: skip
    assert code == 2
    assert "--image-root: none of the first" in capsys.readouterr().err


def test_siglip_pads_to_max_length(tiny: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    model_dir = build_tiny_siglip(tmp_path / "siglip", seed=5)
    out = tmp_path / "o"
    assert (
        _embed({**tiny, "model": model_dir}, out, "--batch-size", "4", "--workers", "0", "--store-dtype", "float32")
        == 0
    )
    store = FeatureStore.open(out / "text.zarr")
    assert FeatureStore.open(out / "image.zarr").rows == 14
    model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    texts = [t["text"] for t in json.loads(tiny["data"].read_text())["texts"] if t["text"].strip()]

    def per_item(padding: str) -> np.ndarray:
        with torch.inference_mode():
            rows = [
                features_of(
                    model.get_text_features(**tok([t], padding=padding, truncation=True, return_tensors="pt")), "text"
                )[0]
                for t in texts
            ]
        mat = torch.stack(rows).double().numpy()
        return mat / np.linalg.norm(mat, axis=1, keepdims=True)

    # SigLIP pools the last position: only max_length padding gives the trained behaviour.
    assert_rows_close(store.read(), per_item("max_length"), atol=1e-5)
    with pytest.raises(AssertionError):
        assert_rows_close(store.read(), per_item("longest"), atol=1e-5)


def test_lost_failure_log_refuses_to_resume(
    tiny: dict[str, Path], clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(clean, out)
    shutil.rmtree(out / ".failures")
    assert _embed(tiny, out, *SMALL) == 2
    assert "failure log was deleted" in capsys.readouterr().err


def test_commit_pacing_changes_no_bytes(
    tiny: dict[str, Path], clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = runner._ModalityWriter.commit
    calls: list[int] = []

    def counting_commit(self: Any, next_item: int, stop: int) -> None:
        calls.append(next_item)
        real(self, next_item, stop)

    monkeypatch.setattr(runner._ModalityWriter, "commit", counting_commit)
    out = tmp_path / "paced"
    assert _embed(tiny, out, *SMALL, "--commit-seconds", "3600") == 0
    assert calls == [16, 24], f"only the end of each slice should commit within an hour, got {calls}"
    assert_same_tree(clean, out)
