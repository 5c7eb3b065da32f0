"""Experiment (not a stage): does the log of the confidence margin add to the fused
detector's raw signals? The combiner is linear, and the margin enters it linearly: a
DeepFool, L-BFGS or C&W example stops just past the decision boundary (margin near 0.01),
a clean image the model is unsure of sits at 0.1-0.3, and on a linear scale the two are
close; on a log scale they are far apart. Same protocol as raw_signals.py (fitted on
AdvTrain only, 5 folds by clean image, threshold = 1 % quantile of out-of-fold clean AdvTrain
scores, AdvTest scored once, successful attacks only); the AdvTest rows include the fused
stage's DeepFool and L-BFGS examples (its cache).

    cd models/training && .venv/bin/python experiments/log_margin.py [chest_xray] [C]
"""

import sys

import numpy as np

from common import F, add_minimal_attacks, advtrain_tpr, lin, load, oof_fit, report  # noqa: E402

s = load(sys.argv)
c = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
add_minimal_attacks(s)


def log_margin(inp):
    return np.log(np.maximum(inp.margin, 1e-6))[:, None]


def logit_gap(inp):
    top = np.sort(inp.logits, axis=1)
    return np.log(np.maximum(top[:, -1] - top[:, -2], 1e-6))[:, None]


BEFORE = [n for n in F.INPUTS if n != "log-margin"]  # the raw signals then
R_c, R_a, R_t = s.base.clean.matrix(BEFORE), s.base.adv.matrix(BEFORE), s.ct.matrix(BEFORE)
R_p = [inp.matrix(BEFORE)[m] for _, _, _, inp, m in s.tests]
j = lambda A, B: np.hstack([A, B])  # noqa: E731


def advtrain(Xc, Xa):
    return advtrain_tpr(s, Xc, Xa, c)


print(f"AdvTrain out-of-fold mean TPR, raw signals: {advtrain(R_c, R_a):.1f}%")
report(s, f"raw signals C={c}", *oof_fit(s, lin(c), R_c, R_a, R_t, R_p))
for name, f in (("log margin", log_margin), ("log logit gap", logit_gap)):
    E_c, E_a, E_t = f(s.base.clean), f(s.base.adv), f(s.ct)
    print(f"AdvTrain out-of-fold mean TPR, + {name}: {advtrain(j(R_c, E_c), j(R_a, E_a)):.1f}%")
    E_p = [f(inp)[m] for _, _, _, inp, m in s.tests]
    report(s, f"raw + {name} C={c}", *oof_fit(s, lin(c), j(R_c, E_c), j(R_a, E_a), j(R_t, E_t), [j(r, e) for r, e in zip(R_p, E_p)]))
