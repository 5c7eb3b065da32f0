"""scikit-learn in place of the pipeline's hand-written Ledoit-Wolf covariance, learned
logistic detector and AUROC: each against the hand-written code it replaced (kept here as
the reference), on fixed data shaped like the detectors' (a 66-d penultimate layer + 2
logits, dead units, nearly separable clean vs adversarial classes of unequal size).

Tolerances (relative to the largest value): covariance and precision 1e-12; logistic
weights and bias 1e-8 (the Newton iteration stopped at steps < 1e-10, scikit-learn's
Newton-Cholesky at |gradient| < 1e-12); AUROC 1e-12 absolute. A fitted detector file
would move by less than 1e-6 relative, the bar for replacing hand-written code here.
"""
from __future__ import annotations

import numpy as np

from medsentry_training import advcommon, detectors, export

RNG = np.random.default_rng(7)


def hand_ledoit_wolf(X):
    n, d = X.shape
    S = X.T @ X / n
    mu = np.trace(S) / d
    delta = ((S - mu * np.eye(d)) ** 2).sum() / d
    beta = sum((((np.outer(x, x) - S) ** 2).sum()) for x in X) / (n * n * d)
    a = float(min(beta, delta) / delta) if delta > 0 else 1.0
    return (1 - a) * S + a * mu * np.eye(d), a


def hand_logistic(X, t, l2=detectors.L2_REG, iters=100):
    mean = X.mean(0)
    scale = X.std(0)
    scale[scale < 1e-8] = 1.0
    Z = (X - mean) / scale
    n, d = Z.shape
    sw = np.where(t == 1, 0.5 / max(1, t.sum()), 0.5 / max(1, (1 - t).sum()))
    A = np.hstack([Z, np.ones((n, 1))])
    theta = np.zeros(d + 1)
    reg = np.full(d + 1, l2); reg[-1] = 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(A @ theta)))
        grad = A.T @ (sw * (p - t)) + reg * theta
        H = (A * (sw * p * (1 - p))[:, None]).T @ A + np.diag(reg) + 1e-10 * np.eye(d + 1)
        step = np.linalg.solve(H, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return mean, scale, theta[:-1], float(theta[-1])


def hand_auc(scores, y):
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    s = scores[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = y == 1
    n1, n0 = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def features(n_clean=300, n_adv=850, d=66, shift=0.6):
    """ReLU-like features with 4 dead units; the adversarial class shifted along a few directions."""
    mix = RNG.normal(size=(d, d)) / np.sqrt(d)
    clean = np.maximum(RNG.normal(size=(n_clean, d)) @ mix + 0.3, 0)
    adv = np.maximum(RNG.normal(size=(n_adv, d)) @ mix + 0.3 + shift * (RNG.random(d) < 0.2), 0)
    X = np.vstack([clean, adv])
    X[:, :4] = 0.0
    return X, np.r_[np.zeros(n_clean), np.ones(n_adv)]


def rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def test_ledoit_wolf_and_the_mahalanobis_precision_match_the_hand_written_code():
    X, t = features()
    X[:, :4] = RNG.normal(size=(len(X), 4))  # no dead units: the covariance must be invertible
    y = t.astype(np.int64)
    means = np.stack([X[y == c].mean(0) for c in (0, 1)])
    centred = X - means[y]
    cov, a = detectors.ledoit_wolf(centred)
    ref_cov, ref_a = hand_ledoit_wolf(centred)
    assert rel(cov, ref_cov) < 1e-12 and abs(a - ref_a) < 1e-12 * ref_a
    _, precision, _ = detectors.fit_mahalanobis(X, y, 2)
    ref_p = np.linalg.inv(ref_cov)
    assert rel(precision, (ref_p + ref_p.T) / 2) < 1e-12


def test_learned_logistic_matches_the_hand_written_newton_iteration():
    for shift in (0.6, 1.5):  # overlapping, and nearly separable (large weights)
        X, t = features(shift=shift)
        mean, scale, w, b = detectors.fit_logistic(X, t)
        r_mean, r_scale, r_w, r_b = hand_logistic(X, t)
        assert np.array_equal(mean, r_mean) and np.array_equal(scale, r_scale)
        assert rel(np.r_[w, b], np.r_[r_w, r_b]) < 1e-8, (shift, rel(np.r_[w, b], np.r_[r_w, r_b]))
        z = detectors.logistic_logit(X, {"mean": mean, "scale": scale, "weights": w, "bias": b})
        r_z = detectors.logistic_logit(X, {"mean": r_mean, "scale": r_scale, "weights": r_w, "bias": r_b})
        assert np.abs(z - r_z).max() < 1e-7


def test_auroc_matches_the_rank_sum_formula_with_ties():
    neg = np.round(RNG.normal(size=400), 1)  # rounded: many ties, within and across classes
    pos = np.round(RNG.normal(0.7, 1.0, size=150), 1)
    s = np.r_[neg, pos]
    y = np.r_[np.zeros(400), np.ones(150)]
    assert abs(advcommon.auroc(neg, pos) - hand_auc(s, y)) < 1e-12
    assert abs(export.auc(s, y) - hand_auc(s, y)) < 1e-12
    assert advcommon.auroc(neg, pos[:0]) is None
