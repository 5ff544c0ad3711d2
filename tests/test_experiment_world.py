"""The built-in world: determinism, coverage, caption parsing, and the split layout on disk."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from revision.embed.sources import DatasetSource
from revision.experiment import world
from revision.experiment.world import (
    ATTRIBUTES,
    VALUES,
    Scene,
    canonical_caption,
    caption,
    parse_caption,
    render,
    sample_scenes,
    write_split,
)


def _png(scene: Scene, seed: int) -> bytes:
    buf = io.BytesIO()
    render(scene, seed).save(buf, format="PNG")
    return buf.getvalue()


def test_sampling_is_deterministic_and_covers_every_value() -> None:
    a, b = sample_scenes(600, seed=3), sample_scenes(600, seed=3)
    assert a == b
    assert a != sample_scenes(600, seed=4)
    for attr in ATTRIBUTES:
        seen = {getattr(s, attr) for s in a}
        assert seen == set(VALUES[attr]), attr
    # Uniform: no value of any attribute is far from its share.
    for attr in ATTRIBUTES:
        counts = [sum(getattr(s, attr) == v for s in a) for v in VALUES[attr]]
        share = 600 / len(VALUES[attr])
        assert min(counts) > 0.6 * share and max(counts) < 1.4 * share, (attr, counts)


def test_render_is_deterministic_and_jittered() -> None:
    scene = Scene("three", "large", "blue", "triangle", "top left")
    assert _png(scene, 7) == _png(scene, 7)
    assert _png(scene, 7) != _png(scene, 8)
    img = render(scene, 7, px=48)
    assert img.mode == "RGB" and img.size == (48, 48)


def test_render_draws_the_colour_in_the_named_region() -> None:
    # The coloured pixels sit in the named quadrant and have the named colour's dominant channel.
    cases = {
        ("red", "top left"): (0, slice(0, 16), slice(0, 16)),
        ("green", "bottom right"): (1, slice(16, 32), slice(16, 32)),
        ("blue", "top right"): (2, slice(0, 16), slice(16, 32)),
    }
    for (colour, position), (channel, rows, cols) in cases.items():
        for seed in range(5):
            a = np.asarray(render(Scene("one", "large", colour, "cross", position), seed), dtype=np.int32)
            others = np.delete(a, channel, axis=-1).mean(axis=-1)
            strength = a[..., channel] - others
            mask = strength > 40
            assert mask.sum() > 10, (colour, position, seed)
            inside = mask[rows, cols].sum()
            assert inside >= 0.9 * mask.sum(), (colour, position, seed, inside, mask.sum())


def test_sizes_and_counts_change_the_drawn_area() -> None:
    def area(scene: Scene) -> float:
        a = np.asarray(render(scene, 0), dtype=np.int32)
        return float(((a[..., 0] - a[..., 1:].max(axis=-1)) > 60).sum())

    small = area(Scene("one", "small", "red", "circle", "center"))
    large = area(Scene("one", "large", "red", "circle", "center"))
    three = area(Scene("three", "large", "red", "circle", "center"))
    assert large > 1.5 * small
    assert three > 2.2 * large


@pytest.mark.parametrize("phrasing", range(world.FULL_PHRASINGS))
def test_every_full_phrasing_parses_back(phrasing: int) -> None:
    rng = np.random.default_rng(phrasing)
    for scene in world.all_scenes():
        text = caption(scene, rng, phrasing=phrasing)
        assert parse_caption(text) == scene.attributes(), text


def test_canonical_caption_is_fixed_and_parses() -> None:
    scene = Scene("two", "small", "red", "circle", "top left")
    assert canonical_caption(scene) == "two small red circles at the top left"
    assert canonical_caption(Scene("one", "large", "blue", "cross", "center")) == "one large blue cross in the center"
    for s in world.all_scenes():
        assert parse_caption(canonical_caption(s)) == s.attributes()


def test_partial_captions_parse_present_attributes_and_none_for_omitted() -> None:
    rng = np.random.default_rng(0)
    omitted_any = {a: 0 for a in ATTRIBUTES}
    for scene in sample_scenes(800, seed=1):
        text = caption(scene, rng, partial=True)
        parsed = parse_caption(text)
        present = [a for a in ATTRIBUTES if parsed[a] is not None]
        assert 1 <= len(present) < len(ATTRIBUTES), text
        for a in ATTRIBUTES:
            if parsed[a] is None:
                omitted_any[a] += 1
            else:
                assert parsed[a] == getattr(scene, a), (text, a)
    assert all(n > 50 for n in omitted_any.values()), omitted_any


def test_full_captions_vary_across_draws() -> None:
    rng = np.random.default_rng(0)
    scene = Scene("two", "small", "red", "circle", "top left")
    assert len({caption(scene, rng) for _ in range(200)}) == world.FULL_PHRASINGS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", dict.fromkeys(ATTRIBUTES)),
        ("¿§ 12 <unk> \x00", dict.fromkeys(ATTRIBUTES)),
        (
            "Two SMALL red Circle, at the TOP-left!",
            {"count": "two", "size": "small", "colour": "red", "shape": "circle", "position": "top left"},
        ),
        (
            "three three big blue crosses crosses",
            {"count": "three", "size": None, "colour": "blue", "shape": "cross", "position": None},
        ),
        (
            "red and green triangles at the top",
            {"count": None, "size": None, "colour": None, "shape": "triangle", "position": None},
        ),
        (
            "one circle top left bottom",
            {"count": "one", "size": None, "colour": None, "shape": "circle", "position": None},
        ),
        (
            "a small cross in the middle",
            {"count": None, "size": "small", "colour": None, "shape": "cross", "position": "center"},
        ),
    ],
)
def test_parse_is_robust_to_captioner_output(text: str, expected: dict[str, str | None]) -> None:
    assert parse_caption(text) == expected


def test_scene_rejects_unknown_values() -> None:
    with pytest.raises(ValueError, match="Scene.colour"):
        Scene("one", "small", "mauve", "circle", "center")


def test_write_split_layout_loads_as_a_seed_dataset(tmp_path: Path) -> None:
    scenes = sample_scenes(12, seed=5)
    path = write_split(scenes, tmp_path, "train", seed=9, partial_rate=0.5)
    assert path == tmp_path / "train" / "dataset.json"
    source = DatasetSource.open(path)
    assert source.format == "seed"
    imgs, txts = list(source.items("image")), list(source.items("text"))
    assert [i.id for i in imgs] == [f"train-{i:06d}" for i in range(12)] == [t.id for t in txts]
    assert all((path.parent / i.value).is_file() for i in imgs)
    truth = [json.loads(line) for line in (path.parent / "truth.jsonl").read_text().splitlines()]
    assert [t["id"] for t in truth] == [i.id for i in imgs]
    for t, s in zip(truth, scenes, strict=True):
        assert t["caption"] == canonical_caption(s) and {a: t[a] for a in ATTRIBUTES} == s.attributes()
    # Texts agree with the scene wherever they name an attribute.
    for t, s in zip(txts, scenes, strict=True):
        for a, v in parse_caption(t.value).items():
            assert v is None or v == getattr(s, a)
    # Same arguments, same bytes; rewriting replaces the split and leaves no temp folders behind.
    first = {p.name: p.read_bytes() for p in (path.parent / "images").iterdir()}
    write_split(scenes, tmp_path, "train", seed=9, partial_rate=0.5)
    assert {p.name: p.read_bytes() for p in (path.parent / "images").iterdir()} == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]
    # Text-only splits have no images.
    text_only = write_split(scenes, tmp_path, "unpaired", seed=9, images=False)
    assert list(DatasetSource.open(text_only).items("image")) == []
    assert not (text_only.parent / "images").exists()


def test_write_split_failure_leaves_no_partial_split(tmp_path: Path) -> None:
    class Boom(Exception):
        pass

    class Exploding(list[Scene]):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield from sample_scenes(3, seed=0)
            raise Boom

    with pytest.raises(Boom):
        write_split(Exploding(), tmp_path, "train", seed=0)
    assert list(tmp_path.iterdir()) == []
