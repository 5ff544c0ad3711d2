"""Contrastive training of the world's dual encoder and the held-out checks of what it learned.

The loop is CLIP's: a batch of (image, caption) pairs, both towers' projected features on the unit
sphere, the symmetric InfoNCE loss at a fixed temperature. Captions are drawn afresh every step
(a full phrasing, or partial alt-text with probability `partial_rate`), so the text tower sees every
phrasing of a scene. The checks embed held-out pairs (new renders, full captions) and measure
text→image retrieval, a linear probe per attribute on the image features, and the modality gap.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from revision.embed.encoders import features_of
from revision.experiment.world import ATTRIBUTES, VALUES, Scene, caption, item_seed, parse_caption, render

# CLIP's pixel statistics: the saved CLIPImageProcessor normalises with them, so training must too.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def render_pixels(scenes: Sequence[Scene], seed: int, px: int) -> torch.Tensor:
    """(n, 3, px, px) uint8 renders of `scenes`, item i jittered by `item_seed(seed, i)` as in a split."""
    out = np.empty((len(scenes), px, px, 3), dtype=np.uint8)
    for i, scene in enumerate(scenes):
        out[i] = np.asarray(render(scene, item_seed(seed, i), px))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def normalise_pixels(u8: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 3, h, w) → the float pixel_values the saved image processor gives for the same images."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (u8.float() * (1.0 / 255.0) - mean) / std


def image_features(model: Any, u8: torch.Tensor) -> torch.Tensor:
    """Unit-norm image features of uint8 pixels (one forward pass)."""
    return F.normalize(features_of(model.get_image_features(pixel_values=normalise_pixels(u8)), "image"), dim=-1)


def text_features(model: Any, tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """Unit-norm text features of `texts` (one forward pass, padded to the longest)."""
    enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    out = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    return F.normalize(features_of(out, "text"), dim=-1)


def clip_loss(
    img: torch.Tensor, txt: torch.Tensor, temperature: float, positives: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE of unit rows `img`, `txt` (n, d), row i of each being a pair.

    positives: optional (n_text, n_image) bool, True where a caption is true of an image (the pair
    always is); each direction's target is then spread evenly over the true matches instead of the
    pair alone, so "red shapes" is not pushed away from every other red image in the batch.
    """
    logits = txt @ img.T / temperature
    if positives is None:
        target = torch.arange(img.shape[0])
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    pos = positives.float()
    t2i = pos / pos.sum(1, keepdim=True)
    i2t = pos.T / pos.T.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, t2i) + F.cross_entropy(logits.T, i2t))


def true_of(texts: Sequence[str], scenes: Sequence[Scene]) -> torch.Tensor:
    """(n_text, n_scene) bool: every attribute text t names has scene s's value (unnamed ones match)."""
    out = torch.ones(len(texts), len(scenes), dtype=torch.bool)
    parsed = [parse_caption(t) for t in texts]
    for a in ATTRIBUTES:
        named = torch.tensor([VALUES[a].index(v) if (v := p[a]) is not None else -1 for p in parsed])
        have = labels(scenes, a)
        out &= (named[:, None] == -1) | (named[:, None] == have[None, :])
    return out


