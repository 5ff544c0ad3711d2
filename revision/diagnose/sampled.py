"""Gap metrics on seeded samples of unit rows: modality separability, paired retrieval, cosine draws.

All functions take unit float32 rows already in memory (a sample of a store) and are
deterministic for a given seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# L2 penalty of the logistic regression, per training row: small enough that a real gap is
# separated perfectly, large enough that 768 free weights cannot memorise a no-gap sample.
_L2 = 1e-3


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, max_iter: int = 200, history: int = 20) -> np.ndarray:
    """Weights minimising mean binary cross-entropy of x @ w + l2·‖w[:-1]‖² (last column: the bias).

    L-BFGS with a backtracking (Armijo) line search in NumPy float64: the problem is smooth and
    strictly convex, so this finds the optimum torch.optim.LBFGS found, without loading torch (and
    torch._dynamo, which its optimizers import: seconds and ~250 MB for a 20-row diagnosis).
    """
    n = len(y)

    def loss_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ w
        loss = float(np.mean(np.logaddexp(0.0, z) - y * z) + l2 * (w[:-1] @ w[:-1]))
        g = x.T @ (0.5 * (1.0 + np.tanh(0.5 * z)) - y) / n
        g[:-1] += 2.0 * l2 * w[:-1]
        return loss, g

    w = np.zeros(x.shape[1])
    f, g = loss_grad(w)
    pairs: list[tuple[np.ndarray, np.ndarray, float]] = []
    for _ in range(max_iter):
        if np.abs(g).max() <= 1e-7:
            break
        q, alphas = g.copy(), []
        for s, yv, rho in reversed(pairs):
            a = rho * (s @ q)
            q -= a * yv
            alphas.append(a)
        if pairs:
            s, yv, _ = pairs[-1]
            q *= (s @ yv) / (yv @ yv)
        for (s, yv, rho), a in zip(pairs, reversed(alphas), strict=True):
            q += s * (a - rho * (yv @ q))
        d = -q
        slope = float(g @ d)
        if slope >= 0:  # not a descent direction: restart from the gradient
            pairs.clear()
            d, slope = -g, -float(g @ g)
        t = 1.0
        f_new, g_new = loss_grad(w + d)
        while f_new > f + 1e-4 * t * slope and t > 1e-10:
            t *= 0.5
            f_new, g_new = loss_grad(w + t * d)
        s, yv = t * d, g_new - g
        if s @ yv > 1e-12:
            pairs.append((s, yv, 1.0 / float(s @ yv)))
            del pairs[:-history]
        done = abs(f - f_new) <= 1e-9 * max(1.0, abs(f))
        w, f, g = w + s, f_new, g_new
        if done:
            break
    return w


def linear_separability(text: np.ndarray, image: np.ndarray, *, seed: int, max_rows: int = 20_000) -> dict:
    """Held-out accuracy of a logistic-regression modality classifier (0.5 = no gap).

    A balanced sample (the same number of rows from each modality, at most `max_rows / 2` each)
    is split 80/20 at random; the classifier is fitted by full-batch L-BFGS in float64 (NumPy).
    """
    rng = np.random.default_rng(seed)
    n = min(len(text), len(image), max_rows // 2)
    if n < 5:
        raise ValueError(f"separability needs at least 5 rows per modality, got {n}")
    x = np.concatenate([text[rng.choice(len(text), n, replace=False)], image[rng.choice(len(image), n, replace=False)]])
    y = np.concatenate([np.zeros(n), np.ones(n)])
    order = rng.permutation(2 * n)
    n_train = int(round(0.8 * 2 * n))
    train, test = order[:n_train], order[n_train:]
    x = x.astype(np.float64)
    centre = x[train].mean(axis=0)
    # Unit rows have coordinates of order 1/sqrt(D); rescaling keeps L-BFGS well conditioned.
    scale = float((x[train] - centre).std()) or 1.0
    feats = np.hstack([(x - centre) / scale, np.ones((2 * n, 1))])
    w = _fit_logistic(feats[train], y[train], _L2)
    pred = (feats @ w) > 0
    acc_test = float((pred[test] == y[test].astype(bool)).mean())
    acc_train = float((pred[train] == y[train].astype(bool)).mean())
    return {
        "linear_separability": acc_test,
        "linear_separability_train": acc_train,
        "separability_rows_per_modality": n,
    }


def _best_correct(queries: np.ndarray, gallery: np.ndarray, q_idx: np.ndarray, g_idx: np.ndarray) -> np.ndarray:
    """Per query, the highest score among its correct gallery items (pairs q_idx[p] ↔ g_idx[p])."""
    scores = np.einsum("ij,ij->i", queries[q_idx], gallery[g_idx])
    best = np.full(len(queries), -np.inf, dtype=scores.dtype)
    np.maximum.at(best, q_idx, scores)
    return best


def retrieval(
    text_rows: np.ndarray, image_rows: np.ndarray, text_vecs: np.ndarray, image_vecs: np.ndarray, block: int = 1024
) -> dict[str, Any]:
    """Recall@1/5/10 and median rank, text→image and image→text, among the given pairs.

    Pair p joins text row text_rows[p] to image row image_rows[p]; text_vecs / image_vecs are
    the unit vectors of those rows, in the same order. The gallery of each direction is the set
    of distinct rows of the other modality in the pairs; a query may have several correct items
    (one image, five captions), and its rank is that of the best of them: 1 + the number of
    gallery items scoring strictly higher. Both directions come from one pass over the
    text × image similarity matrix, a block of text rows at a time.
    """
    ut, t_first, t_inv = np.unique(text_rows, return_index=True, return_inverse=True)
    ui, i_first, i_inv = np.unique(image_rows, return_index=True, return_inverse=True)
    t_gal = np.ascontiguousarray(text_vecs[t_first])
    i_gal = np.ascontiguousarray(image_vecs[i_first])
    best_t = _best_correct(t_gal, i_gal, t_inv, i_inv)
    best_i = _best_correct(i_gal, t_gal, i_inv, t_inv)
    # Scores recomputed by the matmul may differ from the einsum's in the last bit; a correct
    # item must never count as scoring above itself, so compare with a little slack.
    slack = 1e-6
    t_above = np.empty(len(ut), dtype=np.int64)
    i_above = np.zeros(len(ui), dtype=np.int64)
    for s in range(0, len(ut), block):
        sims = t_gal[s : s + block] @ i_gal.T
        t_above[s : s + block] = (sims > best_t[s : s + block, None] + slack).sum(axis=1)
        i_above += (sims > best_i[None, :] + slack).sum(axis=0)
    out: dict[str, Any] = {"retrieval_texts": len(ut), "retrieval_images": len(ui)}
    for name, ranks in (("t2i", 1 + t_above), ("i2t", 1 + i_above)):
        for k in (1, 5, 10):
            out[f"recall_at_{k}_{name}"] = float((ranks <= k).mean())
        out[f"median_rank_{name}"] = float(np.median(ranks))
    return out


def cosine_draws(text: np.ndarray, image: np.ndarray, *, seed: int, n: int = 50_000) -> dict[str, np.ndarray]:
    """Cosines of random pairs: cross (text, image), intra text and intra image (a ≠ b)."""
    rng = np.random.default_rng(seed)

    def draw(a: np.ndarray, b: np.ndarray, distinct: bool) -> np.ndarray:
        ia = rng.integers(0, len(a), n)
        ib = rng.integers(0, len(b), n)
        if distinct:
            keep = ia != ib
            ia, ib = ia[keep], ib[keep]
        return np.einsum("ij,ij->i", a[ia], b[ib])

    return {
        "cross": draw(text, image, False),
        "intra_text": draw(text, text, True),
        "intra_image": draw(image, image, True),
    }


def pca_2d(text: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Both samples projected on the top two principal axes of the pooled sample.

    Returns (text_xy, image_xy, explained) with `explained` the fraction of the pooled variance
    on each axis.
    """
    pooled = np.concatenate([text, image]).astype(np.float64)
    centre = pooled.mean(axis=0)
    cov = np.cov(pooled - centre, rowvar=False, bias=True)
    vals, vecs = np.linalg.eigh(cov)
    axes = vecs[:, ::-1][:, :2]
    total = float(vals.sum()) or 1.0
    explained = [float(v / total) for v in vals[::-1][:2]]
    return (text - centre) @ axes, (image - centre) @ axes, explained


def sample_spectrum(x: np.ndarray, top: int | None = None) -> np.ndarray:
    """Covariance eigenvalues of a sample, largest first (the `top` largest when given)."""
    centred = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)
    if len(x) >= x.shape[1]:
        vals = np.linalg.eigvalsh(centred.T @ centred / len(x))[::-1]
    else:
        # Singular values of the (n, D) sample avoid forming D×D when D ≫ n.
        vals = np.linalg.svd(centred, compute_uv=False) ** 2 / len(x)
    return np.clip(vals, 0.0, None)[:top]
