"""The pipeline's formulas that have a Rust twin, each against an independent computation
(scikit-learn / scipy where they do the same job, a direct loop otherwise). The Rust side
is held to the same numbers by the parity tests (tests/detector_parity.rs,
tests/out_of_distribution.rs, tests/campaign.rs, tests/screen_real_images.rs).
"""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression

from medsentry_training import campaign, detectors, fused, ood, preprocess, residual, squeeze

RNG = np.random.default_rng(0)


def test_area_resize_rows_sum_to_one_and_integer_factor_is_the_block_mean():
    for n_in, n_out in [(224, 64), (7, 3), (64, 64), (10, 20), (1955, 64)]:
        assert np.allclose(preprocess.area_weights(n_in, n_out).sum(1), 1.0)
    plane = np.arange(16, dtype=np.float64).reshape(4, 4)
    assert preprocess.area_resize(plane, 2, 2).tolist() == [[2.5, 4.5], [10.5, 12.5]]


def test_quantize_rounds_half_up_to_the_grid_in_float32():
    # src/preprocess.rs quantize_rounds_half_up_to_the_grid: the same values, the same bits
    v = np.array([0.0, 1.0, 127.5 / 255, 0.3], np.float32)
    assert preprocess.quantize(v, None).tolist() == v.tolist()
    got = preprocess.quantize(v, 8)
    assert got.dtype == np.float32
    assert got.tolist() == np.array([0.0, 1.0, 128 / 255, 77 / 255], np.float32).tolist()
    # idempotent: an input already on the grid (an 8-bit image at the model's size) is kept
    grid = np.arange(256, dtype=np.float32) / np.float32(255)
    assert np.array_equal(preprocess.quantize(grid, 8), grid)


def test_luma_is_bt601():
    rgb = RNG.random((3, 5, 5))
    got = preprocess.to_model_space(rgb, "gray", 5, 5)[0]
    assert np.allclose(got, 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2], atol=1e-7)


def naive_laplacian(x):
    n, c, h, w = x.shape
    out = np.zeros_like(x, dtype=np.float64)
    at = lambda img, i, j: img[min(max(i, 0), h - 1), min(max(j, 0), w - 1)]  # noqa: E731
    for a in range(n):
        for b in range(c):
            img = x[a, b]
            for i in range(h):
                for j in range(w):
                    out[a, b, i, j] = 4 * img[i, j] - at(img, i - 1, j) - at(img, i + 1, j) - at(img, i, j - 1) - at(img, i, j + 1)
    return out


def test_residual_features_histogram_and_moments():
    x = RNG.random((3, 2, 6, 5)).astype(np.float32)
    lap = naive_laplacian(x.astype(np.float64))
    assert np.allclose(residual.laplacian(x), lap)
    f = residual.features(x, scales=(1,))
    r = np.abs(lap).reshape(3, -1)
    edges = np.array(residual.EDGES_255) / 255
    for k in range(len(edges)):
        hi = edges[k + 1] if k + 1 < len(edges) else np.inf
        share = ((r >= edges[k]) & (r < hi)).mean(1)
        assert np.allclose(f[:, k], np.sqrt(share))
    assert np.allclose(f[:, -2], r.mean(1)) and np.allclose(f[:, -1], np.sqrt((r ** 2).mean(1)))


