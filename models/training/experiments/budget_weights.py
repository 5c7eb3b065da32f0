"""Experiment (not a stage): does the combiner miss small budgets because the large ones
outnumber them in AdvTrain? At 8/255 PGD-20 succeeds on 3-10 times more AdvTrain images than
at 1/255, so with every successful example weighted alike the logistic regression is fitted
mostly on large perturbations. Weightings compared (the clean images always carry the same
total weight as the examples, as class_weight="balanced" does):

- alike: every example the same weight (the fused stage today);
- per-row: every (attack, budget) row of AdvTrain the same total weight;
- sqrt: each example 1 / sqrt(its row's size);
- small-only: rows above 4/255 left out.

    cd models/training && .venv/bin/python experiments/budget_weights.py [chest_xray] [C]

Needs the attack stage's records (`attacks --dataset D --served-only --only fgsm,bim,pgd20,cw`).
Protocol as common.py: fitted on AdvTrain only, threshold from out-of-fold clean AdvTrain.

Measured 2026-12-03 on chest_xray, C = 0.3 (AdvTrain rows: 12 examples at 1/255 per
FGSM/BIM/PGD-20, 27-28 at 2/255, 55-57 at 4/255, 112-146 at 8/255, 177 C&W). AdvTest clean
over the threshold / mean TPR at 1 % over the 13 seen rows / lowest small-budget row:
alike 1.6 % / 61.4 % / 41 % (PGD-20 2/255); per-row 1.0 % / 57.5 % / 41 %; sqrt 1.3 % /
60.5 % / 37 %; small-only 1.3 % / 41.6 % / 30 %. Re-weighting moves the 1/255 rows by one or
two of their 13 examples and costs the 8/255 rows 10-20 points: the small budgets are not
missed for want of weight. The fused stage keeps every example alike.
"""

import sys

import numpy as np

from common import F, detectors, fit_weighted, load, report

s = load(sys.argv)
c = float(sys.argv[2]) if len(sys.argv) > 2 else 0.3
# The row of every AdvTrain example, in the order advtrain_base stacked them.
att_tr, _ = F.attacks_from_records(s.spec, s.tr, s.te)
clean_pred = s.base.clean.pred
rows = np.concatenate([np.full(int(F.successful(F.Inputs(s.clf, xa), s.y[s.tr], clean_pred).sum()), k)
                       for k, (_, _, xa) in enumerate(att_tr)])
assert len(rows) == len(s.base.src), (len(rows), len(s.base.src))
names = [f"{fam} {b}" for fam, b, _ in att_tr]
size = np.bincount(rows, minlength=len(att_tr))
print("AdvTrain rows: " + ", ".join(f"{n} {k}" for n, k in zip(names, size)), flush=True)
Xc, Xa = s.base.matrices()
small = np.array([not b.endswith("_8") for _, b, _ in att_tr])


def run(name: str, wa: np.ndarray) -> None:
    keep = wa > 0
    fa = s.base.fold[s.base.src]
    oof = np.zeros(len(Xc))
    for f in range(detectors.N_FOLDS):
        kc, ka = s.base.fold != f, (fa != f) & keep
        oof[~kc] = fit_weighted(Xc[kc], Xa[ka], wa[ka], c)(Xc[~kc])
    score = fit_weighted(Xc, Xa[keep], wa[keep], c)
    report(s, name, oof, score(s.ct.matrix()), [score(inp.matrix()[m]) for _, _, _, inp, m in s.tests])


run("alike", np.ones(len(rows)))
run("per-row", 1.0 / size[rows])
run("sqrt", 1.0 / np.sqrt(size[rows]))
run("small-only", small[rows].astype(float))
