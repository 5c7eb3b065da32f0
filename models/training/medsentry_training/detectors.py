"""Stage: fit the adversarial-input detectors on AdvTrain ONLY and export them as JSON the
Rust sidecar evaluates without Python.

    python -m medsentry_training.detectors --dataset chest_xray [--limit N] [--out DIR]

Inputs: the attack stage's folder (work/attacks/<bundle>[_limitN]/), whose
`served_snapshot.pt` is the hardened classifier the attacks were made against. Both
detectors read the served network's penultimate `features` (64-d) and `logits` (2) from
the same forward pass (the ONNX graph's two outputs).

Detectors (higher score = more adversarial; flag when score > threshold):
  detector_mahalanobis.json  Lee et al. 2018, penultimate layer only, no input
      preprocessing: class means and a tied covariance of CLEAN AdvTrain features (labels =
      ground truth), Ledoit-Wolf shrinkage; score = min_c sqrt((f-mu_c)^T P (f-mu_c)).
  detector_logreg.json       Ma et al.-style learned detector: L2-regularised logistic
      regression on standardised [features, logits]; negatives clean AdvTrain, positives
      successful adversarial AdvTrain examples (clean-correct images only) of FGSM, BIM,
      PGD-20 (all budgets) and C&W against the served model. Classes weighted equally.
      This is also the "seen attacks only" variant of the unseen-attack table.
  detector_logreg_all.json   same, trained on every attack family in AdvTrain (adds
      Square, transfer, UAPs, one-pixel, L-BFGS); not used for the unseen table.
Thresholds: on clean AdvTrain scores, the smallest threshold t with
#(score > t) <= fpr * n, for fpr 1 % and 5 %. The scores are out-of-fold (5-fold
cross-fitting on AdvTrain): a detector scores the images it was fitted on lower than new
ones, and thresholds from such in-sample scores fired on 8.7 % (Mahalanobis) and 3.2 %
(logistic) of clean AdvTest images of the chest bundle instead of 1 %.

Also writes adv_split.json (AdvTrain / AdvTest index and file lists) and
advtest_sample.json (6 clean, 7 PGD-4/255, 7 UAP AdvTest examples with Python's
detector scores, for the Rust parity tests) into --out. The default --out is the real
bundle (models/<bundle>/); when that folder holds a classifier.onnx, it must reproduce the
attacked snapshot (max abs difference <= 1e-4) or the stage refuses to write detectors
that do not match the served classifier.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression

from . import advcommon as C
from . import datasets, sample

SEEN = ("fgsm", "bim", "pgd20", "cw")
NOT_ADVERSARIAL = ("uap_random", "aa_lite")  # random controls; aa_lite exists on AdvTest only
FPRS = (0.01, 0.05)
L2_REG = 1e-3
N_FOLDS = 5
SERVED_DETECTORS = ("mahalanobis", "logreg")  # served with feature squeezing; logreg_all is a reference
THRESHOLDS_FROM = (f"out-of-fold scores of clean AdvTrain: {N_FOLDS} folds stratified by class, each image scored by "
                   "the detector fitted without its fold (adversarial examples go with their clean image's fold); "
                   "the served detector is then fitted on all of AdvTrain")


# ----------------------------------------------------------------------------- fitting
def ledoit_wolf(X: np.ndarray):
    """Ledoit-Wolf shrunk covariance of centred rows X (n, d) (scikit-learn's, as the
    hand-written one it replaced: tests/test_sklearn_parity.py). Returns (cov, shrinkage)."""
    lw = LedoitWolf(assume_centered=True).fit(X)
    return lw.covariance_, float(lw.shrinkage_)


def fit_mahalanobis(feats: np.ndarray, y: np.ndarray, n_classes: int):
    means = np.stack([feats[y == c].mean(0) for c in range(n_classes)])
    centred = feats - means[y]
    cov, a = ledoit_wolf(centred)
    precision = np.linalg.inv(cov)
    precision = (precision + precision.T) / 2
    return means, precision, a


def mahalanobis_score(feats: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    d = feats[:, None, :] - means[None, :, :]
    q = np.einsum("ncd,de,nce->nc", d, precision, d)
    return np.sqrt(np.maximum(q, 0)).min(1)


def fit_logistic(X: np.ndarray, t: np.ndarray, l2: float = L2_REG):
    """Weighted L2-regularised logistic regression on standardised X (float64): minimises
    sum_i sw_i * logloss_i + l2 / 2 * |w|^2 (bias not penalised), the classes weighted to
    equal total weight (sw sums to 1/2 per class). scikit-learn's Newton-Cholesky solver on
    that objective (C = 1 / l2): the weights of the hand-written Newton iteration it replaced
    within 1e-13 relative on the chest, PneumoniaMNIST and dermoscopy AdvTrain sets
    (tests/test_sklearn_parity.py holds it to 1e-8). Returns (mean, scale, w, b)."""
    mean = X.mean(0)
    scale = X.std(0)
    scale[scale < 1e-8] = 1.0
    Z = (X - mean) / scale
    sw = np.where(t == 1, 0.5 / max(1, t.sum()), 0.5 / max(1, (1 - t).sum()))
    lr = LogisticRegression(C=1 / l2, solver="newton-cholesky", tol=1e-12, max_iter=100).fit(Z, t, sample_weight=sw)
    return mean, scale, lr.coef_[0].copy(), float(lr.intercept_[0])


def logistic_logit(X: np.ndarray, det: dict) -> np.ndarray:
    return ((X - np.array(det["mean"])) / np.array(det["scale"])) @ np.array(det["weights"]) + det["bias"]


def threshold_at(scores: np.ndarray, fpr: float) -> float:
    """Smallest observed score t with #(scores > t) <= fpr * n."""
    s = np.sort(scores)
    k = int(np.floor(fpr * len(s)))  # allowed number above the threshold
    return float(s[len(s) - 1 - k]) if len(s) else float("nan")


