"""The fused stage's attacks: FGSM, BIM, PGD-20 (1, 2, 4, 8/255) and C&W-L2 on both halves,
Square (Linf 8/255) on AdvTest only, made here with torchattacks against the served
hardened checkpoint (the settings of attacks.py), or read from the attack stage's records.
Each list holds (family, budget, x_adv) aligned with the half's clean images.
"""
from __future__ import annotations

import numpy as np
import torch
import torchattacks

from . import advcommon as C

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
    aligned with x[tr] and x[te]; Square on AdvTest only, as make_attacks does."""
    adir = C.attack_dir(spec, None)
    man = C.load_manifest(adir)
    out_tr, out_te = [], []
    for r in C.load_attacks(adir, "hardened", shas=man["shas"]):
        if r.attack not in ("fgsm", "bim", "pgd20", "cw", "square"):
            continue
        pos = {int(i): k for k, i in enumerate(r.index)}
        for half, idx, out in ((0, tr, out_tr), (1, te, out_te)):
            if r.attack == "square" and half == 0:
                continue
            rows = [pos.get(int(i)) for i in idx]
            if any(p is None or r.split[p] != half for p in rows):
                raise SystemExit(f"attack record {r.file} does not cover the split in adv_split.json: rerun attacks")
            out.append((r.attack, r.budget, r.x_adv[rows]))
    return out_tr, out_te
