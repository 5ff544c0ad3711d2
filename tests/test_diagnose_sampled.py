"""Sampled metrics: separability on constructed cases, retrieval recall on planted pairs, PCA, draws."""

from __future__ import annotations

import numpy as np
import pytest

from revision.diagnose.sampled import cosine_draws, linear_separability, pca_2d, retrieval, sample_spectrum


def cone(n: int, d: int, axis: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    x = axis + spread * rng.standard_normal((n, d)) * np.linspace(1.5, 0.2, d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_separability_half_for_identical_and_one_for_disjoint() -> None:
    rng = np.random.default_rng(0)
    d = 64
    axis = unit(rng.standard_normal((1, d)))[0]
    same = linear_separability(cone(2000, d, axis, 0.6, rng), cone(2000, d, axis, 0.6, rng), seed=0)
    assert abs(same["linear_separability"] - 0.5) < 0.06, same
    other = unit(rng.standard_normal((1, d)))[0]
    apart = linear_separability(cone(500, d, axis, 0.2, rng), cone(500, d, other, 0.2, rng), seed=0)
    assert apart["linear_separability"] == 1.0, apart
    assert apart["separability_rows_per_modality"] == 500


def test_separability_sees_a_small_shift() -> None:
    # A gap along one direction only, well below the spread: linear, so a linear model finds it.
    rng = np.random.default_rng(1)
    d = 32
    base = rng.standard_normal((4000, d))
    shift = np.zeros(d)
    shift[3] = 1.5
    acc = linear_separability(unit(base[:2000] + shift), unit(base[2000:]), seed=1)["linear_separability"]
    assert 0.7 < acc < 1.0, acc


def ranks_brute(q: np.ndarray, g: np.ndarray, correct: list[set[int]]) -> np.ndarray:
    sims = q.astype(np.float64) @ g.astype(np.float64).T
    out = []
    for r, ok in enumerate(correct):
        best = max(sims[r, j] for j in ok)
        out.append(1 + sum(1 for j in range(len(g)) if sims[r, j] > best))
    return np.array(out)


def test_planted_permutation_is_recalled_and_a_wrong_pairing_is_not() -> None:
    rng = np.random.default_rng(2)
    n, d = 300, 48
    text = unit(rng.standard_normal((n, d)))
    perm = rng.permutation(n)
    image = np.empty_like(text)
    image[perm] = unit(text + 0.05 * rng.standard_normal((n, d)))  # image row perm[j] pairs with text j
    text_rows, image_rows = np.arange(n), perm
    m = retrieval(text_rows, image_rows, text, image[image_rows])
    for direction in ("t2i", "i2t"):
        assert m[f"recall_at_1_{direction}"] == 1.0
        assert m[f"median_rank_{direction}"] == 1.0
    bad = retrieval(text_rows, np.roll(image_rows, 1), text, image[np.roll(image_rows, 1)])
    assert bad["recall_at_10_t2i"] < 0.2, bad


def test_ranks_with_several_captions_per_image_match_brute_force() -> None:
    rng = np.random.default_rng(3)
    d = 16
    images = unit(rng.standard_normal((40, d)))
    # Each image has 1-3 captions; text row ids are arbitrary and unsorted.
    text_rows, image_rows, captions = [], [], []
    for j in range(40):
        for _ in range(rng.integers(1, 4)):
            text_rows.append(1000 - len(text_rows) * 3)
            image_rows.append(j * 7)
            captions.append(unit(images[j : j + 1] + 0.8 * rng.standard_normal((1, d)))[0])
    t_rows, i_rows = np.array(text_rows), np.array(image_rows)
    t_vecs, i_vecs = np.stack(captions), images[i_rows // 7]
    m = retrieval(t_rows, i_rows, t_vecs, i_vecs)
    # Brute force: text→image, gallery = 40 images; image→text, gallery = all captions.
    order_t = np.argsort(t_rows)
    t_gal = t_vecs[order_t]
    t2i = ranks_brute(t_gal, images, [{int(i_rows[order_t][r] // 7)} for r in range(len(t_rows))])
    i2t = ranks_brute(images, t_gal, [set(np.flatnonzero(i_rows[order_t] == j * 7).tolist()) for j in range(40)])
    for name, ranks in (("t2i", t2i), ("i2t", i2t)):
        for k in (1, 5, 10):
            assert m[f"recall_at_{k}_{name}"] == pytest.approx((ranks <= k).mean()), (name, k)
        assert m[f"median_rank_{name}"] == np.median(ranks)
    assert m["retrieval_texts"] == len(t_rows) and m["retrieval_images"] == 40


def test_cosine_draws_and_pca_shapes() -> None:
    rng = np.random.default_rng(4)
    t, i = unit(rng.standard_normal((50, 8)) + 3), unit(rng.standard_normal((60, 8)) - 3)
    draws = cosine_draws(t, i, seed=0, n=1000)
    assert len(draws["cross"]) == 1000 and draws["cross"].mean() < draws["intra_text"].mean()
    assert np.all(np.abs(draws["intra_image"]) <= 1 + 1e-6)
    pt, pi, explained = pca_2d(t, i)
    assert pt.shape == (50, 2) and pi.shape == (60, 2)
    assert explained[0] > 0.5  # the gap is the dominant direction
    assert np.sign(pt[:, 0].mean()) != np.sign(pi[:, 0].mean())


def test_sample_spectrum_matches_covariance_eigenvalues() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((30, 70)) * np.linspace(3, 0.1, 70)
    want = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True)))[::-1][:10]
    np.testing.assert_allclose(sample_spectrum(x, 10), want, rtol=1e-8, atol=1e-10)
