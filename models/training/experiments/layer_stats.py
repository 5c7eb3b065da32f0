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

import sys
import time

import numpy as np
import torch

from common import C, F, lin, load, oof_fit, report

s = load(sys.argv)
model, _ = C.load_ckpt(C.ckpt_path(s.spec, "hardened"))
net = model.net


def layer_stats(xx):
    """Per channel mean and standard deviation of the stem's and each block's output."""
    outs = []
    with torch.no_grad():
        for i in range(0, len(xx), 256):
            h = net.stem((torch.from_numpy(xx[i:i + 256]) - model.mean) / model.std)
            cols = [h.mean((2, 3)), h.std((2, 3))]
            for blk in net.body:
                h = blk(h)
                cols += [h.mean((2, 3)), h.std((2, 3))]
            outs.append(torch.cat(cols, 1).numpy())
    return np.concatenate(outs).astype(np.float64)


BEFORE = [n for n in F.INPUTS if n not in ("squeeze-feature-shift", "log-margin")]  # the raw signals then
t0 = time.time()
L_c, L_a, L_t = layer_stats(s.x[s.tr]), layer_stats(s.base.adv_x), layer_stats(s.x[s.te])
L_p = [layer_stats(xa[m]) for _, _, xa, _, m in s.tests]
print(f"layer stats {L_c.shape[1]} columns, {time.time() - t0:.0f}s", flush=True)
R_c, R_a, R_t = s.base.clean.matrix(BEFORE), s.base.adv.matrix(BEFORE), s.ct.matrix(BEFORE)
R_p = [inp.matrix(BEFORE)[m] for _, _, _, inp, m in s.tests]
j = lambda A, B: np.hstack([A, B])  # noqa: E731
variants = {
    "raw signals (served)": (lin(1.0), R_c, R_a, R_t, R_p),
    "raw + layer stats C=1": (lin(1.0), j(R_c, L_c), j(R_a, L_a), j(R_t, L_t), [j(r, l) for r, l in zip(R_p, L_p)]),
    "raw + layer stats C=0.1": (lin(0.1), j(R_c, L_c), j(R_a, L_a), j(R_t, L_t), [j(r, l) for r, l in zip(R_p, L_p)]),
    "layer stats only C=1": (lin(1.0), L_c, L_a, L_t, L_p),
}
for name, (mk, a, b, c, d) in variants.items():
    report(s, name, *oof_fit(s, mk, a, b, c, d))
