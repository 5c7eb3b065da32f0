"""Experiment (not a stage): does a second, differently trained classifier help the fused
detector? The bundle's standard (not adversarially trained) checkpoint scores every input
beside the served hardened one; its disagreement, -log p_standard(class the hardened model
predicts), is added as a sixth input of the fused logistic regression, fitted exactly as
fused.py fits it (AdvTrain only, base scores out-of-fold, thresholds at 1 % and 5 % of the
combiner's own out-of-fold clean AdvTrain scores). Prints, on AdvTest, the clean flag rate
and per attack AUROC / TPR at 1 % for the fused detector as served and with agreement.

    cd models/training && .venv/bin/python experiments/agreement.py chest_xray

Reads the fused stage's attack caches (work/fused_<bundle>_advtrain.npz and _advtest.npz, made if absent). Not
adaptive: an attacker who knows both models attacks both (see the note in the README).
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from medsentry_training import advcommon as C, datasets, detectors, squeeze  # noqa: E402
from medsentry_training.fused import Inputs, advtrain_base, fit_calibrated, fused_score, successful  # noqa: E402
from medsentry_training.fused_attacks import made_attacks  # noqa: E402
from medsentry_training.ood import Classifier  # noqa: E402

name = sys.argv[1] if len(sys.argv) > 1 else "chest_xray"
spec = datasets.SPECS[name]
out_dir = C.default_bundle_dir(spec)
clf = Classifier(out_dir)
standard, _ = C.load_ckpt(C.ckpt_path(spec, "standard"))
standard.eval()
x, y, _ = datasets.load_split(spec, "test")
split = json.load(open(os.path.join(out_dir, "adv_split.json")))
tr, te = (np.array(split[h]["index"], dtype=np.int64) for h in ("AdvTrain", "AdvTest"))
att_tr, att_te = made_attacks(C.load_ckpt(C.ckpt_path(spec, "hardened"))[0], x, y, tr, te, spec.name)


def disagreement(inp: Inputs, xs: np.ndarray) -> np.ndarray:
    p = squeeze.softmax(C.forward_batches(standard, xs)[0])
    return -np.log(p[np.arange(len(xs)), inp.pred] + 1e-6)


y_tr = y[tr]
base = advtrain_base(clf, x[tr], y_tr, att_tr, len(spec.labels))
base_c, base_a = base.matrices()
agree_c, agree_a = disagreement(base.clean, x[tr]), disagreement(base.adv, base.adv_x)
served, t_served, _ = fit_calibrated(base_c, base_a, base.fold, base.src)
both, t_both, _ = fit_calibrated(np.column_stack([base_c, agree_c]), np.column_stack([base_a, agree_a]), base.fold, base.src)
resid_model = base.resid_model
print(f"{spec.name}: agreement weight {both[1].coef_[0][-1]:.2f} (standardised); AdvTrain {len(base_c)} clean, {len(base_a)} adversarial")
dets = detectors.load_detectors(out_dir)


def scores(xs):
    inp = Inputs(clf, xs)
    X = inp.matrix()
    return inp, fused_score(served, X), fused_score(both, np.column_stack([X, disagreement(inp, xs)]))


y_te = y[te]
ct, neg_s, neg_b = scores(x[te])
print(f"  clean AdvTest flagged at 1 % / 5 %: served {np.mean(neg_s > t_served['fpr_0.01']):.3f} / {np.mean(neg_s > t_served['fpr_0.05']):.3f}, "
      f"with agreement {np.mean(neg_b > t_both['fpr_0.01']):.3f} / {np.mean(neg_b > t_both['fpr_0.05']):.3f}")
for fam, budget, xa in att_te:
    inp, pos_s, pos_b = scores(xa)
    m = successful(inp, y_te, ct.pred)
    if m.sum() < 5:
        continue
    au = lambda neg, pos: C.auroc(neg, pos[m])  # noqa: E731
    print(f"  {fam} {budget}: n={m.sum()} AUROC {au(neg_s, pos_s):.3f} -> {au(neg_b, pos_b):.3f}; TPR@1% "
          f"{np.mean(pos_s[m] > t_served['fpr_0.01']):.3f} -> {np.mean(pos_b[m] > t_both['fpr_0.01']):.3f}; TPR@5% "
          f"{np.mean(pos_s[m] > t_served['fpr_0.05']):.3f} -> {np.mean(pos_b[m] > t_both['fpr_0.05']):.3f}")
