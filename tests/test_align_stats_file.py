"""Stats files keep the pass-1 column totals, so sharded fits through files equal one fit bit for bit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_align_oracle import make_store

from revision.align import AlignConfig, fit_stores, load_stats, save_stats
from revision.align.shards import merge_pass1
from revision.cli import main
from revision.kernels import Moments, merge_moments, row_stats
from revision.store import FeatureStore

#: Rows of the tie corpus: 3·2¹⁴, entries multiples of 2**-GRID. When the column-0 total is a
#: multiple of 3·2**-GRID, the mean is a multiple of 2**-26; an odd multiple in [0.25, 0.5) lies
#: exactly halfway between two float32 numbers.
TIE_ROWS = 3 << 14
GRID = 12


def _squares_summing_to(n: int) -> list[int]:
    """Six integers whose squares add up to n: two greedy steps, then Lagrange's four squares of
    what is left (below ~200, so the search is short)."""
    head = []
    for _ in range(2):
        head.append(math.isqrt(n))
        n -= head[-1] ** 2
    for a in range(math.isqrt(n), -1, -1):
        for b in range(math.isqrt(n - a * a), -1, -1):
            for c in range(math.isqrt(n - a * a - b * b), -1, -1):
                d = math.isqrt(n - a * a - b * b - c * c)
                if a * a + b * b + c * c + d * d == n:
                    return [*head, a, b, c, d]
    raise AssertionError(n)


def tie_text(seed: int) -> np.ndarray:
    """(TIE_ROWS, 8) float32 rows of exactly unit norm (normalising leaves them bit for bit) whose
    column-0 mean is exactly a float32 tie: its float32 rounding is decided by its last float64 bit.

    Row r: x0 = a·2⁻¹² and six more entries k·2⁻¹² with a² + Σk² = 4¹², so Σx² = 1 exactly (and in
    float32, every partial sum being a multiple of 2⁻²⁴ below 1). The first rows have x0 ≈ 0.9, the
    others ≈ 0.1: shards cut near the change have means in other binades than the whole (≈ 0.42),
    so their rounding errors are large against the whole's float32 tie.
    """
    rng = np.random.default_rng(seed)
    high = TIE_ROWS * 2 // 5
    a = np.concatenate([rng.integers(3500, 4000, high), rng.integers(200, 600, TIE_ROWS - high)])
    # Σa = 3·(odd) puts the mean (Σa / 3)·2⁻²⁶ exactly halfway between two float32 numbers.
    a[-1] += (3 - a.sum()) % 6
    one = 1 << GRID
    values, where = np.unique(a, return_inverse=True)
    rest = np.array([_squares_summing_to(one * one - v * v) for v in values.tolist()], dtype=np.float64)[where]
    # Each row's six entries in a random order with random signs.
    rest = np.take_along_axis(rest, rng.random(rest.shape).argsort(axis=1), axis=1)
    rest *= rng.choice([-1.0, 1.0], rest.shape)
    x = np.concatenate([a[:, None].astype(np.float64), rest, np.zeros((TIE_ROWS, 1))], axis=1) * 2.0**-GRID
    assert np.array_equal((x * x).sum(axis=1), np.ones(TIE_ROWS))
    mean = x[:, 0].sum() / TIE_ROWS
    assert 0.25 <= mean < 0.5 and (mean * 2**26) % 2 == 1
    return x.astype(np.float32)


def _without_totals(m: Moments) -> Moments:
    return Moments(m.n, m.mean, m.m2, m.comoment, None)


def flipping_cut(text: np.ndarray) -> int:
    """A cut of `text` into two shards where Chan's mean update (what a merge of stats files without
    totals does) rounds the column-0 mean to the other float32 neighbour than one fit does."""
    whole = row_stats(torch.from_numpy(text), normalize=True).mean.to(torch.float32)
    for cut in range(TIE_ROWS * 2 // 5 - 3000, TIE_ROWS, 101):
        a, b = (row_stats(torch.from_numpy(part), normalize=True) for part in (text[:cut], text[cut:]))
        chan = merge_moments(_without_totals(a), _without_totals(b)).mean.to(torch.float32)
        if not torch.equal(chan, whole):
            return cut
    raise AssertionError("no cut flips the float32 mean; the tie corpus is not a tie")


def _fit_cli(*args: object) -> None:
    assert main(["fit", *map(str, args), "--no-progress"]) == 0


def test_sharded_fit_through_files_is_bitwise_one_fit(tmp_path: Path) -> None:
    text = tie_text(seed=3)
    cut = flipping_cut(text)
    rng = np.random.default_rng(4)
    image = (rng.normal(size=(3000, 8)) - 0.3).astype(np.float32)
    for name, rows, modality in (("t", text, "text"), ("i", image, "image")):
        make_store(tmp_path / f"{name}.zarr", rows, modality, dtype="float32", chunk_rows=1024).close()
    shards = [(text[:cut], image[:1234]), (text[cut:], image[1234:])]
    for k, (t_rows, i_rows) in enumerate(shards):
        make_store(tmp_path / f"t{k}.zarr", t_rows, "text", dtype="float32", chunk_rows=1024, prefix=f"t{k}-").close()
        make_store(tmp_path / f"i{k}.zarr", i_rows, "image", dtype="float32", chunk_rows=1024, prefix=f"i{k}-").close()
        _fit_cli("--text", tmp_path / f"t{k}.zarr", "--image", tmp_path / f"i{k}.zarr",
                 "--stats", tmp_path / f"p{k}.json", "--pass1-only")  # fmt: skip
    _fit_cli("--merge", tmp_path / "p0.json", tmp_path / "p1.json", "--stats", tmp_path / "pass1.json")
    for k in range(2):
        _fit_cli("--text", tmp_path / f"t{k}.zarr", "--centroid-from", tmp_path / "pass1.json",
                 "--stats", tmp_path / f"c{k}.json")  # fmt: skip
    _fit_cli("--merge", tmp_path / "c0.json", tmp_path / "c1.json", "--stats", tmp_path / "merged.json")
    _fit_cli("--text", tmp_path / "t.zarr", "--image", tmp_path / "i.zarr", "--stats", tmp_path / "whole.json")
    merged, whole = load_stats(tmp_path / "merged.json"), load_stats(tmp_path / "whole.json")
    assert merged.text.n == whole.text.n == TIE_ROWS and merged.n_hat == TIE_ROWS
    for name in ("mu_t", "mu_i"):
        a, b = getattr(merged, name), getattr(whole, name)
        diff = (a - b).abs()
        assert torch.equal(a, b), f"{name}: {int((diff > 0).sum())} elements differ, max {float(diff.max()):.3g}"

    outs = {}
    for which in ("merged", "whole"):
        out = tmp_path / f"a_{which}.zarr"
        args = ["apply", "--text", str(tmp_path / "t.zarr"), "--stats", str(tmp_path / f"{which}.json")]
        assert main([*args, "--out", str(out), "--no-progress"]) == 0
        with FeatureStore.open(out) as st:
            outs[which] = st.read()
    bits = outs["merged"].view(np.uint32) != outs["whole"].view(np.uint32)
    assert not bits.any(), f"{int(bits.sum())} aligned values differ, first at {np.argwhere(bits)[0].tolist()}"


def test_tie_corpus_bites_without_totals(tmp_path: Path) -> None:
    """The same merge from files stripped of their totals (as files written before they were saved)
    still loads and merges, but rounds a float32 mean the other way: the totals are what fixes it."""
    text = tie_text(seed=3)
    cut = flipping_cut(text)
    rng = np.random.default_rng(4)
    image = (rng.normal(size=(400, 8)) - 0.3).astype(np.float32)
    cfg = AlignConfig(progress=False)
    paths = []
    for k, rows in enumerate((text[:cut], text[cut:])):
        t = make_store(tmp_path / f"t{k}.zarr", rows, "text", dtype="float32", chunk_rows=1024)
        i = make_store(tmp_path / f"i{k}.zarr", image[200 * k : 200 * (k + 1)], "image", dtype="float32")
        with t, i:
            stats, _ = fit_stores(t, i, cfg, centroid=False)
        paths.append(save_stats(stats, tmp_path / f"p{k}.json"))
    with_totals = merge_pass1([load_stats(p) for p in paths], cfg)
    for p in paths:
        doc = json.loads(p.read_text())
        for m in doc["moments"].values():
            del m["total"]
        p.write_text(json.dumps(doc))
    old = [load_stats(p) for p in paths]
    assert all(s.text.total is None for s in old)
    without = merge_pass1(old, cfg)
    with make_store(tmp_path / "t.zarr", text, "text", dtype="float32", chunk_rows=1024) as t:
        whole_mean = row_stats(torch.from_numpy(t.read()), normalize=True).mean
    assert torch.equal(with_totals.mu_t, whole_mean.to(torch.float32).to(torch.float64))
    assert not torch.equal(without.mu_t, with_totals.mu_t)
    # The fallback is still right to float64 rounding before the float32 rounding.
    assert float((without.text.mean - with_totals.text.mean).abs().max()) < 1e-15


@pytest.mark.parametrize("seed", [0, 1])
def test_totals_round_trip_bit_for_bit(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = 33
    special = np.array([5e-324, -2.2250738585072014e-308, 1.7976931348623157e308, 0.1, 1 / 3, -0.0, 2.0**-1074])
    total = np.concatenate([special, rng.normal(size=d - len(special)) * 10.0 ** rng.integers(-300, 300, d - 7)])
    mean = torch.from_numpy(rng.normal(size=d))
    text = Moments(5, mean, torch.from_numpy(rng.random(d)), None, torch.from_numpy(total))
    base, _ = fit_stores(
        make_store(tmp_path / "t.zarr", rng.normal(size=(150, d)).astype(np.float32), "text"),
        make_store(tmp_path / "i.zarr", rng.normal(size=(150, d)).astype(np.float32), "image"),
        AlignConfig(progress=False),
        centroid=False,
    )
    from dataclasses import replace

    stats = replace(base, text=text)
    back = load_stats(save_stats(stats, tmp_path / "s.json"))
    assert back.text.total is not None and back.image is not None and back.image.total is not None
    assert back.text.total.numpy().tobytes() == text.total.numpy().tobytes()
    assert back.image.total.numpy().tobytes() == base.image.total.numpy().tobytes()
