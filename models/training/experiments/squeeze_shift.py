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
import json, os, sys, time
import numpy as np
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from medsentry_training import advcommon as C, datasets, detectors, fused as F, squeeze
from medsentry_training.ood import Classifier

spec = datasets.SPECS[sys.argv[1] if len(sys.argv) > 1 else "chest_xray"]
out_dir = C.default_bundle_dir(spec)
clf = Classifier(out_dir)
x, y, _ = datasets.load_split(spec, "test")
split = json.load(open(os.path.join(out_dir, "adv_split.json")))
tr, te = (np.array(split[h]["index"], dtype=np.int64) for h in ("AdvTrain", "AdvTest"))
att_tr, att_te = F.attacks_from_records(spec, tr, te)
base = F.advtrain_base(clf, x[tr], y[tr], att_tr, 2)


def shift(xx, inp):
    """Per squeezer: features and logits of the squeezed input minus the input's own."""
    cols = []
    for sq in (squeeze.squeeze_median, squeeze.squeeze_bits):
        lg, ft = clf.run(sq(xx), clf.logits_name, clf.features_name)
        cols += [ft - inp.feats, lg - inp.logits]
    return np.hstack(cols)


ct = F.Inputs(clf, x[te])
tests = []
for fam, b, xa in att_te:
    inp = F.Inputs(clf, xa)
    m = F.successful(inp, y[te], ct.pred)
    tests.append((fam, b, xa[m], inp, m))
t0 = time.time()
S_c, S_a, S_t = shift(x[tr], base.clean), shift(base.adv_x, base.adv), shift(x[te], ct)
S_p = []
for (fam, b, xa_m, inp, m), (_, _, xa) in zip(tests, att_te):
    S_p.append(shift(xa, inp)[m])
print(f"shift columns {S_c.shape[1]}, {time.time() - t0:.0f}s", flush=True)
BEFORE = [n for n in F.INPUTS if n != "squeeze-feature-shift"]  # the raw signals before this experiment
R_c, R_a, R_t = base.clean.matrix(BEFORE), base.adv.matrix(BEFORE), ct.matrix(BEFORE)
R_p = [inp.matrix(BEFORE)[m] for _, _, _, inp, m in tests]


def lin(c):
    return lambda: make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))


def oof_fit(make, Rc, Ra, Tc, Tp):
    sc, fa = np.zeros(len(Rc)), base.fold[base.src]
    for f in range(detectors.N_FOLDS):
        kc, ka = base.fold != f, fa != f
        g = make().fit(np.vstack([Rc[kc], Ra[ka]]), np.r_[np.zeros(kc.sum()), np.ones(ka.sum())])
        sc[~kc] = g.predict_proba(Rc[~kc])[:, 1]
    g = make().fit(np.vstack([Rc, Ra]), np.r_[np.zeros(len(Rc)), np.ones(len(Ra))])
    return sc, g.predict_proba(Tc)[:, 1], [g.predict_proba(t)[:, 1] for t in Tp]


def report(name, oof, tc, tp):
    t1 = detectors.threshold_at(oof, 0.01)
    rows = [f"{fam}{b[-1]} {100 * (s > t1).mean():.0f}% ({roc_auc_score(np.r_[np.zeros(len(tc)), np.ones(len(s))], np.r_[tc, s]):.3f})"
            for (fam, b, *_), s in zip(tests, tp)]
    tpr = np.mean([(s > t1).mean() for s in tp])
    print(f"{name}: clean AdvTest {100 * (tc > t1).mean():.1f}%, mean TPR {100 * tpr:.1f}% | " + ", ".join(rows), flush=True)


nf = base.clean.feats.shape[1]
med = slice(0, nf + 2)
for c in (0.3, 1.0):
    report(f"raw signals C={c}", *oof_fit(lin(c), R_c, R_a, R_t, R_p))
    j = lambda A, B: np.hstack([A, B])
    report(f"raw + squeeze shift C={c}", *oof_fit(lin(c), j(R_c, S_c), j(R_a, S_a), j(R_t, S_t), [j(r, s) for r, s in zip(R_p, S_p)]))
    report(f"raw + median shift C={c}", *oof_fit(lin(c), j(R_c, S_c[:, med]), j(R_a, S_a[:, med]), j(R_t, S_t[:, med]), [j(r, s[:, med]) for r, s in zip(R_p, S_p)]))
    nrm = lambda S: np.column_stack([np.linalg.norm(S[:, :nf], axis=1), np.linalg.norm(S[:, nf + 2:2 * nf + 2], axis=1)])
    report(f"raw + shift norms C={c}", *oof_fit(lin(c), j(R_c, nrm(S_c)), j(R_a, nrm(S_a)), j(R_t, nrm(S_t)), [j(r, nrm(s)) for r, s in zip(R_p, S_p)]))
