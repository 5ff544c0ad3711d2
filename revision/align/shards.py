"""Exact merging of statistics fitted on shards of the text (and image) rows.

Pass 1 is a sum of per-row terms, so the moments of disjoint shards merge exactly (Chan, in the
given order) and the method's statistics are re-derived from the merged moments. Pass 2 depends
on the global pass-1 statistics, so each shard runs it against the merged pass-1 result; the
shards' centroid sums then add up. With the column totals in the pass-1 moments (the stats files
save them) the merged means are bit for bit those of one fit on all rows; the rest equals it to
float64 rounding.

The same shard given twice would count its rows twice: parts with identical statistics are refused.

    parts = [fit_stores(t_k, i_k, cfg, centroid=False)[0] for each shard k]
    global1 = merge_pass1(parts, cfg)
    sums = [centroid_pass(t_k, global1, cfg)[0] for each shard k]
    stats = merge_centroids(sums)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from functools import reduce

import torch

from revision.align.config import AlignConfig
from revision.align.methods import get_method
from revision.align.stats import AlignStats, check_degenerate
from revision.errors import UserError
from revision.kernels import Moments, merge_moments


def _fingerprint(tensors: Sequence[torch.Tensor | None], counts: Sequence[int]) -> str:
    h = hashlib.sha256(repr(list(counts)).encode())
    for t in tensors:
        h.update(b"-" if t is None else t.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()


def _pass1_fingerprint(p: AlignStats) -> str:
    moments = [m for m in (p.text, p.image) if m is not None]
    return _fingerprint([t for m in moments for t in (m.mean, m.m2, m.total)], [m.n for m in moments])


def _refuse_duplicates(keys: Sequence[str], names: Sequence[str]) -> None:
    seen: dict[str, int] = {}
    for k, key in enumerate(keys):
        if key in seen:
            raise UserError(
                f"merge: {names[k]} holds the same statistics as {names[seen[key]]}; a shard merged twice "
                "would count its rows twice"
            )
        seen[key] = k


def _names(parts: Sequence[AlignStats], names: Sequence[str] | None) -> list[str]:
    return list(names) if names is not None else [f"part {k}" for k in range(len(parts))]


def merge_pass1(parts: Sequence[AlignStats], config: AlignConfig, *, names: Sequence[str] | None = None) -> AlignStats:
    """Pass-1 statistics of disjoint shards → the statistics of their union (no centroid yet).

    names: how errors call the parts (their files), default "part k". The merged statistics are
    checked for degenerate modalities (`check_degenerate`, strict per `config`).
    """
    if not parts:
        raise UserError("merge: no statistics to merge")
    _refuse_duplicates([_pass1_fingerprint(p) for p in parts], _names(parts, names))
    first = parts[0]
    for k, p in enumerate(parts[1:], start=1):
        if (p.method, p.dim, p.params) != (first.method, first.dim, first.params):
            raise UserError(
                f"merge: part {k} is {p.method} (dim {p.dim}, {p.params}), part 0 is "
                f"{first.method} (dim {first.dim}, {first.params})"
            )
    if config.method != first.method or config.method_params() != first.params:
        raise UserError(f"merge: the parts were fitted with --method {first.method} {first.params}")
    text = reduce(merge_moments, [p.text for p in parts])
    images = [p.image for p in parts if p.image is not None]
    image: Moments | None = reduce(merge_moments, images) if images else None
    merged = get_method(first.method).derive(text, image, config, where="merged statistics")
    check_degenerate(merged, strict=config.strict, where="merged statistics")
    return replace(merged, inputs={"shards": [p.inputs for p in parts]}, config=config.to_json())


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(torch.equal(a, b))


def merge_centroids(parts: Sequence[AlignStats], *, names: Sequence[str] | None = None) -> AlignStats:
    """Pass-2 sums of text shards, each computed against the same merged pass-1 statistics → μ̂."""
    if not parts:
        raise UserError("merge: no statistics to merge")
    _refuse_duplicates([_fingerprint([p.sum_h], [p.n_hat]) for p in parts], _names(parts, names))
    first = parts[0]
    for k, p in enumerate(parts[1:], start=1):
        same = (
            p.method == first.method
            and p.scale == first.scale
            and all(_same(x, y) for x, y in ((p.mu_t, first.mu_t), (p.mu_i, first.mu_i), (p.matrix, first.matrix)))
        )
        if not same:
            raise UserError(f"merge: part {k} ran pass 2 against other pass-1 statistics than part 0")
        if p.sum_h is None:
            raise UserError(f"merge: part {k} has no pass-2 sums")
    if first.sum_h is None:
        raise UserError("merge: part 0 has no pass-2 sums")
    total = torch.zeros_like(first.sum_h)
    for p in parts:
        assert p.sum_h is not None
        total += p.sum_h
    return first.with_centroid(sum(p.n_hat for p in parts), total)
