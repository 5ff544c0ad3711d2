"""Scores of generated captions against the world's ground truth: pure functions, no I/O.

- exact_match: share of captions whose parsed attributes are all right.
- per_attribute[a]: share of captions whose attribute `a` parses to the true value; an attribute the
  caption does not name, or names twice, counts as wrong.
- attribute_accuracy: the mean of per_attribute over the attributes.
- token_accuracy: position-wise token match against the canonical truth caption. Both texts are split
  into lower-case tokens (words, and punctuation marks one each); a caption scores
  (number of positions i with gen[i] == truth[i]) / max(len(gen), len(truth)), so a missing, extra or
  shifted word costs, and an empty caption against a non-empty truth scores 0. The mean over captions.
  It rewards the canonical phrasing: a right caption in another word order scores below 1, which is
  what tells a captioner that learnt the words from one that learnt the attributes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

_TOKEN = re.compile(r"\w+|[^\w\s]")

Parser = Callable[[str], Mapping[str, str | None]]


def tokens(text: str) -> list[str]:
    """Lower-case words and punctuation marks of `text`, in order."""
    return _TOKEN.findall(text.lower())


def token_match(generated: str, truth: str) -> float:
    """Position-wise token accuracy of one caption, over the longer of the two token lists."""
    g, t = tokens(generated), tokens(truth)
    longer = max(len(g), len(t))
    if longer == 0:
        return 1.0
    return sum(a == b for a, b in zip(g, t, strict=False)) / longer


def score_attributes(
    predicted: Sequence[Mapping[str, str | None]], truth: Sequence[Mapping[str, str]], attributes: Sequence[str]
) -> dict[str, Any]:
    """exact_match, attribute_accuracy and per_attribute of parsed predictions against true attributes."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} truths")
    if not truth:
        raise ValueError("no captions to score")
    if not attributes:
        raise ValueError("no attributes to score")
    hits = {a: 0 for a in attributes}
    exact = 0
    for pred, true in zip(predicted, truth, strict=True):
        right = [pred.get(a) is not None and pred.get(a) == true[a] for a in attributes]
        for a, ok in zip(attributes, right, strict=True):
            hits[a] += ok
        exact += all(right)
    n = len(truth)
    per = {a: hits[a] / n for a in attributes}
    return {"exact_match": exact / n, "attribute_accuracy": sum(per.values()) / len(per), "per_attribute": per}


def score_captions(
    generated: Mapping[str, str],
    truth: Mapping[str, Mapping[str, Any]],
    *,
    attributes: Sequence[str],
    parse: Parser,
) -> dict[str, Any]:
    """All scores of `generated` (id → caption) against `truth` (id → {"caption", <attribute>: value}).

    Every truth id must have a caption: a missing one is an error, not a silent zero or a skip.
    """
    missing = [i for i in truth if i not in generated]
    if missing:
        raise ValueError(f"{len(missing)} test ids have no generated caption, e.g. {missing[:3]}")
    ids = list(truth)
    attrs = score_attributes([parse(generated[i]) for i in ids], [truth[i] for i in ids], attributes)
    tok = sum(token_match(generated[i], str(truth[i]["caption"])) for i in ids) / len(ids)
    return {**attrs, "token_accuracy": tok, "n": len(ids)}
