"""Experiment (not a stage): does the shift of the penultimate features and logits under
feature squeezing (the median and bit-depth passes the sidecar already runs) add to the
fused detector's raw signals? Same protocol as raw_signals.py: fitted on AdvTrain only
(5 folds by clean image), threshold = 1 % quantile of out-of-fold clean AdvTrain scores,
AdvTest scored once, successful attacks only.

    cd models/training && .venv/bin/python experiments/squeeze_shift.py [chest_xray]

Measured 2026-12-02 (clean AdvTest over the threshold, mean TPR over the 14 rows), C=0.3 /
C=1: chest_xray raw signals 1.0 %, 50.5 % / 1.0 %, 47.8 %; + the two shift norms 1.3 %,
56.5 % / 1.0 %, 55.2 %; + the whole shift vectors (132 values) 1.3 %, 54.6 % / 0.6 %, 39.4 %.
pneumoniamnist: raw 0.6 %, 16.3 % / 0.6 %, 16.0 %; + norms 0.6 %, 17.1 % / 1.0 %, 16.5 %.
The fused stage takes the two norms (squeeze.feature_shift): they cost nothing where
feature squeezing runs, since the sidecar already has the copies' features.
"""

import sys
import time

import numpy as np

from common import F, lin, load, oof_fit, report

s = load(sys.argv)


def shift(xx, inp):
    """Per squeezer: features and logits of the squeezed input minus the input's own."""
    cols = []
    for sq in (F.squeeze.squeeze_median, F.squeeze.squeeze_bits):
        lg, ft = s.clf.run(sq(xx), s.clf.logits_name, s.clf.features_name)
        cols += [ft - inp.feats, lg - inp.logits]
    return np.hstack(cols)


t0 = time.time()
S_c, S_a, S_t = shift(s.x[s.tr], s.base.clean), shift(s.base.adv_x, s.base.adv), shift(s.x[s.te], s.ct)
S_p = [shift(xa, inp)[m] for _, _, xa, inp, m in s.tests]
print(f"shift columns {S_c.shape[1]}, {time.time() - t0:.0f}s", flush=True)
BEFORE = [n for n in F.INPUTS if n not in ("squeeze-feature-shift", "log-margin")]  # the raw signals before this experiment
R_c, R_a, R_t = s.base.clean.matrix(BEFORE), s.base.adv.matrix(BEFORE), s.ct.matrix(BEFORE)
R_p = [inp.matrix(BEFORE)[m] for _, _, _, inp, m in s.tests]
nf = s.base.clean.feats.shape[1]
med = slice(0, nf + len(s.spec.labels))
j = lambda A, B: np.hstack([A, B])  # noqa: E731
nrm = lambda S: np.column_stack([np.linalg.norm(S[:, :nf], axis=1), np.linalg.norm(S[:, med.stop:med.stop + nf], axis=1)])  # noqa: E731
for c in (0.3, 1.0):
    report(s, f"raw signals C={c}", *oof_fit(s, lin(c), R_c, R_a, R_t, R_p))
    report(s, f"raw + squeeze shift C={c}", *oof_fit(s, lin(c), j(R_c, S_c), j(R_a, S_a), j(R_t, S_t), [j(r, x) for r, x in zip(R_p, S_p)]))
    report(s, f"raw + median shift C={c}", *oof_fit(s, lin(c), j(R_c, S_c[:, med]), j(R_a, S_a[:, med]), j(R_t, S_t[:, med]),
                                                    [j(r, x[:, med]) for r, x in zip(R_p, S_p)]))
    report(s, f"raw + shift norms C={c}", *oof_fit(s, lin(c), j(R_c, nrm(S_c)), j(R_a, nrm(S_a)), j(R_t, nrm(S_t)),
                                                   [j(r, nrm(x)) for r, x in zip(R_p, S_p)]))
