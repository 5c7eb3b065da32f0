"""Experiment (not a stage): kernel density (Feinman et al. 2017) and local intrinsic
dimensionality (Ma et al. 2018) against a reference set of clean AdvTrain images, alone and
added to the fused combiner's raw signals. Both are computed on what the sidecar already
has for an input: the penultimate features (standardised by the clean reference) and the
residual-statistics features.

- log KD: log mean exp(-||f - r||^2 / sigma^2) over the reference images of the predicted
  class, sigma the median reference-to-reference distance;
- LID: -1 / mean_i log(d_i / d_k) over the k = 20 nearest reference images (maximum-
  likelihood estimate), on the features and on the residual features;
- the distance to the nearest reference image.

The reference of an AdvTrain row is the clean AdvTrain images outside its fold (an example
sits in its clean image's fold, so never beside its own source); AdvTest's is all of clean
AdvTrain. Protocol as common.py.

    cd models/training && .venv/bin/python experiments/density_lid.py [chest_xray]

Needs the attack stage's records (`attacks --dataset D --served-only --only fgsm,bim,pgd20,cw`).

Measured 2026-12-03 on chest_xray (clean AdvTest over the 1 % threshold; mean TPR at 1 %
over the 13 seen rows; lowest row): the fused stage's raw signals 1.6 % / 61.4 % / 41 %
(PGD-20 2/255); with log KD, both LIDs and the nearest distance added 1.3 % / 59.0 % / 37 %
(1/255 rows +8 points, i.e. one of 13 examples; 2/255 and 8/255 rows down 0-7); the four
alone 0.3 % / 0.1 %. Alone, log KD separates the 1/255 examples (AUROC 0.90: they sit
between the classes, where the reference is thin) but not the 8/255 ones (0.46: they sit
deep in the wrong class), and the LIDs are at chance (0.37-0.65). Not added to the verdict.
"""

import sys

import numpy as np

from common import detectors, lin, load, oof_fit, report

K = 20
s = load(sys.argv)
c = float(sys.argv[2]) if len(sys.argv) > 2 else 0.3
ref_pred = s.base.clean.pred


def signals(feats, resid, pred, keep):
    """(n, 4): log KD, LID on features, LID on residual features, nearest distance; the
    reference is the clean AdvTrain images where `keep` is true."""
    rf, rr, rp = s.base.clean.feats[keep], s.base.clean.residual_features[keep], ref_pred[keep]
    mu, sd = rf.mean(0), rf.std(0) + 1e-6
    a, b = (feats - mu) / sd, (rf - mu) / sd
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    sigma = np.median(np.sqrt(((b[:, None, :] - b[None, :, :]) ** 2).sum(-1)))
    same = rp[None, :] == pred[:, None]
    kern = np.where(same, np.exp(-(d / sigma) ** 2), 0.0).sum(1) / np.maximum(same.sum(1), 1)
    mr, sr = rr.mean(0), rr.std(0) + 1e-6
    dr = np.sqrt(((((resid - mr) / sr)[:, None, :] - ((rr - mr) / sr)[None, :, :]) ** 2).sum(-1))
    return np.c_[np.log(kern + 1e-300), lid(d), lid(dr), np.sort(d, 1)[:, 0]]


def lid(d):
    nn = np.sort(d, 1)[:, :K] + 1e-12
    return -1.0 / np.mean(np.log(nn / nn[:, -1:]), axis=1)


fold, fa = s.base.fold, s.base.fold[s.base.src]
Sc, Sa = np.zeros((len(fold), 4)), np.zeros((len(fa), 4))
for f in range(detectors.N_FOLDS):
    keep = fold != f
    cm, am = fold == f, fa == f
    Sc[cm] = signals(s.base.clean.feats[cm], s.base.clean.residual_features[cm], s.base.clean.pred[cm], keep)
    Sa[am] = signals(s.base.adv.feats[am], s.base.adv.residual_features[am], s.base.adv.pred[am], keep)
everything = np.ones(len(fold), bool)
Tc = signals(s.ct.feats, s.ct.residual_features, s.ct.pred, everything)
Tp = [signals(inp.feats[m], inp.residual_features[m], inp.pred[m], everything) for _, _, _, inp, m in s.tests]
Xc, Xa = s.base.matrices()
Mc, Mp = s.ct.matrix(), [inp.matrix()[m] for _, _, _, inp, m in s.tests]

report(s, "raw signals (the fused stage)", *oof_fit(s, lin(c), Xc, Xa, Mc, Mp))
report(s, "KD + LID + nearest alone", *oof_fit(s, lin(1.0), Sc, Sa, Tc, Tp))
for j, name in enumerate(("log KD", "LID features", "LID residual", "nearest")):
    report(s, f"{name} alone", *oof_fit(s, lin(1.0), Sc[:, [j]], Sa[:, [j]], Tc[:, [j]], [t[:, [j]] for t in Tp]))
report(s, "raw signals + KD + LID + nearest", *oof_fit(s, lin(c), np.c_[Xc, Sc], np.c_[Xa, Sa], np.c_[Mc, Tc],
                                                          [np.c_[m, t] for m, t in zip(Mp, Tp)]))
