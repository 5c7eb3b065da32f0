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
attacks only; attacks are the fused stage's caches (`fused --dataset D` made them).

    cd models/training && .venv/bin/python experiments/cooccurrence.py DATASET [T]
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import Setup, add_minimal_attacks, advtrain_tpr, halves, lin, oof_fit, report  # noqa: E402
from medsentry_training import advcommon as C, datasets, fused as F  # noqa: E402
from medsentry_training.fused_attacks import made_attacks, with_smooth  # noqa: E402
from medsentry_training.ood import Classifier  # noqa: E402


def cooc(d: np.ndarray, t: int) -> np.ndarray:
    """(N, M, L) integer residuals along the last axis -> (N, (2t+1)^2) joint frequencies of
    consecutive pairs, clipped to [-t, t]."""
    d = np.clip(d, -t, t) + t
    k = 2 * t + 1
    code = (d[..., :-1] * k + d[..., 1:]).reshape(len(d), -1)
    return np.stack([np.bincount(r, minlength=k * k) for r in code]) / code.shape[1]


def features(x: np.ndarray, t: int = 3) -> np.ndarray:
    """(N, C, H, W) on the 8-bit grid -> first- and second-order co-occurrences, (N, 2 (2t+1)^2)."""
    q = np.rint(x.astype(np.float64) * 255).astype(np.int64)
    n = len(q)
    out = []
    for order in (1, 2):
        hist = 0
        for a in (q, np.swapaxes(q, 2, 3)):  # rows, then columns
            d = np.diff(a, n=order, axis=3)
            hist = hist + cooc(d.reshape(n, -1, d.shape[3]), t)
        out.append(np.sqrt(hist / 2))
    return np.hstack(out)


def load(name: str) -> Setup:
    spec = datasets.SPECS[name]
    out_dir = C.default_bundle_dir(spec)
    clf = Classifier(out_dir)
    x, y, tr, te = halves(spec, out_dir)
    net, _ = C.load_ckpt(C.ckpt_path(spec, "hardened"))
    att_tr, att_te = with_smooth(net, x, y, tr, te, *made_attacks(net, x, y, tr, te, spec.name), spec.name)
    base = F.advtrain_base(clf, x[tr], y[tr], att_tr, len(spec.labels))
    ct = F.Inputs(clf, x[te])
    tests = []
    for fam, b, xa in att_te:
        inp = F.Inputs(clf, xa)
        m = F.successful(inp, y[te], ct.pred)
        if m.any():
            tests.append((fam, b, xa, inp, m))
    return Setup(spec, clf, x, y, tr, te, base, ct, tests)


s = load(sys.argv[1] if len(sys.argv) > 1 else "chest_xray")
t = int(sys.argv[2]) if len(sys.argv) > 2 else 3
add_minimal_attacks(s)
with open(os.path.join(C.default_bundle_dir(s.spec), "report.json")) as f:
    c = json.load(f)["fused_detector"]["regularisation"]["c"]
served = s.clf.served
R_c, R_a, R_t = s.base.clean.matrix(), s.base.adv.matrix(), s.ct.matrix()
R_p = [inp.matrix()[m] for _, _, _, inp, m in s.tests]
E_c, E_a, E_t = (features(served(v), t) for v in (s.x[s.tr], s.base.adv_x, s.x[s.te]))
E_p = [features(served(xa[m]), t) for _, _, xa, _, m in s.tests]
j = lambda A, B: np.hstack([A, B])  # noqa: E731
print(f"{s.spec.name}: C={c}, T={t}, {E_c.shape[1]} co-occurrence values", flush=True)
print(f"AdvTrain out-of-fold mean TPR, raw signals: {advtrain_tpr(s, R_c, R_a, c):.1f}%", flush=True)
report(s, "raw signals", *oof_fit(s, lin(c), R_c, R_a, R_t, R_p))
print(f"AdvTrain out-of-fold mean TPR, + co-occurrence: {advtrain_tpr(s, j(R_c, E_c), j(R_a, E_a), c):.1f}%", flush=True)
report(s, "raw + co-occurrence", *oof_fit(s, lin(c), j(R_c, E_c), j(R_a, E_a), j(R_t, E_t), [j(r, e) for r, e in zip(R_p, E_p)]))
report(s, "co-occurrence alone", *oof_fit(s, lin(c), E_c, E_a, E_t, E_p))
