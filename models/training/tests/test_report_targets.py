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


def _section(rows, fit=False):
    from medsentry_training.report_targets import targets_section
    full = {"fused_detector": {"rows": rows, "clean_advtest": {"fpr_0.01": {"fused": 0.01}}, "advtrain": {"clean": 100},
                               "clean_advtest_margin_median": 0.9},
            "adaptive_fused": {"robust_accuracy_pgd20_ceiling": {"linf_1": 0.7}}}
    if fit:
        full["fit"] = {}
    lines = []
    targets_section(full, lines.append)
    return "\n".join(lines)


def _row(attack, budget, tpr, auroc=0.99, n=20):
    return {"attack": attack, "budget": budget, "n_pos": n, "tpr_fpr_0.01": tpr, "auroc": auroc, "seen": True,
            "clean_margin_median": 0.3}


def test_targets_name_the_range_and_explain_only_a_miss():
    met = _section([_row("pgd20", "linf_1", 1.0), _row("cw", "l2_c1", 1.0)], fit=True)
    assert "100.0 % on all 2 rows | met" in met
    assert "Why the small budgets are missed" not in met
    missed = _section([_row("pgd20", "linf_1", 0.5), _row("cw", "l2_c1", 0.95, auroc=0.97)])
    assert "50.0 % (pgd20 linf_1) to 95.0 % (cw l2_c1) | missed by 40.0 points" in missed
    assert "AUROC >= 0.98 on the same | 0.970 (cw l2_c1) to 0.990 | missed by 0.010" in missed
    assert "succeeds on the hardened model only where" in missed
    # Rows under 5 successful examples do not set the minimum.
    few = _section([_row("pgd20", "linf_1", 0.0, n=4), _row("cw", "l2_c1", 0.92)])
    assert "92.0 % on the one row | met" in few
