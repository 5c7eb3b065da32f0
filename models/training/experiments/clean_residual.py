"""Experiment (not a stage): does the input-space part of the verdict get better when its
clean side is not limited to the 300 or so clean AdvTrain images?

The fused combiner reads the residual statistics (Laplacian histograms, co-occurrences) as
raw columns beside the network's features, and learns all of them from the clean AdvTrain
images alone: its 1 % threshold rests on 3 of them. The network's features cannot take
more clean images (images the hardened model was trained on score lower than new ones,
clean_pool.py), but the residual statistics do not go through the network: an X-ray of
the training split has the same noise as one of the test split. Here the residual block
is replaced by one score, a logistic regression over the residual statistics fitted on the
clean AdvTrain images plus N_EXTRA of the training split (their statistics only) against
AdvTrain's successful examples; the combiner reads that score (out of fold on AdvTrain)
beside the network's inputs. Thresholds stay on clean AdvTrain's out-of-fold scores.

    cd models/training && .venv/bin/python experiments/clean_residual.py DATASET [N_EXTRA] [C_RESIDUAL]

Measured 2026-12-04 (N_EXTRA 2000, residual C 1; AdvTest mean TPR at the 1 % threshold over
18 rows incl. DeepFool and L-BFGS, AdvTrain out-of-fold mean TPR in brackets):

                                       chest               dermoscopy
  residual score alone, 312/300 clean  29.7 %              23.4 %
  residual score alone, + 2000 clean   42.1 %              26.9 %
  served inputs                        73.5 % (84.0)       52.7 % (62.0)
  network + score, + 2000 clean        68.3 % (74.2)       40.9 % (52.3)
  served + score, + 2000 clean         72.3 % (83.6)       51.7 % (60.8)

More clean images do make the input-space score better on its own (chest +12 points, clean
AdvTest 0.0 % over its 1 % threshold in both), but not the verdict: the combiner already
reads those statistics, and its threshold is still set by the 300 clean AdvTrain images
that the network's inputs need. One thing it showed: the network's inputs with one residual
score caught chest's 1/255 rows at 69-77 % (served 38-54 %) and lost the 4-8/255 rows
(53-78 % against 94-99 %): one hyperplane trades the budgets against each other
(combiner_heads.py takes that up). Not served.
"""
import json
import os
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import add_minimal_attacks, advtrain_tpr, lin, load, oof_fit, report  # noqa: E402
from medsentry_training import advcommon as C, datasets, detectors, fused as F, residual  # noqa: E402

s = load(sys.argv, caches=True)
add_minimal_attacks(s)
n_extra = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
c_res = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
with open(os.path.join(C.default_bundle_dir(s.spec), "report.json")) as f:
    c = json.load(f)["fused_detector"]["regularisation"]["c"]
with open(os.path.join(C.default_bundle_dir(s.spec), "detector_residual.json")) as f:
    rj = json.load(f)
scales, t = rj["scales"], rj.get("cooccurrence_t", 0)

x_train, _, _ = datasets.load_split(s.spec, "train")
pick = np.random.default_rng(0).permutation(len(x_train))[:n_extra]
Fx = residual.features(s.clf.served(x_train[pick]), scales, t)
Fc, Fa, Ft = s.base.clean.residual_features, s.base.adv.residual_features, s.ct.residual_features
Fp = [inp.residual_features[m] for _, _, _, inp, m in s.tests]
print(f"{s.spec.name}: combiner C={c}, residual C={c_res}, {Fc.shape[1]} residual values, "
      f"{len(Fc)} clean AdvTrain + {len(Fx)} training-split images, {len(Fa)} examples", flush=True)


def fit_res(clean, adv):
    X = np.vstack([clean, adv])
    sc = StandardScaler().fit(X)
    lr = LogisticRegression(class_weight="balanced", C=c_res, max_iter=5000).fit(
        sc.transform(X), np.r_[np.zeros(len(clean)), np.ones(len(adv))])
    return lambda Z: lr.decision_function(sc.transform(Z))


def res_scores(extra):
    """Out-of-fold residual scores of clean AdvTrain and its examples, and the all-AdvTrain
    model's scores of clean AdvTest and each attack row; `extra` always on the clean side."""
    oc, oa = np.zeros(len(Fc)), np.zeros(len(Fa))
    fa = s.base.fold[s.base.src]
    for f in range(detectors.N_FOLDS):
        kc, ka = s.base.fold != f, fa != f
        g = fit_res(np.vstack([Fc[kc], extra]), Fa[ka])
        oc[~kc], oa[~ka] = g(Fc[~kc]), g(Fa[~ka])
    g = fit_res(np.vstack([Fc, extra]), Fa)
    return oc, oa, g(Ft), [g(p) for p in Fp]


no_extra = res_scores(np.zeros((0, Fc.shape[1])))
with_extra = res_scores(Fx)
report(s, "residual alone, AdvTrain clean only", no_extra[0], *no_extra[2:])
report(s, f"residual alone, + {len(Fx)} clean", with_extra[0], *with_extra[2:])

others = [n for n in F.INPUTS if n != "residual-features"]
N_c, N_a, N_t = s.base.clean.matrix(others), s.base.adv.matrix(others), s.ct.matrix(others)
N_p = [inp.matrix(others)[m] for _, _, _, inp, m in s.tests]
R_c, R_a, R_t = s.base.clean.matrix(), s.base.adv.matrix(), s.ct.matrix()
R_p = [inp.matrix()[m] for _, _, _, inp, m in s.tests]
j = lambda A, v: np.hstack([A, v[:, None]])  # noqa: E731
print(f"AdvTrain out-of-fold mean TPR, served inputs: {advtrain_tpr(s, R_c, R_a, c):.1f}%", flush=True)
report(s, "served inputs", *oof_fit(s, lin(c), R_c, R_a, R_t, R_p))
for name, (oc, oa, tc, tp) in (("residual score (AdvTrain clean only)", no_extra), (f"residual score (+{len(Fx)} clean)", with_extra)):
    print(f"AdvTrain out-of-fold mean TPR, network + {name}: {advtrain_tpr(s, j(N_c, oc), j(N_a, oa), c):.1f}%", flush=True)
    report(s, f"network + {name}", *oof_fit(s, lin(c), j(N_c, oc), j(N_a, oa), j(N_t, tc), [j(p, q) for p, q in zip(N_p, tp)]))
    print(f"AdvTrain out-of-fold mean TPR, served + {name}: {advtrain_tpr(s, j(R_c, oc), j(R_a, oa), c):.1f}%", flush=True)
    report(s, f"served + {name}", *oof_fit(s, lin(c), j(R_c, oc), j(R_a, oa), j(R_t, tc), [j(p, q) for p, q in zip(R_p, tp)]))
