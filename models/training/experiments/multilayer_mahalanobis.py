"""Experiment (not a stage): multi-layer Mahalanobis (Lee et al. 2018) on a served bundle's
hardened classifier. Every stage of the network is pooled (channel mean and std), a
class-conditional Gaussian with tied Ledoit-Wolf covariance is fitted per layer on the
official training set, and a logistic regression over the per-layer log distances is
fitted on AdvTrain (clean vs the fused stage's successful attacks); threshold at 1 % of
clean AdvTrain. Prints AdvTest AUROC and TPR per attack next to the last layer alone.

    cd models/training && .venv/bin/python experiments/multilayer_mahalanobis.py chest_xray

Reads the fused stage's attack caches (work/fused_<bundle>_advtrain.npz and _advtest.npz, made if absent).
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from medsentry_training import advcommon as C, datasets  # noqa: E402
from medsentry_training.fused_attacks import made_attacks  # noqa: E402
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.metrics import roc_auc_score
torch.set_num_threads(1)
name = sys.argv[1] if len(sys.argv) > 1 else "chest_xray"
spec = datasets.SPECS[name]
model, ck = C.load_ckpt(C.ckpt_path(spec, "hardened"))
net = model.net
feats = {}
mods = [("stem", net.stem)] + [(f"b{i}", b) for i, b in enumerate(net.body)]
def hook(n):
    def f(m, i, o):
        feats[n] = torch.cat([o.mean((2, 3)), o.flatten(2).std(2)], 1).detach()
    return f
for n, m in mods: m.register_forward_hook(hook(n))
x, y, _ = datasets.load_split(spec, "test")
sp = json.load(open(os.path.join(datasets.REPO, "models", spec.name, "adv_split.json")))
tr, te = (np.array(sp[h]["index"]) for h in ("AdvTrain", "AdvTest"))
att_tr, att_te = made_attacks(C.load_ckpt(C.ckpt_path(spec, "hardened"))[0], x, y, tr, te, spec.name)
def run(xa):
    outs = {n: [] for n, _ in mods}; lo = []
    with torch.no_grad():
        for i in range(0, len(xa), 256):
            l = model(torch.from_numpy(np.ascontiguousarray(xa[i:i+256], dtype=np.float32)))
            lo.append(l.numpy())
            for n, _ in mods: outs[n].append(feats[n].numpy())
    return np.concatenate(lo), {n: np.concatenate(v).astype(np.float64) for n, v in outs.items()}
lc, fc = run(x[tr]); pc = lc.argmax(1)
K = lc.shape[1]
xtr, ytr, _ = datasets.load_split(spec, "train")
_, ftr = run(xtr)
fits = {}
for n, _ in mods:
    f = ftr[n]; mu = np.stack([f[ytr == c].mean(0) for c in range(K)])
    lw = LedoitWolf().fit(f - mu[ytr]); fits[n] = (mu, lw.precision_)
def scores(fd):
    cols = []
    for n, _ in mods:
        mu, P = fits[n]; f = fd[n]
        d = np.stack([np.einsum("ij,jk,ik->i", f - mu[c], P, f - mu[c]) for c in range(K)], 1)
        cols.append(d.min(1))
    return np.log(np.stack(cols, 1) + 1e-9)
Sc = scores(fc)
adv_s = []
for fam, b, xa in att_tr:
    la, fa = run(xa); ok = (la.argmax(1) != y[tr]) & (pc == y[tr])
    adv_s.append(scores({n: v[ok] for n, v in fa.items()}))
Sa = np.concatenate(adv_s)
sc = StandardScaler().fit(np.vstack([Sc, Sa]))
lr = LogisticRegression(class_weight="balanced", max_iter=2000).fit(sc.transform(np.vstack([Sc, Sa])), np.r_[np.zeros(len(Sc)), np.ones(len(Sa))])
print("weights", np.round(lr.coef_[0], 2))
thr = np.quantile(lr.decision_function(sc.transform(Sc)), 0.99)
lt, ft = run(x[te]); pt = lt.argmax(1)
neg = lr.decision_function(sc.transform(scores(ft)))
print("clean AdvTest flagged", (neg > thr).mean())
for fam, b, xa in att_te:
    la, fa = run(xa); ok = (la.argmax(1) != y[te]) & (pt == y[te])
    if ok.sum() < 3: continue
    s_all = scores({n: v[ok] for n, v in fa.items()})
    pos = lr.decision_function(sc.transform(s_all))
    auc = roc_auc_score(np.r_[np.zeros(len(neg)), np.ones(len(pos))], np.r_[neg, pos])
    # penultimate-only (last block) for comparison
    auc_last = roc_auc_score(np.r_[np.zeros(len(neg)), np.ones(len(pos))], np.r_[scores(ft)[:, -1], s_all[:, -1]])
    per = [round(roc_auc_score(np.r_[np.zeros(len(neg)), np.ones(len(pos))], np.r_[scores(ft)[:, k], s_all[:, k]]), 2) for k in range(len(mods))]
    print(f"{fam} {b} n={ok.sum()} AUROC {auc:.3f} TPR@1% {(pos > thr).mean():.2f} | last-block {auc_last:.3f} | per-layer {per}")
