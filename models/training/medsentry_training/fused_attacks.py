"""The fused stage's attacks: FGSM, BIM, PGD-20 (1, 2, 4, 8/255) and C&W-L2 on both halves,
Square (Linf 8/255) on AdvTest only, made here with torchattacks against the served
hardened checkpoint (the settings of attacks.py), or read from the attack stage's records;
and the minimal-perturbation families (DeepFool, L-BFGS) on AdvTest, always made here, as
is smooth PGD-20 (the perturbation on a coarser grid) on both halves.
Each list holds (family, budget, x_adv) aligned with the half's clean images.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
import torch.nn.functional as TF
import torchattacks

from . import advcommon as C
from . import datasets
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


def made_attacks(net, x: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray, name: str):
    """make_attacks on AdvTrain and (with Square) AdvTest, cached in the work folder per half,
    keyed as minimal_attacks keys its cache: a --limit run's file is never read for the full
    split, nor one made against another checkpoint."""
    settings = f"fgsm/bim/pgd20 {BUDGETS}, cw c=1 100 steps, square linf_8 500 queries on AdvTest"
    return tuple(_cached(net, x[idx], y[idx], os.path.join(datasets.WORK, f"fused_{name}_{half}.npz"),
                         lambda idx=idx, unseen=unseen: make_attacks(net, x[idx], y[idx], unseen=unseen), settings)
                 for idx, half, unseen in ((tr, "advtrain", False), (te, "advtest", True)))


RECORD_FAMILIES = ("fgsm", "bim", "pgd20", "cw", "square", "transfer")


def attacks_from_records(spec, tr: np.ndarray, te: np.ndarray, families: tuple = RECORD_FAMILIES):
    """make_attacks' lists from the attack stage's records (a fitted bundle's attacks are
    expensive at full size, and attacks.py made the same ones): (family, budget, x_adv)
    aligned with x[tr] and x[te]. Square and transfer (PGD-20 crafted on the surrogate; the
    combiner never sees either) on AdvTest only, as make_attacks does with Square. `families`:
    only these attacks' records."""
    adir = C.attack_dir(spec, None)
    man = C.load_manifest(adir)
    out_tr, out_te = [], []
    for r in C.load_attacks(adir, "hardened", shas=man["shas"], attacks=families):
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
    def make():
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        lbfgs = x.copy()
        n = min(LBFGS_N, len(x))
        deepfool = torchattacks.DeepFool(net, steps=50, overshoot=0.02)(xt, yt).numpy()
        lbfgs[:n] = lbfgs_attack(net, xt[:n], yt[:n]).numpy()
        return [("deepfool", "l2_min", deepfool), ("lbfgs", "l2_min", lbfgs)]
    # Settings "": the key the first DeepFool/L-BFGS caches were written with (by name: legacy).
    return _cached(net, x, y, cache, make, "", legacy=("deepfool", "lbfgs"))


# Smooth PGD-20: the perturbation lives on a grid SMOOTH_FACTOR times coarser than the input,
# upsampled bilinearly, so it has almost no energy at the pixel scale that every other family
# the combiner sees works at. The grid of adaptive_fused's "fused-aware-lowpass", which it
# answers; its "fused-aware-lowpass-8" grid stays unseen.
SMOOTH_FACTOR = 4
SMOOTH_BUDGETS = (4, 8)
SMOOTH_STEPS = 20


def smooth_pgd(net, x: np.ndarray, y: np.ndarray, eps: float, factor: int = SMOOTH_FACTOR) -> np.ndarray:
    """PGD-20 on cross-entropy over a perturbation on a grid `factor` times coarser (bilinear
    upsampling; uniform random start, step 2.5 eps / 20, as attacks.py's PGD-20)."""
    out = []
    for i in range(0, len(x), 32):
        xb, yb = torch.from_numpy(x[i:i + 32]), torch.from_numpy(y[i:i + 32])
        h, w = xb.shape[2:]
        g = torch.Generator().manual_seed(i)
        v = (torch.rand((*xb.shape[:2], max(1, h // factor), max(1, w // factor)), generator=g) * 2 - 1) * eps

        def up(v):
            return TF.interpolate(v, size=(h, w), mode="bilinear", align_corners=False)
        for _ in range(SMOOTH_STEPS):
            v.requires_grad_(True)
            (grad,) = torch.autograd.grad(TF.cross_entropy(net((xb + up(v)).clamp(0, 1)), yb), v)
            v = (v.detach() + 2.5 * eps / SMOOTH_STEPS * grad.sign()).clamp(-eps, eps)
        with torch.no_grad():
            out.append((xb + up(v)).clamp(0, 1).numpy())
    return np.concatenate(out).astype(np.float32)


def smooth_attacks(net, x: np.ndarray, y: np.ndarray, cache: str) -> list:
    """(family, budget, x_adv) for smooth PGD-20 at SMOOTH_BUDGETS, cached in `cache` as
    minimal_attacks caches its own."""
    settings = f"smooth pgd factor {SMOOTH_FACTOR} budgets {SMOOTH_BUDGETS} steps {SMOOTH_STEPS}"
    return _cached(net, x, y, cache, lambda: [("pgd20_smooth", f"linf_{e}", smooth_pgd(net, x, y, e / 255)) for e in SMOOTH_BUDGETS],
                   settings)


def with_smooth(net, x: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray, att_tr: list, att_te: list, name: str):
    """The fused stage's attack lists with smooth PGD-20 added on both halves (made here
    whatever made the others; cached in the work folder per half)."""
    return (att_tr + smooth_attacks(net, x[tr], y[tr], os.path.join(datasets.WORK, f"fused_smooth_{name}_advtrain.npz")),
            att_te + smooth_attacks(net, x[te], y[te], os.path.join(datasets.WORK, f"fused_smooth_{name}_advtest.npz")))


def _cached(net, x: np.ndarray, y: np.ndarray, cache: str, make, settings: str, legacy: tuple = ()) -> list:
    """make()'s list, or the one saved in `cache` for the same images, labels, network and
    `settings` (the attack and its parameters, so a changed setting never reads an old file);
    `legacy`: the names an older file of this cache stored its (family, "l2_min") arrays by."""
    with torch.no_grad():
        probe = net(torch.from_numpy(x[:16])).numpy()
    key = hashlib.sha256(x.tobytes() + y.tobytes() + probe.tobytes() + settings.encode()).hexdigest()
    if os.path.exists(cache):
        z = np.load(cache)
        if str(z["key"]) == key and "names" in z.files:
            return [(str(f), str(b), z[f"x{i}"]) for i, (f, b) in enumerate(z["names"])]
        if str(z["key"]) == key and legacy:
            return [(k, "l2_min", z[k]) for k in legacy]
    torch.manual_seed(0)
    out = make()
    np.savez(cache, key=key, names=np.array([(f, b) for f, b, _ in out]), **{f"x{i}": xa for i, (_, _, xa) in enumerate(out)})
    return out
