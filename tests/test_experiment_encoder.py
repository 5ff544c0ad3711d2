"""The world's dual encoder: it trains, saves like a downloaded CLIP, embeds through `revision embed`,
is deterministic, and its loss and positives mean what they say. Tiny configs only (seconds)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from revision.embed.config import EmbedConfig
from revision.embed.runner import run_embed
from revision.errors import UserError
from revision.experiment import contrastive
from revision.experiment.encoder import EncoderConfig, build_tokenizer, train_encoder
from revision.experiment.world import Scene, render, sample_scenes, write_split
from revision.store import FeatureStore

TINY = EncoderConfig(pairs=96, steps=4, batch_size=16, dim=16, hidden=32, layers=1, heads=2, patch=8, eval_pairs=40)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("enc") / "model"
    return out, train_encoder(TINY, out)


def test_tiny_encoder_trains_saves_and_loads_offline(trained: tuple[Path, dict]) -> None:
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    out, record = trained
    assert json.loads((out / "encoder.json").read_text()) == record
    assert record["config"]["steps"] == 4 and np.isfinite(record["final_loss"])
    checks = record["held_out"]
    assert set(checks["attribute_probe"]) == {"count", "size", "colour", "shape", "position"}
    assert 0.0 <= checks["text_to_image_top1"] <= 1.0
    model = AutoModel.from_pretrained(out, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    proc = AutoImageProcessor.from_pretrained(out, local_files_only=True)
    # The temperature was fixed, so the saved logit scale is still 1 / temperature.
    assert float(model.logit_scale.detach().exp()) == pytest.approx(1 / TINY.temperature, rel=1e-5)
    # Every text ends in </s>, where CLIP's text tower pools; unknown words become <unk>, not errors.
    enc = tok(["two small red circles at the top left", "zebra"], padding=True)
    assert [ids[-1] for ids in enc["input_ids"][:1]] == [tok.eos_token_id]
    assert enc["input_ids"][1][:3] == [tok.bos_token_id, tok.unk_token_id, tok.eos_token_id]
    assert model.config.text_config.eos_token_id == tok.eos_token_id != 2
    # Training fed the model exactly what the saved processor produces from the same images.
    scenes = sample_scenes(3, seed=0)
    images = [render(s, i) for i, s in enumerate(scenes)]
    u8 = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2)
    got = torch.as_tensor(np.asarray(proc(images=images, return_tensors="pt")["pixel_values"]))
    torch.testing.assert_close(got, contrastive.normalise_pixels(u8), atol=1e-5, rtol=1e-5)


def test_run_embed_writes_stores_from_the_saved_encoder(trained: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = trained
    data = write_split(sample_scenes(20, seed=2), tmp_path / "world", "test", seed=2, partial_rate=0.5)
    cfg = EmbedConfig(data=data, out=tmp_path / "feats", model=str(out), workers=0, device="cpu", progress=False)
    run_embed(cfg)
    image = FeatureStore.open(tmp_path / "feats" / "image.zarr")
    text = FeatureStore.open(tmp_path / "feats" / "text.zarr")
    assert image.rows == text.rows == 20 and image.dim == TINY.dim
    # The stored rows are the model's own features of those images (unit, float16 storage).
    model = __import__("transformers").AutoModel.from_pretrained(out, local_files_only=True).eval()
    u8 = contrastive.render_pixels(sample_scenes(20, seed=2), 2, TINY.px)
    with torch.no_grad():
        want = contrastive.image_features(model, u8).numpy()
    np.testing.assert_allclose(np.asarray(image.read(), dtype=np.float32), want, atol=3e-3)


def test_same_config_same_weights_and_a_finished_run_is_not_redone(trained: tuple[Path, dict], tmp_path: Path) -> None:
    out, record = trained
    again = train_encoder(TINY, tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    assert again["held_out"] == record["held_out"]
    # Asking again for the same config returns the record without touching the folder.
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert train_encoder(TINY, out) == record
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    other = train_encoder(replace(TINY, seed=1, steps=1), tmp_path / "other")
    assert (tmp_path / "other" / "model.safetensors").read_bytes() != (out / "model.safetensors").read_bytes()
    assert other["config"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "other"]  # no temp folders left


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"patch": 5}, "patch"),
        ({"heads": 3}, "heads"),
        ({"temperature": 0.0}, "temperature"),
        ({"partial_rate": 1.5}, "partial_rate"),
        ({"batch_size": 1000}, "batch_size"),
        ({"positives": "all"}, "positives"),
        ({"px": 8}, "px"),
    ],
)
def test_config_errors_name_the_field(change: dict, field: str) -> None:
    with pytest.raises(UserError, match=f"EncoderConfig.{field}"):
        replace(TINY, **change)


def test_clip_loss_prefers_matched_pairs_and_positives_generalise_it() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=-1)
    shuffled = img[torch.randperm(8, generator=g)]
    assert contrastive.clip_loss(img, img, 0.07) < contrastive.clip_loss(img, shuffled, 0.07)
    # Identity positives are CLIP's loss exactly.
    eye = torch.eye(8, dtype=torch.bool)
    torch.testing.assert_close(
        contrastive.clip_loss(img, shuffled, 0.07, eye), contrastive.clip_loss(img, shuffled, 0.07)
    )


def test_true_of_marks_every_scene_a_caption_describes() -> None:
    scenes = [
        Scene("one", "small", "red", "circle", "center"),
        Scene("two", "small", "red", "cross", "center"),
        Scene("one", "large", "blue", "circle", "top left"),
    ]
    texts = ["one small red circle in the center", "red shapes", "a picture of circles", "zebra"]
    got = contrastive.true_of(texts, scenes)
    want = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1], [1, 1, 1]], dtype=torch.bool)
    assert torch.equal(got, want)


def test_tokenizer_covers_every_caption_word() -> None:
    tok = build_tokenizer()
    rng = np.random.default_rng(0)
    from revision.experiment.world import caption

    for s in sample_scenes(200, seed=0):
        for partial in (False, True):
            ids = tok(caption(s, rng, partial=partial))["input_ids"]
            assert tok.unk_token_id not in ids
