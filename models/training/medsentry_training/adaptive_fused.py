"""Stage: adaptive attacks on the fused verdict -> `adaptive_fused` in report.json.

    python -m medsentry_training.adaptive_fused --dataset chest_xray [--steps 40] [--eps 2,4,8] [--out DIR]

The fused detector (fused.py) alone sets the verdict, so an attacker who knows the bundle
attacks it, not the union of detectors that evaluate.py's adaptive attack targets. Three
white-box attacks on the AdvTest images the served classifier gets right, Linf, random
start, step 2.5 eps / steps, lambda in LAMBDAS:

  fused-aware   maximise CE(f(x'), y) - lambda * relu(logit(fused(x')) - logit(t) + 0.1),
                the whole fused score made differentiable: its inputs (the penultimate
                features and logits, or for a fused detector over scores Mahalanobis and
                the learned detector) as they are, the confidence margin, feature squeezing through
                BPDA (bit-depth rounding straight through, the median's gradient to the
                pixel it picked) and the residual statistics with a soft histogram in the
                backward pass only (the forward pass is the exact histogram);
  feature-hiding  (HFC, Yao et al. MICCAI 2021, on the penultimate layer the bundle
                exports) maximise CE - lambda * d_M(features, clean mean of the class the
                attack reaches): the features are pulled into the clean distribution of
                the wrong class, without knowing the detectors;
  fused-aware-lowpass, fused-aware-lowpass-8  the fused-aware loss with the perturbation
                made smooth: PGD on a grid 4 (8) times coarser, bilinearly upsampled to the
                image (a convex combination, so still within eps). The residual statistics
                read Laplacians, which a smooth perturbation hardly moves: this is the
                attack on the verdict's strongest input, not merely through it. Their
                coarser scales (residual.SCALES) see a 4x grid again; the 8x grid is the
                attacker's answer to that.

--kinds runs some of them and keeps the other kinds' rows of an earlier run against the
same fused thresholds (a 224 px graph costs minutes per attack and budget).

t is the fused detector's 5 % threshold (below it the verdict is CLEAN). Every counted
image is re-scored exactly (fused.Inputs: the ONNX classifier, scipy's median, numpy's
histogram): fooled and below the 1 % threshold = not ADVERSARIAL; fooled and below 5 % =
answered CLEAN. A bundle with `[input] quantize_bits` rounds every input before it reads
it: the attacks start from the rounded image and see the rounding with its gradient
passed straight through (TorchFused.served), and the re-scoring rounds as the sidecar does.
Out-of-distribution answers are not counted as caught here (an attack
answered OUT_OF_DISTRIBUTION is still flagged by the sidecar, so these counts are an upper
bound on what gets through). Beside it, the ceiling Tramèr (2022) sets: the hardened
classifier's PGD-20 robust accuracy on the same images and budget.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import advcommon as C
from . import bundle_toml, contract, datasets, detectors
from .adaptive import TorchSqueeze
from .fused import Inputs, base_scores, fused_score
from .ood import Classifier

EPS_255 = (2, 4, 8)
LAMBDAS = (0.0, 1.0, 10.0)  # 0: plain PGD, so the attack is never weaker than the non-adaptive one
SQUEEZE_NAME = contract.name_of("feature_squeezing")
SOFT_WIDTH_255 = 0.25  # width of the soft bin edges of the residual histogram's backward pass
SOFT_STEP = 0.5  # spread, in 1/255 steps, of a difference over the co-occurrences' bins (backward pass)
# The low-pass attacks' grids, times coarser than the image: 4 (16 x 16 at 64 px, 56 x 56 at
# 224 px) and 8, which the residual statistics' coarsest scale (4) sees as smooth again.
LOWPASS_FACTORS = {"fused-aware-lowpass": 4, "fused-aware-lowpass-8": 8}
KINDS = ("fused-aware", "feature-hiding", *LOWPASS_FACTORS)


class TorchFused(torch.nn.Module):
    """logit of the fused score, differentiable (float32), from the bundle's files."""

    def __init__(self, out_dir: str):
        super().__init__()
        dets = detectors.load_detectors(out_dir)
        self.maha, self.logreg = dets["mahalanobis"], dets["logreg"]
        with open(os.path.join(out_dir, "detector_squeeze.json")) as f:
            self.squeeze = TorchSqueeze(json.load(f))
        with open(os.path.join(out_dir, "detector_residual.json")) as f:
            self.resid = json.load(f)
        with open(os.path.join(out_dir, "detector_fused.json")) as f:
            self.fused = json.load(f)
        t = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
        self.means, self.prec = t(self.maha["means"]), t(self.maha["precision"])
        self.lg = {k: t(self.logreg[k]) for k in ("mean", "scale", "weights")}
        self.rs = {k: t(self.resid[k]) for k in ("mean", "scale", "weights")}
        self.fz = {k: t(self.fused[k]) for k in ("mean", "scale", "weights")}
        self.edges = t(self.resid["edges_255"]) / 255
        self.scales = self.resid.get("scales", [1])
        self.cooccurrence_t = self.resid.get("cooccurrence_t", 0)
        self.quantize_bits = bundle_toml.quantize_bits(out_dir)

    def mahalanobis(self, feats):
        diff = feats[:, None, :] - self.means[None]
        return torch.einsum("ncd,de,nce->nc", diff, self.prec, diff).clamp_min(1e-12).sqrt()

    def residual_features(self, x):
        return soft_residual_features(x, self.edges, self.scales, self.cooccurrence_t)

    def served(self, x):
        """x on the bundle's grid, as the sidecar reads it; the gradient passes straight
        through the rounding (BPDA, Athalye et al. 2018: its own derivative is zero almost
        everywhere)."""
        if self.quantize_bits is None:
            return x
        levels = float(2 ** self.quantize_bits - 1)
        return x + (torch.floor(x * levels + 0.5) / levels - x).detach()

    def forward(self, model, x):
        """(logits, features, fused logit) of x as the sidecar reads it."""
        x = self.served(x)
        logits, feats = model.features(x)
        p = torch.softmax(logits, 1)
        copies = [model.features(s(x)) for s in (self.squeeze.bits, self.squeeze.median)]
        sq = torch.maximum(*[(p - torch.softmax(lg, 1)).abs().sum(1) for lg, _ in copies])
        # Once per pass: at three scales of a 224 px input it is the costliest input after the network.
        rf = self.residual_features(x)
        top = p.topk(2, 1).values
        margin = top[:, 0] - top[:, 1]
        if "widths" in self.fused:  # the raw-signal combiner, by the names its file lists (fused.INPUTS)
            blocks = {"penultimate-features": feats, "logits": logits, "residual-features": rf,
                      SQUEEZE_NAME: sq[:, None], "margin": margin[:, None],
                      "log-margin": margin.clamp_min(detectors.LOG_MARGIN_FLOOR).log()[:, None],
                      # sqrt(. + tiny): the distance's gradient is finite where a copy does not move
                      "squeeze-feature-shift": torch.stack([((ft - feats) ** 2).sum(1).add(1e-12).sqrt() for _, ft in copies], 1)}
            inputs = torch.cat([blocks[name] for name in self.fused["inputs"]], 1)
        else:  # bundles fitted before it: the four detectors' scores and the margin
            maha = self.mahalanobis(feats).min(1).values
            z = ((torch.cat([feats, logits], 1) - self.lg["mean"]) / self.lg["scale"]) @ self.lg["weights"] + self.logreg["bias"]
            rz = ((rf - self.rs["mean"]) / self.rs["scale"]) @ self.rs["weights"] + self.resid["bias"]
            inputs = torch.stack([maha, torch.sigmoid(z), sq, torch.sigmoid(rz), margin], 1)
        return logits, feats, self.combiner_logit(inputs)

    def combiner_logit(self, inputs):
        """The combiner's logit of its inputs (one row per image, its file's order)."""
        return ((inputs - self.fz["mean"]) / self.fz["scale"]) @ self.fz["weights"] + self.fused["bias"]


