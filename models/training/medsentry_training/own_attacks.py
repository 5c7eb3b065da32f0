"""The attacks this project writes itself: Hirano & Takemoto's iterative UAP (with DeepFool
steps, any number of classes, non-targeted and targeted, as the literature's UAP tables were
made), its random-noise controls, and Szegedy's box-constrained L-BFGS; plus the batching
helpers the attack stage uses. Not a stage; `attacks` calls these.

torchattacks has no UAP. ART 1.20 has UniversalPerturbation and TargetedUniversalPerturbation;
ours is written out to follow Hirano & Takemoto's update (and to run on the project's own
nets without ART's estimator wrappers). It has not been cross-checked against ART's
(ART is not installed in this pipeline's environment): that comparison is still to do.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def predict(model, x: torch.Tensor, batch: int = 256) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(model(x[i:i + batch]).argmax(1).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def batched(fn, x: torch.Tensor, y: torch.Tensor, batch: int = 64) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)])


def deepfool_to(model, x: torch.Tensor, target: int | None, norm: str, source: int | None = None,
                max_iter: int = 10, overshoot: float = 0.02) -> torch.Tensor:
    """Minimal perturbation (DeepFool) for one image x (1,C,H,W): towards class `target`, or,
    with target None, out of class `source` across its nearest linearised boundary. Returns r
    with x + r in the box (zeros when it is already there). With 2 classes both reduce to the
    2-class DeepFool step."""
    r = torch.zeros_like(x)
    for _ in range(max_iter):
        xa = (x + (1 + overshoot) * r).clamp(0, 1).requires_grad_(True)
        z = model(xa)[0]
        cur = int(z.argmax())
        if (target is not None and cur == target) or (target is None and cur != source):
            break
        if target is not None:
            # the strongest competitor of the target: f > 0 while it still wins
            others = z.detach().clone()
            others[target] = -float("inf")
            k = int(others.argmax())
            f = z[k] - z[target]
            (g,) = torch.autograd.grad(-f, xa)  # direction that lowers f
            f = f.detach()
        else:
            # every other class's boundary, linearised; take the nearest (DeepFool's rule)
            best = None
            for k in range(len(z)):
                if k == source:
                    continue
                fk = z[source] - z[k]  # > 0 while source still wins over k
                (gk,) = torch.autograd.grad(-fk, xa, retain_graph=True)
                dist = float(fk.abs()) / (float(gk.norm() if norm == "l2" else gk.abs().sum()) + 1e-12)
                if best is None or dist < best[0]:
                    best = (dist, fk.detach(), gk)
            _, f, g = best
        if norm == "l2":
            step = (f.abs() + 1e-4) / (g.norm() ** 2 + 1e-12) * g
        else:
            step = (f.abs() + 1e-4) / (g.abs().sum() + 1e-12) * g.sign()
        r = r + step
    return ((x + (1 + overshoot) * r).clamp(0, 1) - x).detach()


def project(v: torch.Tensor, norm: str, xi: float) -> torch.Tensor:
    if norm == "l2":
        n = float(v.norm())
        return v * min(1.0, xi / (n + 1e-12))
    return v.clamp(-xi, xi)


def hirano_uap(model, x: torch.Tensor, norm: str, xi: float, target: int | None, seed: int,
               max_passes: int = 5, stop_rate: float = 0.9):
    """Hirano & Takemoto's simple iterative method (non-targeted when target is None)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.zeros_like(x[:1])
    clean = predict(model, x)
    rate, passes = 0.0, 0
    for passes in range(1, max_passes + 1):
        for i in torch.randperm(len(x), generator=g).tolist():
            xi_ = x[i:i + 1]
            xa = (xi_ + v).clamp(0, 1)
            with torch.no_grad():
                p = int(model(xa).argmax(1))
            if (target is None and p != int(clean[i])) or p == target:
                continue  # already fooled / already at the target
            r = deepfool_to(model, xa, target, norm, source=int(clean[i]))
            v = project(((xa + r).clamp(0, 1) - xi_), norm, xi)  # v + r, in the box, projected
        pa = predict(model, (x + v).clamp(0, 1))
        rate = float((pa != clean).mean()) if target is None else float((pa == target).mean())
        print(f"    pass {passes}: AdvTrain {'fooling' if target is None else 'success'} rate {rate:.3f}", flush=True)
        if rate >= stop_rate:
            break
    return v, {"passes": passes, "advtrain_rate": rate}


def random_control(shape, norm: str, xi: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if norm == "l2":
        v = torch.randn(shape, generator=g)
        return v * (xi / v.norm())
    return (torch.randint(0, 2, shape, generator=g).float() * 2 - 1) * xi


def lbfgs_attack(model, x: torch.Tensor, y: torch.Tensor, search_steps: int = 5, max_iter: int = 10):
    """Box-constrained L-BFGS (Szegedy et al.) per image, targeted: to the other class (2
    classes) or to the clean logits' strongest class other than the label (more classes)."""
    out = []
    with torch.no_grad():
        logits = model(x)
        logits[torch.arange(len(x)), y] = -float("inf")
        competitor = logits.argmax(1)
    for i in range(len(x)):
        xi_, t = x[i:i + 1], competitor[i:i + 1]
        best, best_norm = xi_.clone(), float("inf")
        lo, hi, c = 0.0, None, 1.0  # larger c = smaller perturbation
        for _ in range(search_steps):
            d = torch.zeros_like(xi_, requires_grad=True)
            opt = torch.optim.LBFGS([d], lr=1, max_iter=max_iter, line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                loss = c * (d ** 2).sum() + F.cross_entropy(model((xi_ + d).clamp(0, 1)), t)
                loss.backward()
                return loss
            opt.step(closure)
            xa = (xi_ + d.detach()).clamp(0, 1)
            with torch.no_grad():
                ok = int(model(xa).argmax(1)) == int(t)
            if ok:
                n = float((xa - xi_).norm())
                if n < best_norm:
                    best, best_norm = xa, n
                lo = c
                c = c * 10 if hi is None else (c + hi) / 2
            else:
                hi = c
                c = (lo + c) / 2 if lo > 0 else c / 10
        out.append(best)
    return torch.cat(out)
