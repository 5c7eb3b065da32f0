"""Experiment (not a stage): do pooled statistics of the classifier's intermediate layers
(Lee et al. 2018's feature ensemble; Ma et al. 2021 find early layers separate medical
attacks best) add to the fused detector's raw signals? Same protocol as raw_signals.py:
fitted on AdvTrain only (5 folds by clean image), threshold = 1 % quantile of out-of-fold
clean AdvTrain scores, AdvTest scored once, successful attacks only.

    cd models/training && .venv/bin/python experiments/layer_stats.py [chest_xray]

Needs the attack stage's records (`attacks --dataset D --only fgsm,bim,pgd20,cw`).
Measured 2026-12-02 on chest_xray (per channel mean and standard deviation of the stem and
the six blocks: 480 columns, 11 s): the served raw signals 1.0 % clean AdvTest, TPR 30-70 %
(PGD-20 1/2/4/8: 31/30/39/68 %); with the layer statistics 0.3 %, 19-66 % (C=1) or 0.6 %,
19-75 % (C=0.1); the layer statistics alone 0.3 %, 0-19 %. They do not help this
hardened model (AUROCs move by -0.02 to +0.01), so the classifier exports no more layers.
"""
import json, os, sys, time
import numpy as np, torch
import torch.nn.functional as TF
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from medsentry_training import advcommon as C, datasets, detectors, fused as F
from medsentry_training.ood import Classifier

spec = datasets.SPECS[sys.argv[1] if len(sys.argv) > 1 else "chest_xray"]
out_dir = C.default_bundle_dir(spec)
clf = Classifier(out_dir)
x, y, _ = datasets.load_split(spec, "test")
split = json.load(open(os.path.join(out_dir, "adv_split.json")))
tr, te = (np.array(split[h]["index"], dtype=np.int64) for h in ("AdvTrain", "AdvTest"))
att_tr, att_te = F.attacks_from_records(spec, tr, te)
base = F.advtrain_base(clf, x[tr], y[tr], att_tr, 2)
model, _ = C.load_ckpt(C.ckpt_path(spec, "hardened"))
net = model.net


def layer_stats(xx):
    """Per channel mean and standard deviation of the stem's and each block's output."""
    outs = []
    with torch.no_grad():
        for i in range(0, len(xx), 256):
            h = (torch.from_numpy(xx[i:i + 256]) - model.mean) / model.std
            h = net.stem(h)
            cols = [h.mean((2, 3)), h.std((2, 3))]
            for blk in net.body:
                h = blk(h)
                cols += [h.mean((2, 3)), h.std((2, 3))]
            outs.append(torch.cat(cols, 1).numpy())
    return np.concatenate(outs).astype(np.float64)


def rich(inp):
    return np.column_stack([inp.feats, inp.logits, inp.residual_features, inp.squeeze, inp.margin])


ct = F.Inputs(clf, x[te])
tests = []
for fam, b, xa in att_te:
    inp = F.Inputs(clf, xa)
    m = F.successful(inp, y[te], ct.pred)
    tests.append((fam, b, xa[m], inp, m))
t0 = time.time()
L_c, L_a, L_t = layer_stats(x[tr]), layer_stats(base.adv_x), layer_stats(x[te])
L_p = [layer_stats(xa) for _, _, xa, _, _ in tests]
print(f"layer stats {L_c.shape[1]} columns, {time.time() - t0:.0f}s", flush=True)
R_c, R_a, R_t = rich(base.clean), rich(base.adv), rich(ct)
R_p = [rich(inp)[m] for _, _, _, inp, m in tests]


def lin(c):
    return lambda: make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))


def oof_fit(make, Rc, Ra, Tc, Tp):
    sc, fa = np.zeros(len(Rc)), base.fold[base.src]
    lab = lambda kc, ka: np.r_[np.zeros(kc.sum()), np.ones(ka.sum())]
    for f in range(detectors.N_FOLDS):
        kc, ka = base.fold != f, fa != f
        g = make().fit(np.vstack([Rc[kc], Ra[ka]]), lab(kc, ka))
        sc[~kc] = g.predict_proba(Rc[~kc])[:, 1]
    g = make().fit(np.vstack([Rc, Ra]), np.r_[np.zeros(len(Rc)), np.ones(len(Ra))])
    return sc, g.predict_proba(Tc)[:, 1], [g.predict_proba(t)[:, 1] for t in Tp]


def report(name, oof, tc, tp):
    from sklearn.metrics import roc_auc_score
    t1 = detectors.threshold_at(oof, 0.01)
    rows = [f"{fam}{b} n={len(s)} {100 * (s > t1).mean():.0f}% ({roc_auc_score(np.r_[np.zeros(len(tc)), np.ones(len(s))], np.r_[tc, s]):.3f})"
            for (fam, b, *_), s in zip(tests, tp)]
    print(f"{name}: clean AdvTest {100 * (tc > t1).mean():.1f}% | " + ", ".join(rows), flush=True)


nm = L_c.shape[1]
variants = {
    "raw signals (served)": (lin(1.0), R_c, R_a, R_t, R_p),
    "raw + layer stats C=1": (lin(1.0), np.hstack([R_c, L_c]), np.hstack([R_a, L_a]), np.hstack([R_t, L_t]), [np.hstack([r, l]) for r, l in zip(R_p, L_p)]),
    "raw + layer stats C=0.1": (lin(0.1), np.hstack([R_c, L_c]), np.hstack([R_a, L_a]), np.hstack([R_t, L_t]), [np.hstack([r, l]) for r, l in zip(R_p, L_p)]),
    "layer stats only C=1": (lin(1.0), L_c, L_a, L_t, L_p),
}
for name, (mk, a, b, c, d) in variants.items():
    t0 = time.time()
    report(name + f" [{time.time() - t0:.0f}s]", *oof_fit(mk, a, b, c, d))