def draw_captions(scenes: Sequence[Scene], rng: np.random.Generator, partial_rate: float) -> list[str]:
    """One caption per scene: partial alt-text with probability `partial_rate`, else a full phrasing."""
    return [caption(s, rng, partial=bool(rng.random() < partial_rate)) for s in scenes]


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak`, then a cosine decay to 0 at `steps`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * t))


def train_loop(
    model: Any,
    tokenizer: Any,
    pixels: torch.Tensor,
    scenes: Sequence[Scene],
    *,
    seed: int,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    temperature: float,
    partial_rate: float,
    positives: str = "pair",
    log: Callable[[str], None] | None = None,
) -> list[float]:
    """Train `model` in place; returns the loss of every step. Batches are epoch-wise shuffles."""
    params = [p for p in model.parameters() if p.requires_grad]
    # No weight decay on norms, biases and embeddings' 1-d parameters (the usual AdamW split).
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
    )
    rng = np.random.default_rng([seed, 0xC11])
    n = pixels.shape[0]
    order = rng.permutation(n)
    cursor = 0
    warmup = max(1, steps // 20)
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        if cursor + batch_size > n:
            order, cursor = rng.permutation(n), 0
        idx = order[cursor : cursor + batch_size]
        cursor += batch_size
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        batch_scenes = [scenes[i] for i in idx]
        texts = draw_captions(batch_scenes, rng, partial_rate)
        pos = true_of(texts, batch_scenes) if positives == "consistent" else None
        img, txt = image_features(model, pixels[idx]), text_features(model, tokenizer, texts)
        loss = clip_loss(img, txt, temperature, pos)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if log is not None and (step % 50 == 0 or step == steps - 1):
            log(f"step {step + 1}/{steps}  loss {losses[-1]:.3f}  {time.perf_counter() - start:.0f} s")
    model.eval()
    return losses


@torch.no_grad()
def embed_images(model: Any, pixels: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Unit image features of all `pixels`, batch by batch."""
    return torch.cat([image_features(model, pixels[i : i + batch]) for i in range(0, pixels.shape[0], batch)])


@torch.no_grad()
def embed_texts(model: Any, tokenizer: Any, texts: list[str], batch: int = 512) -> torch.Tensor:
    """Unit text features of all `texts`, batch by batch."""
    return torch.cat([text_features(model, tokenizer, texts[i : i + batch]) for i in range(0, len(texts), batch)])


def probe_accuracy(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor) -> float:
    """Held-out accuracy of a multinomial logistic regression (L-BFGS, light L2) from features to labels."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    xtr, xte = (x_train - mu) / sd, (x_test - mu) / sd
    classes = int(max(int(y_train.max()), int(y_test.max())) + 1)
    w = torch.zeros(xtr.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ w + b, y_train) + 1e-3 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((xte @ w + b).argmax(1) == y_test).float().mean())


def labels(scenes: Sequence[Scene], attribute: str) -> torch.Tensor:
    """Class index of each scene's value of `attribute`."""
    return torch.tensor([VALUES[attribute].index(getattr(s, attribute)) for s in scenes])


def evaluate(
    model: Any,
    tokenizer: Any,
    *,
    probe_pixels: torch.Tensor,
    probe_scenes: Sequence[Scene],
    test_pixels: torch.Tensor,
    test_scenes: Sequence[Scene],
    seed: int,
) -> dict[str, Any]:
    """Held-out checks: text→image retrieval with full captions, attribute probes, the gap.

    Probes are fitted on image features of training renders (`probe_*`) and scored on the held-out
    renders. Retrieval counts a hit when the retrieved image shows the caption's scene (a scene
    recurs among held-out images, so "the paired image" alone would undercount); `chance` is the
    mean share of held-out images that show the caption's scene.
    """
    model.eval()
    rng = np.random.default_rng([seed, 0xE7A1])
    texts = [caption(s, rng) for s in test_scenes]
    img = embed_images(model, test_pixels)
    txt = embed_texts(model, tokenizer, texts)
    ids = torch.tensor([s.index() for s in test_scenes])
    same = ids[:, None] == ids[None, :]
    sims = txt @ img.T
    t2i = float(same[torch.arange(len(ids)), sims.argmax(1)].float().mean())
    i2t = float(same[sims.argmax(0), torch.arange(len(ids))].float().mean())
    train_img = embed_images(model, probe_pixels)
    probes = {a: probe_accuracy(train_img, labels(probe_scenes, a), img, labels(test_scenes, a)) for a in ATTRIBUTES}
    return {
        "held_out_pairs": len(test_scenes),
        "text_to_image_top1": t2i,
        "image_to_text_top1": i2t,
        "retrieval_chance": float(same.float().mean()),
        "attribute_probe": probes,
        "attribute_probe_min": min(probes.values()),
        "centroid_gap": float((img.mean(0) - txt.mean(0)).norm()),
        "paired_cosine": float((img * txt).sum(1).mean()),
    }
