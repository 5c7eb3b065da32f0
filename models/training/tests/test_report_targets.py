"""REPORT.md's statement of how often the clean-rate target is missed by chance, against a
simulation of the calibration it describes (detectors.threshold_at on clean scores, then a
fresh clean half counted over the threshold)."""
from __future__ import annotations

import numpy as np

from medsentry_training import detectors
from medsentry_training.report_targets import over_calibration


def test_over_calibration_matches_a_simulated_threshold():
    rng = np.random.default_rng(0)
    n_fit, n_test, trials = 300, 300, 20000
    fit = rng.random((trials, n_fit))
    thresholds = np.array([detectors.threshold_at(row, 0.01) for row in fit])
    over = (rng.random((trials, n_test)) > thresholds[:, None]).sum(1)
    for count in (3, 5, 8):
        assert abs((over >= count).mean() - over_calibration(n_fit, n_test, 0.01, count)) < 0.01, count
