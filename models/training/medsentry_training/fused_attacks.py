"""The fused stage's attacks: FGSM, BIM, PGD-20 (1, 2, 4, 8/255) and C&W-L2 on both halves,
Square (Linf 8/255) on AdvTest only, made here with torchattacks against the served
hardened checkpoint (the settings of attacks.py), or read from the attack stage's records;
and the minimal-perturbation families (DeepFool, L-BFGS) on AdvTest, always made here.
Each list holds (family, budget, x_adv) aligned with the half's clean images.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
import torchattacks

from . import advcommon as C
from .own_attacks import lbfgs_attack

BUDGETS = (1, 2, 4, 8)


def make_attacks(net, x: np.ndarray, y: np.ndarray, unseen: bool) -> list:
    """(family, budget, x_adv) for the seen families, and with `unseen` Square 8/255 too."""
    torch.manual_seed(0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    out = []
    for k in BUDGETS:
        eps = k / 255
        for fam, atk in (("fgsm", torchattacks.FGSM(net, eps=eps)),
                         ("bim", torchattacks.BIM(net, eps=eps, alpha=eps / 4, steps=10)),
                         ("pgd20", torchattacks.PGD(net, eps=eps, alpha=2.5 * eps / 20, steps=20, random_start=True))):
            out.append((fam, f"linf_{k}", atk(xt, yt).numpy()))
    out.append(("cw", "l2_c1", torchattacks.CW(net, c=1, kappa=0, steps=100, lr=0.01)(xt, yt).numpy()))
    if unseen:
        out.append(("square", "linf_8", torchattacks.Square(net, eps=8 / 255, n_queries=500, loss="margin", seed=0)(xt, yt).numpy()))
    return out


def attacks_from_records(spec, tr: np.ndarray, te: np.ndarray):
    """make_attacks' lists from the attack stage's records (a fitted bundle's attacks are
    expensive at full size, and attacks.py made the same ones): (family, budget, x_adv)
    aligned with x[tr] and x[te]. Square and transfer (PGD-20 crafted on the surrogate; the
    combiner never sees either) on AdvTest only, as make_attacks does with Square."""
    adir = C.attack_dir(spec, None)
    man = C.load_manifest(adir)
    out_tr, out_te = [], []
    for r in C.load_attacks(adir, "hardened", shas=man["shas"]):
        if r.attack not in ("fgsm", "bim", "pgd20", "cw", "square", "transfer"):
            continue
        pos = {int(i): k for k, i in enumerate(r.index)}
        for half, idx, out in ((0, tr, out_tr), (1, te, out_te)):
            if r.attack in ("square", "transfer") and half == 0:
                continue
            rows = [pos.get(int(i)) for i in idx]
            if any(p is None or r.split[p] != half for p in rows):
                raise SystemExit(f"attack record {r.file} does not cover the split in adv_split.json: rerun attacks")
            out.append((r.attack, r.budget, r.x_adv[rows]))
    return out_tr, out_te


LBFGS_N = 60  # L-BFGS runs 5 searches of 10 iterations per image: a subset, as attacks.py does


def minimal_attacks(net, x: np.ndarray, y: np.ndarray, cache: str) -> list:
    """(family, budget, x_adv) for two families the combiner never saw whose examples stop just
    past the decision boundary instead of using a fixed budget: DeepFool (L2, 50 steps,
    overshoot 0.02) on every image, box-constrained L-BFGS (Szegedy) on the first LBFGS_N
    (the other images left clean, so they never count as successful). Cached in `cache`,
    keyed by the images and the network's answers to them."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    with torch.no_grad():
        probe = net(xt[:16]).numpy()
    key = hashlib.sha256(x.tobytes() + y.tobytes() + probe.tobytes()).hexdigest()
    if os.path.exists(cache):
        z = np.load(cache)
        if str(z["key"]) == key:
            return [("deepfool", "l2_min", z["deepfool"]), ("lbfgs", "l2_min", z["lbfgs"])]
    torch.manual_seed(0)
    deepfool = torchattacks.DeepFool(net, steps=50, overshoot=0.02)(xt, yt).numpy()
    lbfgs = x.copy()
    n = min(LBFGS_N, len(x))
    lbfgs[:n] = lbfgs_attack(net, xt[:n], yt[:n]).numpy()
    np.savez(cache, key=key, deepfool=deepfool, lbfgs=lbfgs)
    return [("deepfool", "l2_min", deepfool), ("lbfgs", "l2_min", lbfgs)]
