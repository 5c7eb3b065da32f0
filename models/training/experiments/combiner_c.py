"""Experiment (not a stage): the fused combiner's regularisation C chosen on AdvTrain alone.
For each C, the out-of-fold TPR at the 1 % threshold on AdvTrain (what a selection rule may
read) beside AdvTest (what it must not): does the AdvTrain choice carry over?

    cd models/training && .venv/bin/python experiments/combiner_c.py [chest_xray]

Needs the attack stage's records (`attacks --dataset D --only fgsm,bim,pgd20,cw`).
Measured 2026-12-02, over the raw signals before the squeezed copies' feature shift (AdvTrain out-of-fold TPR at 1 % -> AdvTest mean TPR at 1 % over the
14 rows), C = 0.01, 0.03, 0.1, 0.3, 1, 3, 10: chest_xray 41.6/46.1/53.8/64.5/62.7/61.1/57.0
-> 34.7/40.7/46.3/50.5/47.8/46.0/41.1 % (C=0.3 best on both); pneumoniamnist
19.3/17.3/21.5/22.5/22.7/21.1/23.6 -> 21.9/14.1/17.2/16.3/16.0/16.1/17.4 %, no order that
carries over. The
fused stage chooses C on AdvTrain (fused.choose_c) by the mean TPR at its 1 % and 5 %
thresholds, because one threshold is set by 3 of 312 clean images.
"""

import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from common import F, detectors, load

s = load(sys.argv)
BEFORE = [n for n in F.INPUTS if n not in ("squeeze-feature-shift", "log-margin")]  # the raw signals then
Xc, Xa = s.base.clean.matrix(BEFORE), s.base.adv.matrix(BEFORE)
pos = [(fam, b, inp.matrix(BEFORE)[m]) for fam, b, _, inp, m in s.tests]
fold, fa = s.base.fold, s.base.fold[s.base.src]
for c in (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0):
    mk = lambda: LogisticRegression(class_weight="balanced", C=c, max_iter=5000)  # noqa: E731
    sc, sa = np.zeros(len(Xc)), np.zeros(len(Xa))
    for f in range(detectors.N_FOLDS):
        kc, ka = fold != f, fa != f
        sca = StandardScaler().fit(np.vstack([Xc[kc], Xa[ka]]))
        g = mk().fit(sca.transform(np.vstack([Xc[kc], Xa[ka]])), np.r_[np.zeros(kc.sum()), np.ones(ka.sum())])
        sc[~kc], sa[~ka] = g.predict_proba(sca.transform(Xc[~kc]))[:, 1], g.predict_proba(sca.transform(Xa[~ka]))[:, 1]
    t_oof = detectors.threshold_at(sc, 0.01)
    sca = StandardScaler().fit(np.vstack([Xc, Xa]))
    g = mk().fit(sca.transform(np.vstack([Xc, Xa])), np.r_[np.zeros(len(Xc)), np.ones(len(Xa))])
    score = lambda X: g.predict_proba(sca.transform(X))[:, 1]  # noqa: E731
    tpr = [(score(p) > t_oof).mean() for _, _, p in pos]
    print(f"C={c}: AdvTrain OOF TPR@1% {100 * (sa > t_oof).mean():.1f}% | AdvTest clean "
          f"{100 * (score(s.ct.matrix(BEFORE)) > t_oof).mean():.1f}%, TPR mean {100 * np.mean(tpr):.1f}% ["
          + " ".join(f"{f}{b[-1]}:{100 * t:.0f}" for (f, b, _), t in zip(pos, tpr)) + "]", flush=True)
