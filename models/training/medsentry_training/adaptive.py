"""The adaptive attack of the evaluation stage: PGD that knows every detector the sidecar
serves (Mahalanobis, the learned logistic detector and feature squeezing) and tries to be
misclassified while staying under all their 1 % FPR thresholds.

Not a stage itself; `evaluate` calls `run`. Feature squeezing is made differentiable the
usual way for such defenses (Athalye et al. 2018, BPDA): the bit-depth rounding passes the
gradient straight through, the 3x3 median passes it to the pixel the median picked. Every
image the attack counts is re-scored in float64 with the exact detectors (scipy's median,
numpy rounding), so the approximations can only make the attack weaker, never the count
wrong.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from . import advcommon as C
from .detectors import SERVED_DETECTORS, TorchDetectors, score_all

EPS_255 = [1, 2, 4, 8, 16, 32]
LAMBDAS = [1.0, 10.0]


class TorchSqueeze(torch.nn.Module):
    """Differentiable feature-squeezing margin: (score - t) / t, > 0 = flagged at 1 % FPR."""

    def __init__(self, det: dict, key: str = "fpr_0.01"):
        super().__init__()
        self.levels = float(2 ** det["bit_depth"] - 1)
        self.size = det["median_size"]
        self.t = det["thresholds"][key]

    def bits(self, x):
        q = torch.round(x * self.levels) / self.levels
        return x + (q - x).detach()  # straight-through: forward rounds, backward identity

    def median(self, x):
        r = self.size // 2
        n, c, h, w = x.shape
        p = F.pad(x, (r, r, r, r), mode="replicate")
        cols = F.unfold(p.reshape(n * c, 1, h + 2 * r, w + 2 * r), self.size)  # (n*c, k*k, h*w)
        return cols.median(dim=1).values.reshape(n, c, h, w)

    def margin(self, model, x, logits):
        p = torch.softmax(logits, 1)
        dist = [(p - torch.softmax(model(sq(x)), 1)).abs().sum(1) for sq in (self.bits, self.median)]
        return (torch.maximum(*dist) - self.t) / self.t


def served(dets: dict) -> dict:
    """The served subset of the fitted detectors (logreg_all is a reference, not served)."""
    return {n: d for n, d in dets.items() if n in SERVED_DETECTORS}


def undetected(model, dets: dict, squeeze_det: dict | None, x: np.ndarray):
    """(logits, mask of images under every served detector's 1 % threshold), float64."""
    lo, fe = C.forward_batches(model, x)
    sc = score_all(dets, lo, fe)
    und = np.all([sc[n] <= dets[n]["thresholds"]["fpr_0.01"] for n in dets], axis=0)
    if squeeze_det is not None:
        from .squeeze import scores as squeeze_scores  # squeeze imports evaluate: import late
        und &= squeeze_scores(model, x) <= squeeze_det["thresholds"]["fpr_0.01"]
    return lo, und


def run(model, dets, squeeze_det, x, y, idx, steps, log, budgets=EPS_255):
    """PGD (Linf) on CE(classifier) - lambda * sum_d relu(margin_d + 0.1). An image counts
    when some iterate of some lambda is misclassified and below every served detector's
    1 % threshold (re-checked exactly). Budgets in 1/255, tried in order until one reaches
    50 % (a fitted bundle passes its --adaptive-eps: CPU time at large input sizes)."""
    tdet = TorchDetectors(dets)
    tsq = TorchSqueeze(squeeze_det) if squeeze_det is not None else None
    xt, yt = torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
    rows = []
    for e in budgets:
        eps = e / 255
        t0 = time.time()
        found = torch.zeros(len(idx), dtype=torch.bool)
        best = xt.clone()
        for lam in LAMBDAS:
            g = torch.Generator().manual_seed(e)
            for i in range(0, len(idx), 64):
                xb, yb = xt[i:i + 64], yt[i:i + 64]
                d = ((torch.rand(xb.shape, generator=g) * 2 - 1) * eps)
                d = (xb + d).clamp(0, 1) - xb
                for _ in range(steps):
                    d.requires_grad_(True)
                    xa = xb + d
                    logits, feats = model.features(xa)
                    margins = tdet(logits, feats)
                    if tsq is not None:
                        margins["squeeze"] = tsq.margin(model, xa, logits)
                    pen = sum(F.relu(m + 0.1) for m in margins.values())
                    loss = F.cross_entropy(logits, yb, reduction="none") - lam * pen
                    (grad,) = torch.autograd.grad(loss.sum(), d)
                    with torch.no_grad():
                        ok = (logits.argmax(1) != yb) & torch.stack([m <= 0 for m in margins.values()]).all(0)
                        newly = ok & ~found[i:i + len(xb)]
                        best[i:i + len(xb)][newly] = xa[newly].detach()
                        found[i:i + len(xb)] |= ok
                    d = (d.detach() + 2.5 * eps / steps * grad.sign()).clamp(-eps, eps)
                    d = (xb + d).clamp(0, 1) - xb
        lo, und = undetected(model, dets, squeeze_det, best.numpy())
        ok = (lo.argmax(1) != y[idx]) & und & found.numpy()
        rows.append({"eps": f"linf_{e}", "eps_255": e, "fooled_and_undetected": float(ok.mean()),
                     "n": int(len(idx)), "seconds": round(time.time() - t0, 1)})
        log[f"adaptive linf_{e}"] = round(time.time() - t0, 1)
        print(f"[adaptive] eps {e}/255: fooled & undetected {ok.mean():.3f} ({time.time() - t0:.0f}s)", flush=True)
        if ok.mean() >= 0.5:
            break
    smallest = next((r["eps_255"] for r in rows if r["fooled_and_undetected"] >= 0.5), None)
    names = sorted(dets) + (["feature-squeezing"] if squeeze_det is not None else [])
    return {"steps": steps, "lambdas": LAMBDAS, "detectors": names, "rows": rows, "budgets_255": list(budgets),
            "smallest_eps_255_with_50pct": smallest,
            "loss": "CE(f(x'), y) - lambda * sum_d relu(margin_d + 0.1); margin = (score - t)/t (Mahalanobis, "
                    "feature squeezing with BPDA through the bit-depth rounding), logit - logit(t) (logistic); "
                    "t = 1 % FPR thresholds; step 2.5 eps/steps, random start",
            "base": "AdvTest images the served classifier classifies correctly when clean"}


def non_adaptive_pgd20(model, dets, squeeze_det, recs) -> dict:
    """Share of clean-correct AdvTest images that plain PGD-20 fools without any served
    detector flagging them, per budget: the baseline the adaptive attack is compared with."""
    out = {}
    for r in recs:
        if r.target_model == C.SERVED and r.attack == "pgd20":
            m = (r.split == 1) & (r.pred_clean == r.label)
            if not m.any():
                out[r.budget] = None
                continue
            _, und = undetected(model, dets, squeeze_det, r.x_adv[m])
            out[r.budget] = float(((r.pred_adv[m] != r.label[m]) & und).mean())
    return out