def test_residual_features_at_coarser_scales_read_block_means():
    x = RNG.random((2, 3, 9, 7)).astype(np.float32)
    n, c, h, w = x.shape
    width = len(residual.EDGES_255) + 2
    f = residual.features(x, scales=(1, 2, 4))
    assert f.shape == (2, 3 * width)
    for k, s in enumerate((1, 2, 4)):
        # The mean of each s x s block, the remainder rows and columns dropped.
        means = np.zeros((n, c, h // s, w // s))
        for i in range(h // s):
            for j in range(w // s):
                means[:, :, i, j] = x[:, :, i * s:(i + 1) * s, j * s:(j + 1) * s].astype(np.float64).mean((2, 3))
        assert np.allclose(f[:, k * width:(k + 1) * width], residual.features(means, scales=(1,)))


def test_the_attacks_differentiable_residual_features_equal_the_exact_ones():
    torch = pytest.importorskip("torch")
    from medsentry_training.adaptive_fused import soft_residual_features

    x = RNG.random((2, 3, 16, 12)).astype(np.float32)
    edges = torch.tensor(residual.EDGES_255, dtype=torch.float32) / 255
    soft = soft_residual_features(torch.from_numpy(x), edges, (1, 2, 4), 3).numpy()
    assert np.allclose(soft, residual.features(x, scales=(1, 2, 4), cooccurrence_t=3), atol=1e-5)


def naive_cooccurrences(x, t):
    """residual.cooccurrences written out pixel by pixel: the Rust twin's values."""
    n, c, h, w = x.shape
    k = 2 * t + 1
    q = np.floor(x.astype(np.float64) * 255 + 0.5)
    out = np.zeros((n, 2 * k * k))
    for order in (1, 2):
        for a in range(n):
            freq = np.zeros(k * k)
            for img in (q[a], q[a].transpose(0, 2, 1)):
                counts, total = np.zeros(k * k), 0
                for ch in img:
                    for row in ch:
                        d = row[1:] - row[:-1] if order == 1 else row[2:] - 2 * row[1:-1] + row[:-2]
                        d = np.clip(d, -t, t).astype(int) + t
                        for i in range(len(d) - 1):
                            counts[d[i] * k + d[i + 1]] += 1
                            total += 1
                freq += counts / max(total, 1)  # a line too short for a pair adds nothing
            out[a, (order - 1) * k * k:order * k * k] = np.sqrt(freq / 2)
    return out


def test_residual_cooccurrences_follow_consecutive_differences_on_the_grid():
    x = (np.floor(RNG.random((2, 3, 7, 6)) * 12 + 0.5) / 255 + 0.3).astype(np.float32)
    f = residual.features(x, scales=(1,), cooccurrence_t=2)
    width = len(residual.EDGES_255) + 2
    assert f.shape == (2, width + 2 * 5 ** 2)  # two orders of (2t + 1)^2 pairs
    assert np.allclose(f[:, width:], naive_cooccurrences(x, 2))
    # Each order's frequencies (two directions averaged) sum to one.
    assert np.allclose((f[:, width:width + 25] ** 2).sum(1), 1) and np.allclose((f[:, width + 25:] ** 2).sum(1), 1)
    # A flat image has every difference 0: all of its weight on the pair (0, 0).
    flat = residual.cooccurrences(np.full((1, 1, 5, 5), 0.5, np.float32), 2)
    assert flat[0, 12] == 1 and flat[0, 25 + 12] == 1 and flat.sum() == 2
    assert residual.features(x, scales=(1,)).shape[1] == width  # 0: no co-occurrences


def test_the_attacks_differentiable_cooccurrences_equal_the_exact_ones():
    torch = pytest.importorskip("torch")
    from medsentry_training.adaptive_fused import soft_cooccurrences

    x = (np.floor(RNG.random((2, 3, 9, 8)) * 10 + 0.5) / 255 + 0.4).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    soft = soft_cooccurrences(xt, 3)
    assert np.allclose(soft.detach().numpy(), residual.cooccurrences(x, 3), atol=1e-5)
    soft.sum().backward()
    assert xt.grad.abs().sum() > 0  # the backward pass reaches the pixels


def test_the_co_occurrences_backward_moves_weight_between_soft_bins():
    torch = pytest.importorskip("torch")
    from medsentry_training.adaptive_fused import SOFT_STEP, PairFrequencies

    t, k = 2, 5
    d = torch.tensor([[[0.0, 1, -1, 2, 0], [1, 1, 0, -2, -1]]], dtype=torch.float64, requires_grad=True)
    upstream = torch.from_numpy(RNG.standard_normal((1, k * k)))
    (PairFrequencies.apply(d, (d.detach() + t).long(), t) * upstream).sum().backward()
    analytic, d.grad = d.grad.clone(), None
    # Written out: exact bins forward, softmax weights over the steps backward, a pair the
    # product of the two (the partner's exact bin in the derivative).
    soft = torch.softmax(-(d[..., None] - torch.arange(-t, t + 1, dtype=torch.float64)) ** 2 / (2 * SOFT_STEP ** 2), -1)
    w = torch.nn.functional.one_hot((d.detach() + t).long(), k).double() + (soft - soft.detach())
    counts = torch.einsum("npa,npb->nab", w[..., :-1, :].reshape(1, -1, k), w[..., 1:, :].reshape(1, -1, k)).reshape(1, -1) / 8
    (counts * upstream).sum().backward()
    assert torch.allclose(analytic, d.grad, atol=1e-12)
    # Moving a difference takes weight from its own bin: the slope's rows sum to zero.
    from medsentry_training.adaptive_fused import softmax_slope
    assert torch.allclose(softmax_slope(t, torch.float64, "cpu").sum(1), torch.zeros(k, dtype=torch.float64), atol=1e-12)


def test_campaign_window_score_is_the_mean_off_diagonal_correlation():
    x = RNG.random((8, 1, 6, 6))
    r = campaign.residuals(x, None)
    assert np.allclose(np.linalg.norm(r, axis=1), 1.0) and np.allclose(r.mean(1), 0.0)
    corr = np.corrcoef(naive_laplacian(x).reshape(8, -1))
    assert np.isclose(campaign.window_score(r), corr[~np.eye(8, dtype=bool)].mean())
    # The Gram-matrix lookup the calibration uses scores the same window.
    g = r @ r.T
    assert np.isclose(campaign.window_score_at(g, [1, 4, 6]), campaign.window_score(r[[1, 4, 6]]))
    # Computed a few images at a time (memory), the rows are the same, bit for bit.
    assert np.array_equal(campaign.residuals(x, None, chunk=3), r)


def test_squeeze_bits_round_half_even_and_median_replicates_edges():
    # 1 bit: levels 0 and 1; 0.5 is a tie and goes to the even level 0
    assert squeeze.squeeze_bits(np.array([0.5, 0.25, 0.75, 1.0], np.float32), 1).tolist() == [0.0, 0.0, 1.0, 1.0]
    assert squeeze.squeeze_bits(np.array([0.98], np.float32), 5).tolist() == [np.float32(30 / 31)]
    x = RNG.random((1, 1, 5, 4)).astype(np.float32)
    m = squeeze.squeeze_median(x, 3)
    p = np.pad(x[0, 0], 1, mode="edge")
    want = np.array([[np.median(p[i:i + 3, j:j + 3]) for j in range(4)] for i in range(5)])
    assert np.allclose(m[0, 0], want)


def test_squeeze_feature_shift_is_the_l2_distance_to_each_copy():
    feats = RNG.random((4, 6))
    copies = [feats + RNG.normal(size=feats.shape) for _ in range(2)]
    got = squeeze.feature_shift(feats, copies)
    want = [[sum((c[i, j] - feats[i, j]) ** 2 for j in range(6)) ** 0.5 for c in copies] for i in range(4)]
    assert got.shape == (4, 2) and np.allclose(got, want, rtol=0, atol=1e-12)


def test_log_margin_is_the_floored_log_of_top_1_minus_top_2():
    logits = np.array([[np.log(3.0), 0.0], [0.0, 0.0]], dtype=np.float32)
    got = detectors.log_margin(logits)
    # (ln 3, 0): softmax (0.75, 0.25), margin 0.5; equal logits: margin 0, floored (the Rust twin's test)
    assert np.allclose(got, [np.log(0.5), np.log(detectors.LOG_MARGIN_FLOOR)], rtol=0, atol=1e-7)
    three = RNG.normal(size=(5, 3)).astype(np.float32)
    p = np.exp(three.astype(np.float64)) / np.exp(three.astype(np.float64)).sum(1, keepdims=True)
    top = [sorted(r)[-1] - sorted(r)[-2] for r in p]
    assert np.allclose(detectors.log_margin(three), np.log(top), rtol=0, atol=1e-12)


def test_ledoit_wolf_and_mahalanobis_match_scikit_learn():
    X = RNG.normal(size=(200, 6)) @ RNG.normal(size=(6, 6))
    cov, _ = detectors.ledoit_wolf(X - X.mean(0))
    assert np.allclose(cov, LedoitWolf(assume_centered=True).fit(X - X.mean(0)).covariance_, atol=1e-8)
    y = (RNG.random(200) < 0.5).astype(np.int64)
    means, prec, _ = detectors.fit_mahalanobis(X, y, 2)
    q = detectors.mahalanobis_score(X[:5], means, prec)
    want = [min(np.sqrt((v - m) @ prec @ (v - m)) for m in means) for v in X[:5]]
    assert np.allclose(q, want)


def test_logistic_regression_agrees_with_scikit_learn_and_thresholds_keep_the_rate():
    X = RNG.normal(size=(300, 4))
    t = (X[:, 0] + 0.5 * X[:, 1] + RNG.normal(scale=0.5, size=300) > 0).astype(np.float64)
    mean, scale, w, b = detectors.fit_logistic(X, t)
    ours = 1 / (1 + np.exp(-detectors.logistic_logit(X, {"mean": mean, "scale": scale, "weights": w, "bias": b})))
    ref = LogisticRegression(class_weight="balanced", C=10.0, max_iter=2000).fit((X - mean) / scale, t)
    assert np.corrcoef(ours, ref.predict_proba((X - mean) / scale)[:, 1])[0, 1] > 0.999
    s = RNG.random(1000)
    thr = detectors.threshold_at(s, 0.01)
    assert (s > thr).sum() <= 10 and (s >= thr).sum() > 10


def test_fused_score_formula_in_the_file_is_scikit_learns():
    X = RNG.normal(size=(200, 5))
    t = (X @ RNG.normal(size=5) > 0).astype(np.float64)
    model = fused.fit_fused(X, t)
    scaler, lr = model
    z = ((X - scaler.mean_) / scaler.scale_) @ lr.coef_[0] + lr.intercept_[0]
    assert np.allclose(fused.fused_score(model, X), 1 / (1 + np.exp(-z)))


def test_ood_layout_vector_cells_histogram_and_chroma():
    x = RNG.random((2, 3, 16, 16))
    v = ood.layout(x, 8)
    cells = x.reshape(2, 3, 8, 2, 8, 2).mean(axis=(3, 5)).reshape(2, -1)
    assert np.allclose(v[:, :cells.shape[1]], cells)
    hist = v[:, cells.shape[1]:cells.shape[1] + ood.BINS] ** 2
    assert np.allclose(hist.sum(1), 1.0)
    assert np.allclose(hist[0], np.histogram(x[0].ravel(), bins=ood.BINS, range=(0, 1))[0] / x[0].size)
    assert v.shape[1] == cells.shape[1] + 2 * ood.BINS


def test_file_chroma_and_the_colour_rule(tmp_path):
    from PIL import Image
    gray, colour = tmp_path / "gray.png", tmp_path / "colour.png"
    Image.fromarray(np.full((4, 6), 128, np.uint8), "L").save(gray)
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 150   # max - min = 100 at every pixel
    Image.fromarray(rgb, "RGB").save(colour)
    assert ood.file_chroma(str(gray)) == 0.0
    assert abs(ood.file_chroma(str(colour)) - 100 / 255) < 1e-12
    c = np.array([0.0, 0.01, 0.03, 0.5])
    assert ood.colour_ood({"max_chroma": 0.02}, c).tolist() == [False, False, True, True]
    assert ood.colour_ood({"min_chroma": 0.02}, c).tolist() == [True, True, False, False]
    assert not ood.colour_ood({}, c).any()


def test_campaign_parity_fixture_is_what_the_pipeline_computes():
    """tests/fixtures/campaign/residual_parity.json (read by the Rust campaign monitor's
    parity test) is current: the pipeline's residuals and window scores of today's code."""
    import json

    import make_campaign_parity

    with open(make_campaign_parity.OUT) as f:
        committed = json.load(f)
    fresh = json.loads(json.dumps(make_campaign_parity.build()))

    # Equal up to the last bits a numpy/BLAS build may round differently (the Rust test
    # holds the sidecar to 1e-5 of these; a formula change moves them by far more).
    def close(a, b):
        if isinstance(a, dict):
            return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
        if isinstance(a, list):
            return isinstance(b, list) and len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
        if isinstance(a, float) or isinstance(b, float):
            return abs(a - b) <= 1e-12 * max(1.0, abs(a))
        return a == b
    assert close(committed, fresh)


def test_forward_batches_of_nothing_has_the_nets_widths():
    """An empty batch gives (0, classes) logits and (0, feature) features, not a 2-class guess."""
    from medsentry_training import advcommon, nets

    net = nets.Normalized(nets.SimpleCNN(3, 7, width=8), [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]).eval()
    x = RNG.random((3, 3, 32, 32)).astype(np.float32)
    logits, feats = advcommon.forward_batches(net, x)
    empty_logits, empty_feats = advcommon.forward_batches(net, x[:0])
    assert logits.shape[0] == 3 and empty_logits.shape == (0, 7) and empty_feats.shape == (0, feats.shape[1])


def test_smooth_pgd_perturbation_is_bounded_and_lives_on_the_coarse_grid():
    """fused_attacks.smooth_pgd: |delta| <= eps, and away from the clamp the perturbation is
    the bilinear upsampling of a grid SMOOTH_FACTOR times coarser (so its pixel-scale
    Laplacian is a small share of a sign step's)."""
    import torch
    from medsentry_training import fused_attacks as FA
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2))
    rng = np.random.default_rng(0)
    x = (0.25 + 0.5 * rng.random((4, 1, 32, 32))).astype(np.float32)  # far from the clamp at 8/255
    y = np.array([0, 1, 0, 1])
    eps = 8 / 255
    d = FA.smooth_pgd(net, x, y, eps) - x
    assert np.abs(d).max() <= eps + 1e-6 and np.abs(d).max() > eps / 4
    lap = lambda a: np.abs(4 * a[..., 1:-1, 1:-1] - a[..., :-2, 1:-1] - a[..., 2:, 1:-1] - a[..., 1:-1, :-2] - a[..., 1:-1, 2:])  # noqa: E731
    sign = eps * np.sign(rng.standard_normal(x.shape))
    assert lap(d).mean() < 0.1 * lap(sign).mean()
    # The steps climb the loss: above the random start alone (the same start, no steps).
    def loss(xa):
        return float(torch.nn.functional.cross_entropy(net(torch.from_numpy(xa)), torch.from_numpy(y)))
    steps, FA.SMOOTH_STEPS = FA.SMOOTH_STEPS, 0
    try:
        start = FA.smooth_pgd(net, x, y, eps)
    finally:
        FA.SMOOTH_STEPS = steps
    assert loss(x + d) > loss(start) + 1e-3
