"""The built-in world: scenes of a few coloured shapes, rendered to small images and captioned.

A scene is one value per attribute (count, size, colour, shape, position). `render` draws it with
jitter (placement, size, hue, background, pixel noise) so that no two images of a scene are alike,
`caption` phrases it in one of several full word orders or as partial "alt-text" that leaves
attributes out, and `parse_caption` reads the attributes back from any text, including a
captioner's imperfect output. `write_split` writes a split in the `revision embed --format seed`
layout with the ground truth beside it. Everything is deterministic from a seed.

Geometry is in fractions of the image side, so any `px` works; it is tuned for 32 px: three large
shapes in a corner still fit their quadrant without touching, and a small shape is ~4 px across.
"""

from __future__ import annotations

import colorsys
import itertools
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from revision.errors import UserError

if TYPE_CHECKING:
    from PIL import Image, ImageDraw

__all__ = [
    "ATTRIBUTES",
    "FULL_PHRASINGS",
    "VALUES",
    "Scene",
    "all_scenes",
    "canonical_caption",
    "item_seed",
    "caption",
    "parse_caption",
    "render",
    "sample_scenes",
    "vocabulary",
    "write_split",
]

ATTRIBUTES: tuple[str, ...] = ("count", "size", "colour", "shape", "position")
VALUES: dict[str, tuple[str, ...]] = {
    "count": ("one", "two", "three"),
    "size": ("small", "large"),
    "colour": ("red", "green", "blue", "yellow", "purple"),
    "shape": ("circle", "cross", "triangle"),
    "position": ("top left", "top right", "bottom left", "bottom right", "center"),
}


@dataclass(frozen=True)
class Scene:
    """One value of each attribute in `ATTRIBUTES`, each one of `VALUES[attribute]`."""

    count: str
    size: str
    colour: str
    shape: str
    position: str

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value not in VALUES[f.name]:
                raise ValueError(f"Scene.{f.name}: {value!r} is not one of {VALUES[f.name]}")

    def attributes(self) -> dict[str, str]:
        """attribute -> value, in `ATTRIBUTES` order."""
        return {a: getattr(self, a) for a in ATTRIBUTES}

    def index(self) -> int:
        """The scene's number in the product of `VALUES` (mixed radix, `ATTRIBUTES` order)."""
        k = 0
        for a in ATTRIBUTES:
            k = k * len(VALUES[a]) + VALUES[a].index(getattr(self, a))
        return k