# ----------------------------------------------------------------------------- scoring
def score_all(dets: dict, logits: np.ndarray, feats: np.ndarray) -> dict:
    """Scores of every detector in `dets` (name -> JSON dict), float64."""
    out = {}
    for name, d in dets.items():
        if d["kind"] == "mahalanobis":
            out[name] = mahalanobis_score(feats, np.array(d["means"]), np.array(d["precision"]))
        else:
            z = logistic_logit(np.hstack([feats, logits]), d)
            out[name] = 1 / (1 + np.exp(-z))
    return out


class TorchDetectors(torch.nn.Module):
    """Differentiable re-implementation (float32) for adaptive attacks. forward(logits,
    feats) -> dict name -> 'margin' score normalised so that > 0 means flagged at the
    1 % FPR threshold (Mahalanobis: (score - t) / t; logistic: logit - logit(t))."""

    def __init__(self, dets: dict, key: str = "fpr_0.01"):
        super().__init__()
        self.dets = dets
        self.key = key
        for name, d in dets.items():
            if d["kind"] == "mahalanobis":
                self.register_buffer(f"{name}_means", torch.tensor(d["means"], dtype=torch.float32))
                self.register_buffer(f"{name}_prec", torch.tensor(d["precision"], dtype=torch.float32))
            else:
                for k in ["mean", "scale", "weights"]:
                    self.register_buffer(f"{name}_{k}", torch.tensor(d[k], dtype=torch.float32))

    def forward(self, logits, feats):
        out = {}
        for name, d in self.dets.items():
            if d["kind"] == "mahalanobis":
                diff = feats[:, None, :] - getattr(self, f"{name}_means")[None]
                q = torch.einsum("ncd,de,nce->nc", diff, getattr(self, f"{name}_prec"), diff)
                s = q.clamp_min(1e-12).sqrt().min(1).values
                t = d["thresholds"][self.key]
                out[name] = (s - t) / t
            else:
                x = torch.cat([feats, logits], 1)
                z = ((x - getattr(self, f"{name}_mean")) / getattr(self, f"{name}_scale")) @ getattr(self, f"{name}_weights") + d["bias"]
                out[name] = z - d["thresholds_logit"][self.key]
        return out


