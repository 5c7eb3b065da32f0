"""The fused stage's choice of the combiner's regularisation (fused.choose_c): the smallest C
whose out-of-fold misses are within one example of the fewest."""
from __future__ import annotations

import numpy as np

from medsentry_training import detectors, fused


def test_pick_c_prefers_the_strongest_regularisation_within_one_example():
    assert fused.pick_c({0.03: 9, 0.1: 3, 0.3: 1, 1.0: 0, 3.0: 0}) == 0.3
    assert fused.pick_c({0.03: 9, 0.1: 2, 0.3: 2, 1.0: 1, 3.0: 4}) == 0.1
    # Without ties the fewest misses win, whatever their C.
    assert fused.pick_c({0.03: 9, 0.1: 7, 0.3: 5, 1.0: 3, 3.0: 0}) == 3.0


def test_choose_c_counts_misses_at_both_out_of_fold_thresholds():
    rng = np.random.default_rng(3)
    n_clean, n_adv = 100, 150
    Xc = rng.normal(size=(n_clean, 6))
    Xa = rng.normal(size=(n_adv, 6)) + np.r_[1.5, 1.0, 0, 0, 0, 0]
    fold = detectors.folds(np.arange(n_clean) % 2)
    src = rng.integers(0, n_clean, n_adv)
    choice = fused.choose_c(Xc, Xa, fold, src)
    for c in fused.C_GRID:
        sc, sa = fused.oof_scores(Xc, Xa, fold, src, range(6), c)
        expected = sum(int((sa <= detectors.threshold_at(sc, p)).sum()) for p in fused.FPRS)
        assert choice["advtrain_oof_missed"][str(c)] == expected
        assert np.isclose(choice["advtrain_oof_mean_tpr"][str(c)], 1 - expected / (2 * n_adv))
    assert choice["c"] == fused.pick_c({c: choice["advtrain_oof_missed"][str(c)] for c in fused.C_GRID})
    assert 0 < min(choice["advtrain_oof_missed"].values()) < 2 * n_adv  # overlapping classes: a real choice
