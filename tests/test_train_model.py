"""The ReVision model: projector kinds, the <image> splice, labels and masks, K visual tokens, templates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from revision.train import DataError
from revision.train.model import (
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    VisionLM,
    build_projector,
    load_llm,
    splice,
)
from revision.train.template import Template
from revision.train.tiny import build_tiny_llm

PHRASES = ["a red cat sits on the mat", "a blue dog runs", "Describe the image briefly .", "USER : ASSISTANT"]
CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    path = build_tiny_llm(tmp_path_factory.mktemp("llm"), PHRASES)
    return load_llm(path)


def ids_of(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def test_projector_kinds() -> None:
    assert [type(m).__name__ for m in build_projector("linear", 8, 16)] == ["Linear"]
    assert [type(m).__name__ for m in build_projector("mlp2x_gelu", 8, 16)] == ["Linear", "GELU", "Linear"]
    mlp3 = build_projector("mlp3x_gelu", 8, 16)
    assert [type(m).__name__ for m in mlp3] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    assert mlp3[0].in_features == 8 and mlp3[-1].out_features == 16
    for bad in ("mlp", "mlp0x_gelu", "conv"):
        with pytest.raises(DataError, match="--projector"):
            build_projector(bad, 8, 16)


def test_plain_template_labels_exact(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    t = Template(tok, "plain")
    cap = ids_of(tok, "a red cat")
    bos, eos = tok.bos_token_id, tok.eos_token_id
    assert t.encode({"caption": "a red cat"}) == ([bos, IMAGE_TOKEN_INDEX, *cap, eos], [-100, -100, *cap, eos])
    conv = {"conversations": [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "a red cat"}]}
    assert t.encode(conv) == t.encode({"caption": "a red cat"})
    assert t.prompt_ids() == [bos, IMAGE_TOKEN_INDEX]


def test_conversation_fallback_labels_exact(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    t = Template(tok, "conversation")
    assert not t.chat
    rec = {
        "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image briefly."},
            {"from": "gpt", "value": "a red cat"},
            {"from": "human", "value": "the dog ?"},
            {"from": "gpt", "value": "a blue dog"},
        ]
    }
    ids, labels = t.encode(rec)
    user1 = [*ids_of(tok, "USER: "), IMAGE_TOKEN_INDEX, *ids_of(tok, "\nDescribe the image briefly.\n")]
    a1, a2 = [*ids_of(tok, "a red cat"), tok.eos_token_id], [*ids_of(tok, "a blue dog"), tok.eos_token_id]
    head, nl = ids_of(tok, "ASSISTANT: "), ids_of(tok, "\n")
    user2 = ids_of(tok, "USER: the dog ?\n")
    want_ids = [tok.bos_token_id, *user1, *head, *a1, *nl, *user2, *head, *a2, *nl]
    ign = IGNORE_INDEX
    want_labels = [ign] * (1 + len(user1) + len(head)) + a1 + [ign] * (len(nl) + len(user2) + len(head)) + a2
    want_labels += [ign] * len(nl)
    assert ids == want_ids
    assert labels == want_labels


def test_conversation_chat_template_labels(tmp_path: Path) -> None:
    _, tok = load_llm(build_tiny_llm(tmp_path / "chat", [*PHRASES, "<|user|> <|assistant|>"], chat_template=CHAT))
    t = Template(tok, "conversation")
    assert t.chat
    rec = {"conversations": [{"from": "human", "value": "<image> hi"}, {"from": "gpt", "value": "a red cat"}]}
    ids, labels = t.encode(rec)
    # Only the assistant's reply and the template's closing </s> carry the loss.
    learned = [i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
    assert learned == [*ids_of(tok, "a red cat"), tok.eos_token_id]
    assert [lab for lab in labels if lab != IGNORE_INDEX] == learned
    assert ids.count(IMAGE_TOKEN_INDEX) == 1
    assert t.prompt_ids("<image> hi")[-1] == ids_of(tok, "<|assistant|>")[0]


@pytest.mark.parametrize(
    ("value", "count"),
    [("no placeholder", 0), ("<image> and <image>", 2)],
)
def test_image_placeholder_count(tiny: tuple[Any, Any], value: str, count: int) -> None:
    _, tok = tiny
    rec = {"conversations": [{"from": "human", "value": value}, {"from": "gpt", "value": "a red cat"}]}
    for kind in ("plain", "conversation"):
        with pytest.raises(DataError, match=f"rec 7: {count} '<image>' placeholders, expected exactly one"):
            Template(tok, kind).pieces(rec, "rec 7")


@pytest.mark.parametrize("k", [1, 3, 576])
def test_splice_positions_masks_labels(k: int) -> None:
    b, seq, h = 3, 6, 4
    ids = torch.tensor([[1, -200, 5, 6, 2, 0], [1, 7, -200, 8, 2, 0], [-200, 9, 9, 9, 9, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    labels = torch.where(ids < 0, torch.tensor(-100), ids)
    tok = torch.randn(b, seq, h)
    vis = torch.randn(b, h)
    emb, m2, lab2 = splice(tok, ids, mask, labels, vis, k)
    assert emb.shape == (b, seq + k - 1, h)
    for r in range(b):
        p = int((ids[r] == -200).nonzero())
        want = torch.cat([tok[r, :p], vis[r].expand(k, h), tok[r, p + 1 :]])
        torch.testing.assert_close(emb[r], want, rtol=0, atol=0)
        assert m2[r].tolist() == mask[r, :p].tolist() + [1] * k + mask[r, p + 1 :].tolist()
        assert lab2 is not None
        assert lab2[r].tolist() == labels[r, :p].tolist() + [-100] * k + labels[r, p + 1 :].tolist()
    with pytest.raises(ValueError, match="row 0 of the batch has 2 image placeholders"):
        splice(tok, torch.tensor([[-200, -200, 1, 1, 1, 1]] * 3), mask, labels, vis, k)


def test_576_expansion_equals_reference_repeat(tiny: tuple[Any, Any]) -> None:
    """Projecting once and expanding gives the reference's input (576 copies projected) and loss."""
    llm, tok = tiny
    torch.manual_seed(0)
    model = VisionLM(llm, build_projector("mlp2x_gelu", 24, llm.config.hidden_size), visual_tokens=576)
    t = Template(tok, "plain")
    batch = t.collate([t.encode({"caption": "a red cat"}), t.encode({"caption": "a blue dog runs on the mat"})])
    x = torch.randn(2, 24)
    ours = model.inputs(x, **batch)
    ref = model.inputs(x, **batch, repeat_first=True)
    for a, b in zip(ours, ref, strict=True):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert ours[0].shape[1] == batch["input_ids"].shape[1] + 575
    with torch.no_grad():
        loss_ours = model(x, **batch).loss
        loss_ref = model(x, **batch, repeat_first=True).loss
    torch.testing.assert_close(loss_ours, loss_ref)
    # A deliberately wrong splice (the vector of the other sample) must be caught by this comparison.
    wrong = model.inputs(x.flip(0), **batch)[0]
    assert (wrong - ref[0]).abs().max() > 1e-3


def test_not_a_causal_lm(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(cfg).save_pretrained(tmp_path / "bert")
    with pytest.raises(DataError, match=r"--llm .*bert: model type 'bert' \(BertModel\) is not a causal LM"):
        load_llm(tmp_path / "bert")
    with pytest.raises(DataError, match="no config.json"):
        load_llm(tmp_path)
