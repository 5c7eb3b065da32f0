"""Experiment (not a stage): how far do other signals and combiners move TPR at the 1 %
threshold on a bundle's successful FGSM/BIM/PGD-20 (1-8/255) and C&W AdvTest examples?
Every variant is fitted on AdvTrain only (clean images against their successful examples,
5 folds by clean image), its threshold is the 1 % quantile of its out-of-fold clean AdvTrain
scores, and AdvTest is scored once. Variants: the fused detector as fitted before 2026-12
(logistic regression over the four detectors' scores and the margin); with the standard and
surrogate checkpoints' agreement; gradient-boosted trees and logistic regression over the
raw signals (penultimate features, logits, residual-statistics features, feature-squeezing
score, margin) and subsets of them; each other model's disagreement alone.

    cd models/training && .venv/bin/python experiments/raw_signals.py [chest_xray]

Needs the attack stage's records (`attacks --dataset D --only fgsm,bim,pgd20,cw`).
Measured 2026-12-02 on chest_xray (AdvTest FPR of the threshold, then TPR per attack):
served combiner 0.3 %, 0-16 %; logistic regression over the raw signals (C=1) 1.0 %,
30-70 % (the fused stage's combiner since); gradient-boosted trees over them 0.3 %, 7-72 %.
"""
import json, os, sys, time
import numpy as np, torch
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sklearn.ensemble import HistGradientBoostingClassifier
from medsentry_training import advcommon as C, datasets, detectors, fused as F
from medsentry_training.ood import Classifier

spec = datasets.SPECS[sys.argv[1] if len(sys.argv) > 1 else "chest_xray"]
out_dir = C.default_bundle_dir(spec)
clf = Classifier(out_dir)
x, y, files = datasets.load_split(spec, "test")
split = json.load(open(os.path.join(out_dir, "adv_split.json")))
tr, te = (np.array(split[h]["index"], dtype=np.int64) for h in ("AdvTrain", "AdvTest"))
att_tr, att_te = F.attacks_from_records(spec, tr, te)
print("attacks", [(a, b) for a, b, _ in att_tr])
base = F.advtrain_base(clf, x[tr], y[tr], att_tr, 2)
legacy = lambda inp, oo, rr: np.column_stack([oo[:, 0], oo[:, 1], inp.squeeze, rr, inp.margin])
Xc, Xa = legacy(base.clean, base.oc, base.rc), legacy(base.adv, base.oa, base.ra)
std, _ = C.load_ckpt(C.ckpt_path(spec, "standard"))
sur, _ = C.load_ckpt(C.ckpt_path(spec, "surrogate"))

def logits_of(net, xx):
    with torch.no_grad():
        return np.concatenate([net(torch.from_numpy(xx[i:i + 256])).numpy() for i in range(0, len(xx), 256)]).astype(np.float64)

def extra(xx, inp):
    out = []
    for net in (std, sur):
        l = logits_of(net, xx)
        p = np.exp(l - l.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
        out.append(p[np.arange(len(p)), inp.pred])           # other model's prob of the served model's class
    return np.column_stack(out)

Ec, Ea = extra(x[tr], base.clean), extra(base.adv_x, base.adv)
dets = detectors.load_detectors(out_dir)
ct = F.Inputs(clf, x[te]); m_, l_, r_ = F.base_scores(dets, base.resid_model, ct)
Tc = np.column_stack([m_, l_, ct.squeeze, r_, ct.margin]); TEc = extra(x[te], ct)
tests = []
for fam, b, xa in att_te:
    inp = F.Inputs(clf, xa); m = F.successful(inp, y[te], ct.pred)
    mm, ll, rr = F.base_scores(dets, base.resid_model, inp)
    tests.append((fam, b, np.column_stack([mm, ll, inp.squeeze, rr, inp.margin])[m], extra(xa, inp)[m], inp, m))

def rich(inp):  # raw signals for the flexible upper bound
    return np.column_stack([inp.feats, inp.logits, inp.residual_features, inp.squeeze, inp.margin])

def report(name, score_c_oof, score_test_c, score_test_pos):
    t1 = detectors.threshold_at(score_c_oof, 0.01)
    fpr = (score_test_c > t1).mean()
    rows = [f"{fam} {b} n={len(s)} {100 * (s > t1).mean():.0f}%" for (fam, b, *_), s in zip(tests, score_test_pos)]
    print(f"{name}: clean AdvTest FPR {100 * fpr:.1f}% | " + ", ".join(rows), flush=True)

from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.pipeline import make_pipeline
def oof_fit(make, Rc, Ra, Tcm, Tp):
    sc = np.zeros(len(Rc)); fa = base.fold[base.src]
    for f in range(detectors.N_FOLDS):
        g = make().fit(np.vstack([Rc[base.fold != f], Ra[fa != f]]), np.r_[np.zeros((base.fold != f).sum()), np.ones((fa != f).sum())])
        sc[base.fold == f] = g.predict_proba(Rc[base.fold == f])[:, 1]
    g = make().fit(np.vstack([Rc, Ra]), np.r_[np.zeros(len(Rc)), np.ones(len(Ra))])
    return sc, g.predict_proba(Tcm)[:, 1], [g.predict_proba(t)[:, 1] for t in Tp]
def hgb(it=300, lr=0.05, depth=None, leaf=31): return lambda: HistGradientBoostingClassifier(max_iter=it, learning_rate=lr, max_depth=depth, max_leaf_nodes=leaf, class_weight="balanced", random_state=0)
def lin(c): return lambda: make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=3000))
raw_c, raw_a = rich(base.clean), rich(base.adv)
raw_t = rich(ct); raw_p = [rich(inp)[m] for _, _, _, _, inp, m in tests]
nf = base.clean.feats.shape[1]
variants = {
  "HGB raw (no agreement)": (hgb(), raw_c, raw_a, raw_t, raw_p),
  "HGB raw, 100 iters depth 3": (hgb(100, 0.1, 3, 8), raw_c, raw_a, raw_t, raw_p),
  "LR raw C=1": (lin(1.0), raw_c, raw_a, raw_t, raw_p),
  "LR raw C=0.05": (lin(0.05), raw_c, raw_a, raw_t, raw_p),
  "HGB on the 5 fused inputs": (hgb(), Xc, Xa, Tc, [X for _, _, X, *_ in tests]),
  "HGB raw without penultimate features": (hgb(), raw_c[:, nf:], raw_a[:, nf:], raw_t[:, nf:], [p[:, nf:] for p in raw_p]),
  "HGB penultimate features + logits only": (hgb(), raw_c[:, :nf + 2], raw_a[:, :nf + 2], raw_t[:, :nf + 2], [p[:, :nf + 2] for p in raw_p]),
}
for name, (mk, a, b, c, d) in variants.items():
    t0 = time.time(); r = oof_fit(mk, a, b, c, d); report(name + f" [{time.time() - t0:.0f}s]", *r)