def load_detectors(out_dir: str) -> dict:
    dets = {}
    for name in ["mahalanobis", "logreg", "logreg_all"]:
        p = os.path.join(out_dir, f"detector_{name}.json")
        if os.path.exists(p):
            with open(p) as f:
                dets[name] = json.load(f)
    return dets


# ----------------------------------------------------------------------------- stage
def adversarial_train_set(recs, families):
    """(x_adv, meta, source) of the successful AdvTrain examples of `families` (None = all)
    against the served model; source = test-set index of each example's clean image."""
    xs, meta, src = [], [], []
    for r in recs:
        fam = r.attack
        if fam in NOT_ADVERSARIAL or r.target_model != C.SERVED:
            continue
        base = "uap" if fam.startswith("uap") else fam
        if families is not None and base not in families:
            continue
        m = (r.split == 0) & r.success & (r.pred_clean == r.label)
        if m.any():
            xs.append(r.x_adv[m])
            src.append(r.index[m])
            meta.append((fam, r.budget, int(m.sum())))
    if not xs:
        return np.zeros((0, 1, 1, 1), np.float32), meta, np.zeros(0, np.int64)
    return np.concatenate(xs), meta, np.concatenate(src)


def folds(y: np.ndarray, k: int = N_FOLDS, seed: int = 0) -> np.ndarray:
    """Fold number of each clean AdvTrain image, stratified by class."""
    rng = np.random.default_rng(seed)
    out = np.zeros(len(y), np.int64)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        out[idx] = np.arange(len(idx)) % k
    return out


def out_of_fold(fit_and_score, fold: np.ndarray) -> np.ndarray:
    """Each clean AdvTrain image's score from a detector fitted without its fold: scores
    that behave like those of unseen clean images, which the thresholds are for (scores of
    the images a detector was fitted on sit lower, so thresholds from them fire too often
    on new images)."""
    oof = np.zeros(len(fold))
    for f in np.unique(fold):
        oof[fold == f] = fit_and_score(fold != f, fold == f)
    return oof


def check_onnx(out_dir: str, model, x: np.ndarray):
    onnx_path = os.path.join(out_dir, "classifier.onnx")
    if not os.path.exists(onnx_path):
        return None
    if not os.path.exists(os.path.join(out_dir, "bundle.toml")):
        return None
    from .ood import Classifier
    clf = Classifier(out_dir)
    lo, fe = clf.run(x, clf.logits_name, clf.features_name)
    tl, tf = C.forward_batches(model, x)
    diff = max(float(np.abs(lo - tl).max()), float(np.abs(fe - tf).max()))
    return {"onnx_sha256": C.sha256_file(onnx_path), "max_abs_diff_vs_snapshot": diff}


