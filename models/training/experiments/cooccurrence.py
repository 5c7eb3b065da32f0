"""Experiment (not a stage): do steganalysis co-occurrence features of the served input add
to the fused detector's raw signals at small budgets? On a bundle with quantize_bits = 8 the
served input lies on the 8-bit grid, so the difference of two neighbouring pixels is a whole
number of 1/255 steps; a 1-2/255 perturbation that survives the rounding is +-1 step noise
that decorrelates consecutive differences (SPAM, Pevny et al. 2010). Features: the joint
histogram of two consecutive first-order differences (and of two consecutive second-order
residuals), truncated to [-T, T] steps, horizontal and vertical pooled, square root of the
frequencies; (2T + 1)^2 values per order.

Same protocol as raw_signals.py: fitted on AdvTrain only (5 folds by clean image), threshold =
1 % quantile of the out-of-fold clean AdvTrain scores, AdvTest scored once, successful
attacks only; attacks are the fused stage's caches (`fused --dataset D` made them). The
baseline is the raw signals without the co-occurrences the bundles now serve (the residual
block cut to its histogram scales); C defaults to the bundle's choice (measured 2026-12-04
at the grid fit's: chest 0.3, pneumoniamnist 10, dermoscopy 0.1).

    cd models/training && .venv/bin/python experiments/cooccurrence.py DATASET [T] [C]
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import add_minimal_attacks, advtrain_tpr, lin, load, oof_fit, report  # noqa: E402
from medsentry_training import advcommon as C, fused as F, residual  # noqa: E402


s = load(sys.argv, caches=True)
t = int(sys.argv[2]) if len(sys.argv) > 2 else 3
add_minimal_attacks(s)
with open(os.path.join(C.default_bundle_dir(s.spec), "report.json")) as f:
    c = float(sys.argv[3]) if len(sys.argv) > 3 else json.load(f)["fused_detector"]["regularisation"]["c"]
served = s.clf.served
histogram_width = len(residual.SCALES) * (len(residual.EDGES_255) + 2)


def raw(inp) -> np.ndarray:
    """The fused inputs with the residual block cut to its histogram scales."""
    return np.hstack([b[:, :histogram_width] if name == "residual-features" else b
                      for name, b in zip(F.INPUTS, inp.blocks())])


R_c, R_a, R_t = raw(s.base.clean), raw(s.base.adv), raw(s.ct)
R_p = [raw(inp)[m] for _, _, _, inp, m in s.tests]
E_c, E_a, E_t = (residual.cooccurrences(served(v), t) for v in (s.x[s.tr], s.base.adv_x, s.x[s.te]))
E_p = [residual.cooccurrences(served(xa[m]), t) for _, _, xa, _, m in s.tests]
j = lambda A, B: np.hstack([A, B])  # noqa: E731
print(f"{s.spec.name}: C={c}, T={t}, {E_c.shape[1]} co-occurrence values", flush=True)
print(f"AdvTrain out-of-fold mean TPR, raw signals: {advtrain_tpr(s, R_c, R_a, c):.1f}%", flush=True)
report(s, "raw signals", *oof_fit(s, lin(c), R_c, R_a, R_t, R_p))
print(f"AdvTrain out-of-fold mean TPR, + co-occurrence: {advtrain_tpr(s, j(R_c, E_c), j(R_a, E_a), c):.1f}%", flush=True)
report(s, "raw + co-occurrence", *oof_fit(s, lin(c), j(R_c, E_c), j(R_a, E_a), j(R_t, E_t), [j(r, e) for r, e in zip(R_p, E_p)]))
report(s, "co-occurrence alone", *oof_fit(s, lin(c), E_c, E_a, E_t, E_p))