def soft_residual_features(x, edges, scales, cooccurrence_t: int = 0):
    """residual.features of x at `scales` (and its co-occurrences), differentiable: the exact
    histogram forward, a soft one (bin edges SOFT_WIDTH_255 wide) backward; block means by
    average pooling."""
    blocks = [_soft_residual_features_at(F.avg_pool2d(x, s) if s > 1 else x, edges) for s in scales]
    if cooccurrence_t > 0:
        blocks.append(soft_cooccurrences(x, cooccurrence_t))
    return torch.cat(blocks, 1)


def soft_cooccurrences(x, t: int):
    """residual.cooccurrences, differentiable: the exact joint frequencies forward, the
    gradient of soft ones backward (PairFrequencies). The square root's slope is taken at
    f / 2 + 1e-12, so a pair no image has weighs about 5e5: taken at f / 2 + 1e-4 (as the
    histogram's twin does) the attack was not stronger (2026-12-04, fused-aware at 8/255 on
    one core, against the reports' rows of this version: chest 15.8 against 23.4 % (GPU),
    pneumoniamnist-28 27.0 against 29.0 % (GPU; 24.6 % on one core), dermoscopy 57.1 %
    both)."""
    n, k = x.shape[0], 2 * t + 1
    v = x * 255
    q = torch.floor(v.detach() + 0.5)
    out = []
    for order in (1, 2):
        freq = torch.zeros(n, k * k, dtype=x.dtype, device=x.device)
        for vv, qq in ((v, q), (v.transpose(2, 3), q.transpose(2, 3))):
            d = torch.diff(vv, n=order, dim=3).clamp(-t, t)
            if d.shape[-1] < 2:  # lines too short for a pair add nothing, as in residual.cooccurrences
                continue
            idx = (torch.diff(qq, n=order, dim=3).clamp(-t, t) + t).long()
            freq = freq + PairFrequencies.apply(d.reshape(n, -1, d.shape[-1]), idx.reshape(n, -1, d.shape[-1]), t)
        out.append(torch.sqrt(freq / 2 + 1e-12))
    return torch.cat(out, 1)