def write_sample(out_dir, spec, dets, model, recs, split, x, y, files, per_kind=7):
    items = []

    def add(kind, attack, budget, xs, idxs):
        lo, fe = C.forward_batches(model, xs)
        sc = score_all(dets, lo, fe)
        items.extend(sample.item(kind, attack, budget, idxs[k], files[idxs[k]], y[idxs[k]], xs[k], lo[k], fe[k],
                                 {n: v[k] for n, v in sc.items()}) for k in range(len(xs)))

    # clean: balanced classes, at least one each (7 classes: one each)
    cl = []
    for c in range(len(spec.labels)):
        cl += [i for i in split["test"] if y[i] == c][: max(1, per_kind // len(spec.labels))]
    cl = np.array(cl, dtype=np.int64)
    add("clean", "none", "none", x[cl], cl)
    for attack, budget in [("pgd20", "linf_4"), ("uap", "linf_z4")]:
        r = [r for r in recs if r.target_model == C.SERVED and r.attack == attack and r.budget == budget]
        if not r:
            print(f"[warn] sample: no {attack} {budget} records", flush=True)
            continue
        r = r[0]
        te = np.flatnonzero(r.split == 1)
        order = np.concatenate([te[r.success[te]], te[~r.success[te]]])[:per_kind]  # successful first
        add(attack, attack, budget, r.x_adv[order], r.index[order])
    path = sample.create(out_dir, x.shape[1:], items)
    print(f"[sample] {len(items)} items, {os.path.getsize(path) / 1e6:.2f} MB -> advtest_sample.json", flush=True)


def main(argv=None):
    args, spec, out_dir = C.stage_args(__doc__, argv)
    os.makedirs(out_dir, exist_ok=True)
    times = {}
    t0 = time.time()
    with C.timed(times, "load"):
        st = C.load_stage(spec, args.limit)
        adir, man, model, ck, x, y, files, split, recs = st.adir, st.man, st.model, st.ck, st.x, st.y, st.files, st.split, st.recs
    onnx_check = check_onnx(out_dir, model, x[split["train"][:64]])
    if onnx_check:
        print(f"[onnx] {json.dumps(onnx_check)}", flush=True)
        if onnx_check["max_abs_diff_vs_snapshot"] > 1e-4:
            raise SystemExit("classifier.onnx in --out is not the attacked hardened snapshot: re-export it "
                             "(python -m medsentry_training.export --dataset chest_xray --classifier hardened) "
                             "and re-run the attacks, or use another --out")
    provenance = {"classifier": "hardened", "checkpoint_sha256": man["shas"]["hardened"],
                  "checkpoint_epoch": ck.get("epoch"), **(onnx_check or {}),
                  "fitted_on": "AdvTrain (official test set, stratified 50 %, seed 1)" +
                               (f", --limit {args.limit} (QUICK CHECK, not for serving)" if args.limit else ""),
                  "generated_by": "python -m medsentry_training.detectors"}

    with C.timed(times, "features"):
        tr = split["train"]
        lo0, fe0 = C.forward_batches(model, x[tr])
    dets = {}
    fold = folds(y[tr])
    with C.timed(times, "mahalanobis"):
        means, prec, shrink = fit_mahalanobis(fe0, y[tr], len(spec.labels))

        def maha_oof(fit, held):
            mu, pr, _ = fit_mahalanobis(fe0[fit], y[tr][fit], len(spec.labels))
            return mahalanobis_score(fe0[held], mu, pr)
        s0 = out_of_fold(maha_oof, fold)
        dets["mahalanobis"] = {
            "kind": "mahalanobis", "schema_version": 1, "input": "features", "feature_dim": int(fe0.shape[1]),
            "formula": "f = classifier output 'features' (penultimate, feature_dim floats). For each class c: "
                       "d_c = sqrt((f - means[c])^T precision (f - means[c])); score = min_c d_c. "
                       "Adversarial when score > thresholds[key]. Compute in float64.",
            "class_labels": list(spec.labels), "means": means.tolist(), "precision": prec.tolist(),
            "shrinkage": shrink, "covariance": "tied over classes, Ledoit-Wolf shrinkage, clean AdvTrain",
            "higher_is_adversarial": True,
            "thresholds": {f"fpr_{f}": threshold_at(s0, f) for f in FPRS}, "thresholds_from": THRESHOLDS_FROM,
            "n_clean": int(len(tr)), **provenance}
    for name, fams in [("logreg", SEEN), ("logreg_all", None)]:
        with C.timed(times, name):
            xa, meta, src = adversarial_train_set(recs, fams)
            if len(xa) == 0:
                print(f"[warn] {name}: no successful adversarial AdvTrain examples; skipped", flush=True)
                continue
            lo1, fe1 = C.forward_batches(model, xa)
            X0, X1 = np.hstack([fe0, lo0]), np.hstack([fe1, lo1])
            X = np.vstack([X0, X1])
            t = np.concatenate([np.zeros(len(fe0)), np.ones(len(fe1))])
            mean, scale, w, b = fit_logistic(X, t)
            det = {"kind": "logistic", "schema_version": 1, "input": "concat(features, logits)",
                   "feature_dim": int(fe0.shape[1]), "n_logits": int(lo0.shape[1]),
                   "formula": "x = concat(features[0..feature_dim], logits[0..n_logits]) (classifier outputs of the "
                              "same forward pass); z = bias + sum_i weights[i] * (x[i] - mean[i]) / scale[i]; "
                              "score = 1 / (1 + exp(-z)) = P(adversarial). Adversarial when score > thresholds[key] "
                              "(equivalently z > thresholds_logit[key]). Compute in float64.",
                   "mean": mean.tolist(), "scale": scale.tolist(), "weights": w.tolist(), "bias": b,
                   "l2": L2_REG, "higher_is_adversarial": True,
                   "trained_on_attacks": list(fams) if fams else "all AdvTrain attack families against the served model",
                   "n_clean": int(len(fe0)), "n_adversarial": int(len(fe1)),
                   "adversarial_counts": [{"attack": a, "budget": bu, "n": n} for a, bu, n in meta], **provenance}

            def logreg_oof(fit, held):
                # adversarial examples go with the fold of the clean image they were made from
                adv = np.isin(src, tr[fit])
                m_, s_, w_, b_ = fit_logistic(np.vstack([X0[fit], X1[adv]]),
                                              np.concatenate([np.zeros(fit.sum()), np.ones(adv.sum())]))
                return logistic_logit(X0[held], {"mean": m_, "scale": s_, "weights": w_, "bias": b_})
            z0 = out_of_fold(logreg_oof, fold)
            det["thresholds_logit"] = {f"fpr_{f}": threshold_at(z0, f) for f in FPRS}
            det["thresholds"] = {k: float(1 / (1 + np.exp(-v))) for k, v in det["thresholds_logit"].items()}
            det["thresholds_from"] = THRESHOLDS_FROM
            dets[name] = det
    for name, det in dets.items():
        C.write_json(os.path.join(out_dir, f"detector_{name}.json"), det)
        print(f"[detector] {name}: thresholds {det['thresholds']}", flush=True)
    with C.timed(times, "sample"):
        # A 224 px RGB tensor is 150,528 values, about 1.5 MB of JSON: one item per kind
        # (and class, for clean images) keeps a full-size bundle's sample a few MB.
        write_sample(out_dir, spec, dets, model, recs, split, x, y, files, per_kind=7 if x[0].size <= 3 * 64 * 64 else 1)
    C.copy_if_exists(os.path.join(adir, "split.json"), os.path.join(out_dir, "adv_split.json"))
    C.write_json(os.path.join(out_dir, "detectors_fit_log.json"), {"seconds": times, "limit": args.limit, **provenance})
    print(f"[done] detectors in {time.time() - t0:.0f}s -> {os.path.relpath(out_dir, datasets.REPO)}", flush=True)


if __name__ == "__main__":
    main()


# A margin under this counts as this one (the log of 0 is not a number); twin of
# LOG_MARGIN_FLOOR in src/defense/detectors.rs.
LOG_MARGIN_FLOOR = 1e-6


def log_margin(logits: np.ndarray) -> np.ndarray:
    """ln of the top-1 minus top-2 softmax probability, in float64 from the logits, floored at
    LOG_MARGIN_FLOOR: a DeepFool, L-BFGS or C&W example stops just past the decision boundary
    (margin near 0.01), an image the model is unsure of sits at 0.1-0.3; on a log scale the
    linear combiner tells them apart (experiments/log_margin.py)."""
    p = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    top = np.sort(p, axis=1)
    return np.log(np.maximum(top[:, -1] - top[:, -2], LOG_MARGIN_FLOOR))
