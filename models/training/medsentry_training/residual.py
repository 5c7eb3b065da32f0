"""The residual-statistics detector (detector_residual.json), fitted by the `fused` stage.

Steganalysis-style (Liu et al. 2019, in spirit): it reads the input, not the network.
Gradient attacks add dense, small, high-frequency changes to images that are smooth at
the model's resolution (area-downsampled radiographs); the 4-neighbour Laplacian of the
[0, 1] model input (edges replicated, every channel) shows them. Features: the square root
of the share of |residual| values in each bin of EDGES (in 1/255 units), the mean |residual|
and the root mean square residual, at each scale in SCALES: the image itself and its
s x s block means (a remainder row or column dropped). A perturbation made smooth, so that
the full-resolution Laplacian hardly moves (adaptive_fused's low-pass attack), is again
dense and high-frequency on a coarser grid. Since 2026-12-04 also (cooccurrence_t = T > 0) the
co-occurrences of SPAM (Pevny et al. 2010): on the 8-bit grid the difference of two
neighbouring pixels is a whole number of 1/255 steps, and a 1-4/255 perturbation that
survives the rounding is +-1 step noise that decorrelates consecutive differences. Values:
the joint frequencies of two consecutive first-order differences, then of two consecutive
second-order differences, in steps (floor(255 v + 0.5)), clipped to [-T, T], along rows and
along columns (per channel), the two directions' frequencies averaged, square-rooted:
2 (2T + 1)^2 values after the scales' (experiments/cooccurrence.py: T = 3 took the chest
bundle's out-of-fold AdvTrain mean TPR from 75.4 to 80.9 %, T = 2 80.0 %, T = 4 76.0 %). Score = logistic regression (scikit-learn, standardised
features, classes balanced) of clean vs successful adversarial AdvTrain inputs:
    score = 1 / (1 + exp(-(bias + sum_i weights[i] * (f[i] - mean[i]) / scale[i])))
Its Rust twin is src/defense/residual.rs.
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

# Bin edges of |residual| in 1/255 units (the last bin is open).
EDGES_255 = (0, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32)
# Block sizes the features are computed at (1: the image itself). A detector file without
# `scales` was fitted at 1 only.
SCALES = (1, 2, 4)
# Clip of the co-occurrences, in 1/255 steps (0: none; a file without `cooccurrence_t` has none).
COOCCURRENCE_T = 3


def block_means(x: np.ndarray, s: int) -> np.ndarray:
    """(N, C, H, W) -> (N, C, H // s, W // s): the mean of each s x s block, float64."""
    x = x.astype(np.float64)
    if s == 1:
        return x
    n, c, h, w = x.shape
    h2, w2 = h // s, w // s
    return x[:, :, :h2 * s, :w2 * s].reshape(n, c, h2, s, w2, s).mean((3, 5))


def laplacian(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> 4 * x - the 4 neighbours (edges replicated), float64."""
    x = x.astype(np.float64)
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    return 4 * x - p[:, :, :-2, 1:-1] - p[:, :, 2:, 1:-1] - p[:, :, 1:-1, :-2] - p[:, :, 1:-1, 2:]


def features(x: np.ndarray, scales=SCALES, cooccurrence_t: int = 0) -> np.ndarray:
    """(N, C, H, W) [0, 1] -> (N, len(scales) * (len(EDGES_255) + 2) [+ 2 (2t + 1)^2]), scale
    by scale, then the co-occurrences when cooccurrence_t > 0."""
    blocks = [features_at(block_means(x, s)) for s in scales]
    if cooccurrence_t > 0:
        blocks.append(cooccurrences(x, cooccurrence_t))
    return np.hstack(blocks)


def cooccurrences(x: np.ndarray, t: int) -> np.ndarray:
    """(N, C, H, W) [0, 1] -> (N, 2 (2t + 1)^2): first-order, then second-order."""
    q = np.floor(x.astype(np.float64) * 255 + 0.5).astype(np.int64)
    n, k = len(q), 2 * t + 1
    out = []
    for order in (1, 2):
        freq = np.zeros((n, k * k))
        for rows in (q, np.swapaxes(q, 2, 3)):  # along rows, then along columns
            d = np.clip(np.diff(rows, n=order, axis=3), -t, t) + t
            code = (d[..., :-1] * k + d[..., 1:]).reshape(n, -1)
            freq = freq + np.stack([np.bincount(c, minlength=k * k) for c in code]) / max(code.shape[1], 1)
        out.append(np.sqrt(freq / 2))
    return np.hstack(out)


def features_at(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) [0, 1] -> (N, len(EDGES_255) + 2), of the image as it is."""
    r = np.abs(laplacian(x)).reshape(len(x), -1)
    edges = np.array(EDGES_255, dtype=np.float64) / 255
    # Bin k holds [edges[k], edges[k+1]); the last bin [edges[-1], inf).
    idx = np.searchsorted(edges, r, side="right") - 1
    hist = np.stack([np.bincount(row, minlength=len(edges)) for row in idx]) / r.shape[1]
    return np.column_stack([np.sqrt(hist), r.mean(1), np.sqrt((r ** 2).mean(1))])


def fit(f_clean: np.ndarray, f_adv: np.ndarray):
    X = np.vstack([f_clean, f_adv])
    t = np.r_[np.zeros(len(f_clean)), np.ones(len(f_adv))]
    scaler = StandardScaler().fit(X)
    return scaler, LogisticRegression(class_weight="balanced", C=1.0, max_iter=2000).fit(scaler.transform(X), t)


def score(model, f: np.ndarray) -> np.ndarray:
    scaler, lr = model
    return lr.predict_proba(scaler.transform(f))[:, 1]


def out_of_fold(f_clean, f_adv, fold, src_fold, folds: int):
    """Scores of clean AdvTrain and its adversarial examples from models fitted without
    their fold (an example goes with its clean image's fold)."""
    sc, sa = np.zeros(len(f_clean)), np.zeros(len(f_adv))
    for k in range(folds):
        m = fit(f_clean[fold != k], f_adv[src_fold != k])
        sc[fold == k] = score(m, f_clean[fold == k])
        sa[src_fold == k] = score(m, f_adv[src_fold == k])
    return sc, sa


def to_json(model, thresholds: dict, fitted_on: str, scales=SCALES, cooccurrence_t: int = COOCCURRENCE_T) -> dict:
    scaler, lr = model
    return {"kind": "residual_statistics", "edges_255": list(EDGES_255), "scales": list(scales),
            "cooccurrence_t": cooccurrence_t, "mean": scaler.mean_.tolist(),
            "scale": scaler.scale_.tolist(), "weights": lr.coef_[0].tolist(), "bias": float(lr.intercept_[0]),
            "thresholds": thresholds, "features": "sqrt of the share of |4-neighbour Laplacian| of the [0, 1] input in "
            "each [edges[k], edges[k+1]) / 255 bin (last open), mean |r|, sqrt(mean r^2); at each scale s, of the "
            "means of the input's s x s blocks (remainder dropped), scale after scale; then, when cooccurrence_t = T > 0, "
            "sqrt of the joint frequencies of two consecutive first-order (then second-order) differences of "
            "floor(255 v + 0.5), clipped to [-T, T], index (a + T) (2T + 1) + (b + T), along rows and along "
            "columns of every channel, the two directions' frequencies averaged",
            "score": "1 / (1 + exp(-(bias + sum_i weights[i] * (f[i] - mean[i]) / scale[i])))",
            "fitted_on": fitted_on, "generated_by": "python -m medsentry_training.fused"}