class PairFrequencies(torch.autograd.Function):
    """(n, lines, L) differences in 1/255 steps, clipped to [-t, t], and their exact bins
    (0..2t) -> (n, (2t + 1)^2) joint frequencies of consecutive pairs along each line.
    Forward: the exact counts. Backward: a difference d spreads over the steps s with
    weights softmax_s(-(d - s)^2 / (2 SOFT_STEP^2)), so that moving it takes weight from its
    own bin to a neighbour's (a linear interpolation's derivative is undefined on the grid,
    where every difference is a whole step), and each pair counts as the product of the
    moved difference's weights and its partner's exact bin. That derivative, taken where
    the difference sits, is a (2t + 1)^2 table D, so d H / d d_i gathers from D G and
    G D^T (G the incoming gradient) instead of materialising a weight per difference and
    step, which cost 28 times as much on a CPU for the same values."""

    @staticmethod
    def forward(ctx, d, idx, t):
        n, k = d.shape[0], 2 * t + 1
        code = (idx[..., :-1] * k + idx[..., 1:]).reshape(n, -1)
        pairs = max(code.shape[1], 1)
        freq = torch.zeros(n, k * k, dtype=d.dtype, device=d.device).scatter_add_(
            1, code, torch.ones(code.shape, dtype=d.dtype, device=d.device)) / pairs
        ctx.save_for_backward(code)
        ctx.shape, ctx.t, ctx.pairs = d.shape, t, pairs
        return freq

    @staticmethod
    def backward(ctx, grad):
        (code,) = ctx.saved_tensors
        n, lines, length = ctx.shape
        k = 2 * ctx.t + 1
        g = grad.reshape(n, k, k)
        slope = softmax_slope(ctx.t, grad.dtype, grad.device)
        as_first = (slope @ g).reshape(n, k * k).gather(1, code).reshape(n, lines, length - 1)
        as_second = (g @ slope.T).reshape(n, k * k).gather(1, code).reshape(n, lines, length - 1)
        out = torch.zeros(n, lines, length, dtype=grad.dtype, device=grad.device)
        out[..., :-1] += as_first
        out[..., 1:] += as_second
        return out / ctx.pairs, None, None


def softmax_slope(t: int, dtype, device):
    """[p, s]: d/dd of softmax_s(-(d - s)^2 / (2 SOFT_STEP^2)) at d = step p (p, s in -t..t)."""
    steps = torch.arange(-t, t + 1, dtype=dtype, device=device)
    gap = steps[:, None] - steps[None, :]
    w = torch.softmax(-gap ** 2 / (2 * SOFT_STEP ** 2), 1)
    u = -gap / SOFT_STEP ** 2
    return w * (u - (w * u).sum(1, keepdim=True))


def _soft_residual_features_at(x, edges):
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    r = (4 * x - p[:, :, :-2, 1:-1] - p[:, :, 2:, 1:-1] - p[:, :, 1:-1, :-2] - p[:, :, 1:-1, 2:]).abs().flatten(1)
    lo, hi = edges, torch.cat([edges[1:], torch.tensor([float("inf")])])
    hard = ((r[:, :, None] >= lo) & (r[:, :, None] < hi)).float().mean(1)
    w = SOFT_WIDTH_255 / 255
    soft = (torch.sigmoid((r[:, :, None] - lo) / w) - torch.sigmoid((r[:, :, None] - hi) / w)).mean(1)
    hist = torch.sqrt(hard) + (torch.sqrt(soft + 1e-4) - torch.sqrt(soft + 1e-4).detach())
    return torch.cat([hist, r.mean(1, keepdim=True), (r ** 2).mean(1, keepdim=True).sqrt()], 1)