def sample_scenes(n: int, seed: int) -> list[Scene]:
    """`n` scenes, each attribute drawn uniformly and independently; same seed, same list."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng([seed, 0x5CE1E])
    draws = {a: rng.integers(0, len(VALUES[a]), size=n) for a in ATTRIBUTES}
    return [Scene(**{a: VALUES[a][int(draws[a][i])] for a in ATTRIBUTES}) for i in range(n)]


# --- rendering ---------------------------------------------------------------------------------

# Hue (degrees) of each colour: ~60 degrees or more apart, so a ±8 degree jitter never crosses.
_HUE = {"red": 0.0, "yellow": 55.0, "green": 120.0, "blue": 225.0, "purple": 285.0}
# Object diameter as a fraction of the side, (low, high): the two ranges are far apart so "small"
# and "large" stay separable after jitter; "large" is as big as three can be in one quadrant.
_DIAMETER = {"small": (0.14, 0.165), "large": (0.2, 0.225)}
# Centre of each position's region, as (x, y) fractions of the side.
_CENTRE = {
    "top left": (0.26, 0.26),
    "top right": (0.74, 0.26),
    "bottom left": (0.26, 0.74),
    "bottom right": (0.74, 0.74),
    "center": (0.5, 0.5),
}
# Object offsets around the group centre, in units of the spacing; the group is rotated at random.
_LAYOUT = {
    "one": ((0.0, 0.0),),
    "two": ((-0.5, 0.0), (0.5, 0.0)),
    "three": ((-0.5, -0.2887), (0.5, -0.2887), (0.0, 0.5774)),
}
_SUPERSAMPLE = 4  # draw at 4x and box-filter down: anti-aliased edges keep tiny shapes tellable apart


def _rgb(colour: str, rng: np.random.Generator) -> tuple[int, int, int]:
    hue = (_HUE[colour] + rng.uniform(-8.0, 8.0)) % 360.0
    r, g, b = colorsys.hsv_to_rgb(hue / 360.0, rng.uniform(0.75, 1.0), rng.uniform(0.8, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, d: float, fill: tuple[int, int, int]
) -> None:
    h = d / 2.0
    if shape == "circle":
        draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif shape == "cross":
        # An upright plus sign. A filled square was the first choice, but at 4-7 px a square and a
        # circle box-filter to nearly the same blob (a trained encoder's probe confused them ~30 % of
        # the time); the plus stays tellable from both the circle and the triangle at that size.
        w = h * 0.36
        draw.rectangle((cx - h, cy - w, cx + h, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - h, cx + w, cy + h), fill=fill)
    else:
        # Upward equilateral triangle inscribed in the circle of diameter d, centred on its centroid.
        pts = [(cx + h * math.cos(a), cy - h * math.sin(a)) for a in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)]
        draw.polygon(pts, fill=fill)


def render(scene: Scene, seed: int, px: int = 32) -> Image.Image:
    """An RGB `px`x`px` image of `scene`; the jitter is drawn from (scene, seed), so it is repeatable."""
    from PIL import Image, ImageDraw

    if px < 16:
        raise ValueError(f"px must be >= 16 to draw three shapes in a quadrant, got {px}")
    rng = np.random.default_rng([seed, scene.index(), 0x7E4D])
    big = px * _SUPERSAMPLE
    bg = tuple(int(v) for v in rng.integers(10, 45, size=3))
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    fill = _rgb(scene.colour, rng)
    lo, hi = _DIAMETER[scene.size]
    d = rng.uniform(lo, hi)
    # Spacing a bit over one diameter: objects never touch, so counting stays possible.
    spacing = d * rng.uniform(1.2, 1.35)
    offsets = _LAYOUT[scene.count]
    angle = rng.uniform(0.0, 2.0 * math.pi)
    ca, sa = math.cos(angle), math.sin(angle)
    pts = [(spacing * (ox * ca - oy * sa), spacing * (ox * sa + oy * ca)) for ox, oy in offsets]
    gx, gy = _CENTRE[scene.position]
    gx += rng.uniform(-0.03, 0.03)
    gy += rng.uniform(-0.03, 0.03)
    # Keep the whole group inside the image (a margin of 1 px) by shifting it, not by clipping shapes.
    margin = d / 2.0 + 1.0 / px
    for axis in (0, 1):
        lo_p = min(p[axis] for p in pts) + (gx, gy)[axis]
        hi_p = max(p[axis] for p in pts) + (gx, gy)[axis]
        shift = max(0.0, margin - lo_p) - max(0.0, hi_p - (1.0 - margin))
        if axis == 0:
            gx += shift
        else:
            gy += shift
    for ox, oy in pts:
        _draw_shape(draw, scene.shape, (gx + ox) * big, (gy + oy) * big, d * big, fill)
    small = np.asarray(img.resize((px, px), Image.Resampling.BOX), dtype=np.int16)
    noise = rng.normal(0.0, 4.0, size=small.shape)
    return Image.fromarray(np.clip(small + noise, 0, 255).astype(np.uint8), "RGB")


# --- captions ----------------------------------------------------------------------------------

_PLURAL = {"circle": "circles", "cross": "crosses", "triangle": "triangles"}
_POSITION_PHRASE = {p: ("in the center" if p == "center" else f"at the {p}") for p in VALUES["position"]}


def _noun(scene: Scene) -> str:
    return scene.shape if scene.count == "one" else _PLURAL[scene.shape]


def canonical_caption(scene: Scene) -> str:
    """The one fixed full phrasing, e.g. "two small red circles at the top left"."""
    return f"{scene.count} {scene.size} {scene.colour} {_noun(scene)} {_POSITION_PHRASE[scene.position]}"


def _full_phrasings(s: Scene) -> list[str]:
    pos = _POSITION_PHRASE[s.position]
    noun = _noun(s)
    be = "is" if s.count == "one" else "are"
    return [
        canonical_caption(s),
        f"a picture of {s.count} {s.size} {s.colour} {noun} {pos}",
        f"{pos} there {be} {s.count} {s.size} {s.colour} {noun}",
        f"{s.count} {s.colour} {noun} {pos} , {s.size}",
        f"{s.size} {s.colour} {noun} {pos} , {s.count} in all",
        f"an image with {s.count} {noun} {pos} , {s.colour} and {s.size}",
    ]


FULL_PHRASINGS = len(_full_phrasings(Scene("one", "small", "red", "circle", "center")))


_ALT_PREFIXES = ("", "a picture of ", "photo : ")


def _partial(s: Scene, keep: set[str], rng: np.random.Generator) -> str:
    # Alt-text builds one noun phrase from what it keeps; a dropped shape becomes a generic noun.
    words: list[str] = []
    if "count" in keep:
        words.append(s.count)
    words += [getattr(s, a) for a in ("size", "colour") if a in keep]
    if "shape" in keep:
        words.append(_noun(s))
    else:
        words.append("shape" if s.count == "one" else "shapes")
    phrase = " ".join(words)
    if "position" in keep:
        phrase += " " + _POSITION_PHRASE[s.position]
    prefix = _ALT_PREFIXES[int(rng.integers(0, len(_ALT_PREFIXES)))]
    return prefix + phrase


def caption(scene: Scene, rng: np.random.Generator, *, partial: bool = False, phrasing: int | None = None) -> str:
    """A caption of `scene` drawn with `rng`: one of the full phrasings (or phrasing number `phrasing`),
    or with `partial` an alt-text that leaves out between 1 and 4 attributes (at least one is kept)."""
    if not partial:
        options = _full_phrasings(scene)
        k = int(rng.integers(0, len(options))) if phrasing is None else phrasing
        if not 0 <= k < len(options):
            raise ValueError(f"phrasing must be in [0, {len(options)}), got {k}")
        return options[k]
    n_drop = int(rng.integers(1, len(ATTRIBUTES)))
    dropped = set(rng.choice(np.array(ATTRIBUTES), size=n_drop, replace=False).tolist())
    return _partial(scene, set(ATTRIBUTES) - dropped, rng)


_WORD_TO_VALUE: dict[str, tuple[str, str]] = {}
for _attr in ("count", "size", "colour", "shape"):
    for _v in VALUES[_attr]:
        _WORD_TO_VALUE[_v] = (_attr, _v)
for _singular, _plural in _PLURAL.items():
    _WORD_TO_VALUE[_plural] = ("shape", _singular)
_WORD_TO_VALUE["middle"] = ("position", "center")
_WORD_TO_VALUE["centre"] = ("position", "center")
_WORD_TO_VALUE["center"] = ("position", "center")


def parse_caption(text: str) -> dict[str, str | None]:
    """attribute -> value read from `text`, None where the text names no value or names two.

    Word-level and order-free: it reads every caption `caption` writes and tolerates a captioner's
    slips (extra or missing words, singular/plural, punctuation, case). Never raises on a string.
    """
    found: dict[str, set[str]] = {a: set() for a in ATTRIBUTES}
    tokens = "".join(c if c.isalnum() else " " for c in str(text).lower()).split()
    vertical = {t for t in tokens if t in ("top", "bottom")}
    horizontal = {t for t in tokens if t in ("left", "right")}
    for t in tokens:
        hit = _WORD_TO_VALUE.get(t)
        if hit is not None:
            found[hit[0]].add(hit[1])
    if len(vertical) == 1 and len(horizontal) == 1:
        found["position"].add(f"{next(iter(vertical))} {next(iter(horizontal))}")
    elif vertical or horizontal:
        # A half-named corner ("at the top") names no position of this world; do not guess one.
        found["position"].add("?")
    out: dict[str, str | None] = {}
    for a in ATTRIBUTES:
        vals = found[a]
        out[a] = next(iter(vals)) if len(vals) == 1 and "?" not in vals else None
    return out


# --- splits on disk ----------------------------------------------------------------------------


def item_seed(seed: int, i: int) -> int:
    """The seed of item `i` of a split written with `seed` (its render jitter and its caption draw)."""
    # One independent stream per item, so item i's image and caption do not depend on the split size.
    return int(np.random.SeedSequence([seed, i, 0x5B17]).generate_state(1)[0])


def write_split(
    scenes: Sequence[Scene],
    out: Path,
    name: str,
    *,
    seed: int,
    px: int = 32,
    images: bool = True,
    texts: bool = True,
    partial_rate: float = 0.0,
) -> Path:
    """Write `out/name/`: dataset.json (seed layout), images/*.png and truth.jsonl; return dataset.json.

    Ids are f"{name}-{i:06d}", shared by an item's image and its text. The text is a full phrasing,
    or with probability `partial_rate` an alt-text. truth.jsonl holds per id the canonical caption
    and the attributes. The split is built in a temporary folder and renamed into place, so a killed
    run leaves either the old split or none, never a half-written one.
    """
    if not name or "/" in name or name.startswith("."):
        raise UserError(f"split name {name!r} must be a plain folder name")
    if not 0.0 <= partial_rate <= 1.0:
        raise UserError(f"partial_rate must be in [0, 1], got {partial_rate}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out))
    try:
        if images:
            (tmp / "images").mkdir()
        image_rows: list[dict[str, str]] = []
        text_rows: list[dict[str, str]] = []
        with open(tmp / "truth.jsonl", "w", encoding="utf-8") as truth:
            for i, scene in enumerate(scenes):
                ident = f"{name}-{i:06d}"
                s_i = item_seed(seed, i)
                if images:
                    rel = f"images/{ident}.png"
                    render(scene, s_i, px).save(tmp / rel, format="PNG", compress_level=1)
                    image_rows.append({"id": ident, "image": rel})
                if texts:
                    rng = np.random.default_rng(s_i)
                    partial = bool(rng.random() < partial_rate)
                    text_rows.append({"id": ident, "text": caption(scene, rng, partial=partial)})
                truth.write(json.dumps({"id": ident, "caption": canonical_caption(scene), **scene.attributes()}) + "\n")
        (tmp / "dataset.json").write_text(json.dumps({"images": image_rows, "texts": text_rows}, indent=0))
        os.chmod(tmp, 0o755)
        from revision.store.atomic import replace_dir

        replace_dir(tmp, out / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / name / "dataset.json"


def vocabulary() -> list[str]:
    """Every word and punctuation token any caption of this world can hold, sorted (for tokenizers)."""
    texts = [p for s in all_scenes() for p in _full_phrasings(s)]
    texts += [*_ALT_PREFIXES, "shape shapes"]
    return sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t)})


def all_scenes() -> list[Scene]:
    """Every scene of the world, in `Scene.index` order."""
    return [Scene(*combo) for combo in itertools.product(*(VALUES[a] for a in ATTRIBUTES))]
