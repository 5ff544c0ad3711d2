"""Scoring of generated captions (revision.experiment.score) and the results.json summary and schema."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest

from revision.experiment.results import check_results, summarise, table
from revision.experiment.score import score_attributes, score_captions, token_match, tokens
from revision.experiment.world import ATTRIBUTES, Scene, canonical_caption, parse_caption

TRUTH = {
    "a": Scene("two", "small", "red", "circle", "top left"),
    "b": Scene("one", "large", "blue", "cross", "center"),
    "c": Scene("three", "small", "green", "triangle", "bottom right"),
    "d": Scene("one", "small", "yellow", "circle", "top right"),
}


def _truth() -> dict[str, dict[str, str]]:
    return {i: {"id": i, "caption": canonical_caption(s), **s.attributes()} for i, s in TRUTH.items()}


# Hand-made captions with known scores: a right caption in canonical order, a right one in another
# order, one with the colour wrong, one that omits the position and misses a word at the end.
GENERATED = {
    "a": "two small red circles at the top left",
    "b": "in the center there is one large blue cross",
    "c": "three small purple triangles at the bottom right",
    "d": "one small yellow circle at the top",
}


def check_token_scorer(fn: Callable[[str, str], float]) -> None:
    """Cases any token accuracy worth the name must get right (the e2e scores rely on them)."""
    assert fn("two small red circles", "two small red circles") == 1.0
    # Position-wise over the longer: an extra word at the end costs 1/5, not nothing.
    assert fn("two small red circles here", "two small red circles") == pytest.approx(4 / 5)
    # A shift by one word breaks every later position.
    assert fn("small red circles", "two small red circles") == 0.0
    # Same words, another order: not a bag of words.
    assert fn("red two circles small", "two small red circles") == 0.0
    assert fn("", "two circles") == 0.0
    assert fn("Two, circles", "two , circles") == 1.0  # case and punctuation tokenise alike


def test_token_match_passes_the_checks() -> None:
    check_token_scorer(token_match)


def test_a_bag_of_words_scorer_is_rejected() -> None:
    # A deliberately wrong token accuracy: share of the truth's words found anywhere in the caption.
    def bag_of_words(generated: str, truth: str) -> float:
        g, t = set(tokens(generated)), tokens(truth)
        return sum(w in g for w in t) / max(1, len(t))

    with pytest.raises(AssertionError):
        check_token_scorer(bag_of_words)


def test_a_shorter_length_scorer_is_rejected() -> None:
    # Another wrong one: dividing by the shorter length forgives extra words.
    def over_shorter(generated: str, truth: str) -> float:
        g, t = tokens(generated), tokens(truth)
        return sum(a == b for a, b in zip(g, t, strict=False)) / max(1, min(len(g), len(t)))

    with pytest.raises(AssertionError):
        check_token_scorer(over_shorter)


def test_scores_of_hand_made_captions() -> None:
    s = score_captions(GENERATED, _truth(), attributes=ATTRIBUTES, parse=parse_caption)
    assert s["n"] == 4
    # a and b are right in every attribute; c has the colour wrong; d names half a corner.
    assert s["exact_match"] == pytest.approx(2 / 4)
    assert s["per_attribute"] == {
        "count": 1.0,
        "size": 1.0,
        "colour": pytest.approx(3 / 4),
        "shape": 1.0,
        "position": pytest.approx(3 / 4),
    }
    assert s["attribute_accuracy"] == pytest.approx((3 + 2 * 0.75) / 5)
    # a: 8/8; b: other word order, 0 of 9 positions; c: 7/8; d: 7 of the truth's 8 positions.
    assert s["token_accuracy"] == pytest.approx((1 + 0 + 7 / 8 + 7 / 8) / 4)


def test_exact_match_needs_every_attribute() -> None:
    truth = [{"count": "one", "size": "small", "colour": "red", "shape": "circle", "position": "center"}]
    almost = [{**truth[0], "position": None}]
    assert score_attributes(almost, truth, ATTRIBUTES)["exact_match"] == 0.0
    assert score_attributes(almost, truth, ATTRIBUTES)["attribute_accuracy"] == pytest.approx(0.8)
    # A prediction of None never matches, even where the truth were None.
    assert score_attributes([{"count": None}], [{"count": None}], ["count"])["exact_match"] == 0.0


def test_a_missing_caption_is_an_error_not_a_zero() -> None:
    partial = {k: v for k, v in GENERATED.items() if k != "c"}
    with pytest.raises(ValueError, match="1 test ids have no generated caption"):
        score_captions(partial, _truth(), attributes=ATTRIBUTES, parse=parse_caption)


def _run(method: str, noise: float, seed: int, em: float) -> dict[str, object]:
    return {
        "method": method,
        "noise": noise,
        "seed": seed,
        "visual_tokens": 1,
        "exact_match": em,
        "attribute_accuracy": em,
        "token_accuracy": em,
        "per_attribute": dict.fromkeys(ATTRIBUTES, em),
        "train_seconds": 1.0,
    }


def _doc() -> dict[str, object]:
    grid = (("raw", 0.2), ("realign", 0.7), ("paired", 0.95))
    runs = [_run(m, n, s, em + 0.02 * s) for m, em in grid for n in (0.0, 0.1) for s in (0, 1)]
    return {
        "schema": 1,
        "command": "revision experiment --out x",
        "quick": False,
        "seeds": [0, 1],
        "config": {},
        "timings": {},
        "encoder": {"gap": {}},
        "noise_sigma": 0.1,
        "runs": runs,
        "summary": summarise(runs, ["raw", "realign", "paired"]),
        "gap": {"raw": {}, "realign": {}},
        "samples": [{"id": "t", "image": "i.png", "truth": "x", "captions": {}}],
        "ablation": {},
    }


def test_summary_mean_and_spread_over_seeds() -> None:
    doc = _doc()
    rows = doc["summary"]
    assert isinstance(rows, list)
    assert [(r["method"], r["noise"]) for r in rows] == [
        ("raw", 0.0), ("raw", 0.1), ("realign", 0.0), ("realign", 0.1), ("paired", 0.0), ("paired", 0.1),
    ]  # fmt: skip
    first = rows[0]
    assert first["n"] == 2
    assert first["exact_match_mean"] == pytest.approx(0.21)
    # Sample std of (0.20, 0.22): 0.02 / sqrt(2).
    assert first["exact_match_std"] == pytest.approx(0.02 / 2**0.5)
    assert "0.210 ± 0.014" in table(rows)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("gap"), "missing gap"),
        (lambda d: d["runs"][0].update(exact_match=1.5), r"runs\[0\].exact_match must be a number in \[0, 1\]"),
        (lambda d: d["runs"][0].update(noise=0.3), "neither 0 nor noise_sigma"),
        (lambda d: d["runs"][0].update(seed=7), "is not one of seeds"),
        (lambda d: d.update(runs=[r for r in d["runs"] if r["method"] != "paired"]), "no 'paired' runs"),
        (lambda d: d["gap"].pop("realign"), "gap has no metrics for realign"),
    ],
)
def test_schema_check_names_what_is_wrong(edit: Callable[[dict], object], message: str) -> None:  # type: ignore[type-arg]
    check_results(_doc())
    bad = copy.deepcopy(_doc())
    edit(bad)
    with pytest.raises(ValueError, match=message):
        check_results(bad)