def legacy_matrix(inp: Inputs, dets: dict, resid_model) -> np.ndarray:
    """The inputs of a fused detector fitted before the raw-signal combiner."""
    maha, logi, resid = base_scores(dets, resid_model, inp)
    return np.column_stack([maha, logi, inp.squeeze, resid, inp.margin])


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def attack(model, tf: TorchFused, x, y, eps, steps, kind, lam, t_logit, seed):
    """Best iterate per image: misclassified and (approximately) under t; else the last."""
    g = torch.Generator().manual_seed(seed)
    factor = LOWPASS_FACTORS.get(kind)
    lowpass = factor is not None
    h, w = x.shape[2:]
    shape = (*x.shape[:2], max(1, h // factor), max(1, w // factor)) if lowpass else x.shape
    # What PGD moves: the perturbation itself, or its coarse grid (then upsampled; the box
    # clamp below only shrinks it, so the budget holds).
    v = (torch.rand(shape, generator=g) * 2 - 1) * eps
    if not lowpass:
        v = (x + v).clamp(0, 1) - x
    best, found = x.clone(), torch.zeros(len(x), dtype=torch.bool)
    for _ in range(steps):
        v.requires_grad_(True)
        d = F.interpolate(v, size=(h, w), mode="bilinear", align_corners=False) if lowpass else v
        xa = (x + d).clamp(0, 1) if lowpass else x + d
        logits, feats, fz = tf(model, xa)
        if kind == "fused-aware" or lowpass:
            pen = F.relu(fz - t_logit + 0.1)
        else:  # feature-hiding: towards the clean mean of the class the attack currently reaches
            wrong = logits.detach().clone()
            wrong[torch.arange(len(y)), y] = -float("inf")
            pen = tf.mahalanobis(feats).gather(1, wrong.argmax(1, keepdim=True))[:, 0]
        loss = F.cross_entropy(logits, y, reduction="none") - lam * pen
        (grad,) = torch.autograd.grad(loss.sum(), v)
        with torch.no_grad():
            ok = (logits.argmax(1) != y) & (fz <= t_logit)
            best[ok & ~found] = xa[ok & ~found].detach()
            found |= ok
            best[~found] = xa[~found].detach()
        v = (v.detach() + 2.5 * eps / steps * grad.sign()).clamp(-eps, eps)
        if not lowpass:
            v = (x + v).clamp(0, 1) - x
    return best


def main(argv=None):
    def extra(ap):
        ap.add_argument("--steps", type=int, default=40)
        ap.add_argument("--eps", default=None, help="Linf budgets in 1/255, comma list (default 2,4,8; a fitted bundle's fit.json)")
        ap.add_argument("--kinds", default=",".join(KINDS), help="attacks to run (comma list); rows of the "
                        "other kinds and budgets are kept from the last run when it attacked the same thresholds")
    args, spec, out_dir = C.stage_args(__doc__, argv, extra)
    t0 = time.time()
    # A fitted bundle's budgets are fit's --adaptive-eps (a 224 px graph costs ~30x a 64 px one per step).
    budgets = tuple(int(e) for e in args.eps.split(",")) if args.eps else tuple(datasets.fit_config(spec).get("adaptive_eps") or EPS_255)
    model, _ = C.load_ckpt(C.ckpt_path(spec, "hardened"))
    clf = Classifier(out_dir)
    tf = TorchFused(out_dir)
    dets = detectors.load_detectors(out_dir)
    resid_model = served_linear(tf.resid)
    fz_model = served_linear(tf.fused)
    thr = tf.fused["thresholds"]
    x, y, _ = datasets.load_split(spec, "test")
    with open(os.path.join(out_dir, "adv_split.json")) as f:
        te = np.array(json.load(f)["AdvTest"]["index"], dtype=np.int64)
    clean = Inputs(clf, x[te], tf.scales, tf.cooccurrence_t)
    base = te[clean.pred == y[te]]
    # The attacker starts from the image as the sidecar reads it (on the bundle's grid), so a
    # budget of whole 1/255 steps stays within eps after the sidecar's rounding.
    xt, yt = torch.from_numpy(clf.served(x[base])), torch.from_numpy(y[base])
    print(f"[adaptive-fused] {len(base)} clean-correct AdvTest images, thresholds {thr}", flush=True)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise SystemExit(f"--kinds: unknown {unknown}; known: {', '.join(KINDS)}")
    rows, earlier = kept_rows(out_dir, kinds, budgets, thr, args.steps)
    for kind in kinds:
        for e in budgets:
            t1 = time.time()
            passed1 = np.zeros(len(base), bool)
            passed5 = np.zeros(len(base), bool)
            fooled_any = np.zeros(len(base), bool)
            for lam in LAMBDAS:
                xa = torch.cat([attack(model, tf, xt[i:i + 64], yt[i:i + 64], e / 255, args.steps, kind, lam,
                                       logit(thr["fpr_0.05"]), seed=e) for i in range(0, len(base), 64)]).numpy()
                inp = Inputs(clf, xa, tf.scales, tf.cooccurrence_t)
                s = fused_score(fz_model, inp.matrix(tf.fused["inputs"]) if "widths" in tf.fused else legacy_matrix(inp, dets, resid_model))
                fooled = inp.pred != y[base]
                fooled_any |= fooled
                passed1 |= fooled & (s <= thr["fpr_0.01"])
                passed5 |= fooled & (s <= thr["fpr_0.05"])
            rows.append({"attack": kind, "eps_255": e, "n": int(len(base)), "fooled": float(fooled_any.mean()),
                         "fooled_not_adversarial": float(passed1.mean()), "fooled_and_clean": float(passed5.mean()),
                         "seconds": round(time.time() - t1, 1)})
            print(f"[adaptive-fused] {kind} {e}/255: fooled {fooled_any.mean():.3f}, not ADVERSARIAL {passed1.mean():.3f}, "
                  f"answered CLEAN {passed5.mean():.3f} ({time.time() - t1:.0f}s)", flush=True)
    rob = {}
    with open(os.path.join(out_dir, "report.json")) as f:
        ev = json.load(f).get("adversarial_evaluation", {})
    for b, v in (ev.get("robust_accuracy_advtest", {}).get("hardened") or {}).items():
        rob[b] = v.get("pgd20")
    command = (f"python -m medsentry_training.adaptive_fused --dataset {args.dataset} --steps {args.steps}"
               + (f" --eps {args.eps}" if args.eps else "") + (f" --kinds {args.kinds}" if set(kinds) != set(KINDS) else ""))
    C.merge_report(out_dir, "adaptive_fused", {
        "command": command, "commands": [c for c in earlier if c != command] + [command],
        "steps": args.steps, "lambdas": list(LAMBDAS), "threshold_attacked": "fpr_0.05", "lowpass_factors": LOWPASS_FACTORS,
        "fused_thresholds": thr, "rows": sorted(rows, key=lambda r: (KINDS.index(r["attack"]), r["eps_255"])),
        "robust_accuracy_pgd20_ceiling": rob, "base": "AdvTest images the served classifier classifies correctly when clean",
        "seconds": round(time.time() - t0, 1)})
    print(f"[done] adaptive attacks on the fused verdict in {time.time() - t0:.0f}s", flush=True)


def kept_rows(out_dir: str, kinds: list, budgets: tuple, thr: dict, steps: int) -> tuple[list, list]:
    """The last run's rows that this run does not measure again (another kind or another
    budget), when it attacked these thresholds with as many steps (rows measured against
    another fused detector would be stale beside the new ones), and the commands that
    measured them. A run of every kind starts afresh when the last one is stale; a run of
    some kinds needs it current."""
    with open(os.path.join(out_dir, "report.json")) as f:
        last = json.load(f).get("adaptive_fused") or {}
    if not last or last.get("fused_thresholds") != thr or last.get("steps") != steps:
        if set(kinds) == set(KINDS):
            return [], []
        raise SystemExit("--kinds: the last adaptive_fused run attacked other thresholds or took another number of "
                         "steps (or there is none): run every kind")
    kept = [r for r in last["rows"] if not (r["attack"] in kinds and r["eps_255"] in budgets)]
    return kept, (last.get("commands") or [last["command"]]) if kept else []


def served_linear(d: dict):
    """The (scaler, lr) pair residual.score and fused.fused_score take, read back from a
    detector file (detector_residual.json, detector_fused.json)."""
    return _Linear(d), _Linear(d)


class _Linear:
    """StandardScaler + LogisticRegression stand-in read back from a detector file, so the
    exact re-scoring uses the served numbers, not a refit."""

    def __init__(self, d: dict):
        self.mean, self.scale = np.array(d["mean"]), np.array(d["scale"])
        self.w, self.b = np.array(d["weights"]), float(d["bias"])

    def transform(self, X):
        return (np.asarray(X, np.float64) - self.mean) / self.scale

    def predict_proba(self, Z):
        p = 1 / (1 + np.exp(-(Z @ self.w + self.b)))
        return np.column_stack([1 - p, p])


if __name__ == "__main__":
    main()
