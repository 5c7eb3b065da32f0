"""Stage: one fused detector whose thresholds set the verdict -> detector_fused.json, its
[[detectors]] entry, a `fused_detector` section in report.json, fused scores in
advtest_sample.json.

    python -m medsentry_training.fused --dataset chest_xray [--out DIR] [--from-records]

The served detectors (Mahalanobis, learned logistic, feature squeezing, and the residual
statistics detector this stage fits: residual.py) each have a 1 %
and a 5 % threshold; the verdict used to be their union, so clean images were flagged at
about three times the calibrated rate (clean AdvTest: 3.2 % ADVERSARIAL; official test set:
11 % SUSPICIOUS or ADVERSARIAL). The fused detector is one logistic regression (scikit-learn,
standardised inputs, classes balanced, C chosen on AdvTrain by choose_c) over the raw signals of one input: the classifier's
penultimate features and logits, the residual-statistics features of the input
(residual.features; since 2026-12-04 with the co-occurrences of consecutive pixel
differences, experiments/cooccurrence.py), the feature-squeezing score, how far each squeezed copy moves the
penultimate features (squeeze.feature_shift; since 2026-12-02, experiments/squeeze_shift.py:
about +7 points of mean TPR at 1 % on the chest bundle, same clean rate) and the confidence margin (top-1 minus
top-2 softmax probability; successful attacks on a hardened model sit near the decision
boundary). Until 2026-12 it read the four detectors' scores and the margin instead; on the
chest bundle the raw signals took TPR at the 1 % threshold on successful FGSM/BIM/PGD-20
examples from 0-16 % to 30-70 % (experiments/raw_signals.py): the detectors' scores each
squeeze a vector into one number before the combiner can weigh it against the others.
    score = 1 / (1 + exp(-(bias + sum_j weights[j] * (x[j] - mean[j]) / scale[j])))
over x = the inputs' values in order, `widths` values per input
(src/defense/detectors.rs, `Combiner`). When a bundle has it, its thresholds alone set the
verdict; the other detectors are still reported.

Cascade (served when a policy sets `cascade = true`): a second logistic regression over the
inputs that need no extra forward pass (all but feature squeezing), fitted the same way; an
input whose cheap score is below `skip_below` is answered CLEAN without feature squeezing's
two extra passes. `skip_below` is the 1 % quantile of the cheap out-of-fold score over the
AdvTrain inputs the full fused detector flags (out-of-fold, at its 5 % threshold), so about
1 % of what the full verdict flags on AdvTrain would be skipped; AdvTest measures it.

Fitted on AdvTrain only: clean images against the successful FGSM, BIM, PGD-20 (1, 2, 4,
8/255) and C&W-L2 examples made here with torchattacks against the served hardened
checkpoint (the settings of attacks.py), and since 2026-12-03 smooth PGD-20 (4 and 8/255,
the perturbation on a 4x coarser grid: fused_attacks.smooth_pgd), which the other families
never look like. Without it the adaptive low-pass attack fooled the model and passed the
224 px bundle's verdict on 43 % of images (experiments/smooth_advtrain.py: 0 % with it). The base detectors' AdvTrain scores are
out-of-fold (Mahalanobis and logistic refitted without each fold, as detectors.py does),
because their in-sample scores are better than what new images get. Thresholds: the
fused detector's own out-of-fold scores of clean AdvTrain at 1 % and 5 %. Measured on
AdvTest only, with Square (Linf 8/255, 500 queries), the committed UAP fixtures, DeepFool,
L-BFGS and, where the attack folder holds them, the transfer records (PGD-20 crafted on the
surrogate) as attacks the combiner never saw.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from . import advcommon as C
from . import bundle_toml, contract, datasets, detectors, fused_sample, residual, squeeze
from .fused_attacks import SMOOTH_BUDGETS, SMOOTH_FACTOR, SMOOTH_STEPS, attacks_from_records, made_attacks, minimal_attacks, with_smooth
from .ood import Classifier

FPRS = (0.01, 0.05)
# The combiner's inputs (detector_fused.json's `inputs`): vectors of one forward pass and
# of the input (src/defense/detectors.rs BLOCK_INPUTS), feature squeezing's score (by the
# contract's name), the margin and its log (detectors.log_margin).
INPUTS = ("penultimate-features", "logits", "residual-features", contract.name_of("feature_squeezing"),
          "squeeze-feature-shift", "margin", "log-margin")
# The cascade's cheap combiner: every input but feature squeezing's score and feature shift
# (its two extra forward passes are what the cascade saves), and the share of flagged
# AdvTrain inputs it may skip.
SQUEEZED_INPUTS = (contract.name_of("feature_squeezing"), "squeeze-feature-shift")
CHEAP_INPUTS = tuple(i for i, name in enumerate(INPUTS) if name not in SQUEEZED_INPUTS)
CASCADE_MISS = 0.01
# The families the combiner is fitted on (AdvTrain); AdvTest rows of the others are never seen.
SEEN = ("fgsm", "bim", "pgd20", "cw", "pgd20_smooth")
# Inverse regularisations the combiner may take (choose_c). 0.003 and 0.01 since the
# co-occurrences (2026-12-04): every 64 px bundle then chose 0.03, the smallest C before.
C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
# Out-of-fold misses (over both thresholds) within which two C count as tied (choose_c).
TIE_EXAMPLES = 1


class Inputs:
    """What the fused detector reads for a batch of [0, 1] images: the ONNX classifier's
    logits and features (as the sidecar runs it), feature squeezing and the margin."""

    def __init__(self, clf: Classifier, x: np.ndarray, scales=residual.SCALES, cooccurrence_t: int = residual.COOCCURRENCE_T):
        # Everything below reads the input as the sidecar does: on the bundle's grid.
        x = clf.served(x)
        self.logits, self.feats = clf.run(x, clf.logits_name, clf.features_name)
        p = squeeze.softmax(self.logits)
        top = np.sort(p, axis=1)
        self.margin = top[:, -1] - top[:, -2]
        self.log_margin = detectors.log_margin(self.logits)
        self.pred = p.argmax(1)
        copies = [clf.run(f(x), clf.logits_name, clf.features_name) for f in (squeeze.squeeze_bits, squeeze.squeeze_median)]
        self.squeeze = np.maximum(*[np.abs(p - squeeze.softmax(lg)).sum(1) for lg, _ in copies])
        self.squeeze_shift = squeeze.feature_shift(self.feats, [ft for _, ft in copies])
        # As the residual detector being fitted reads them, or as a bundle's file says.
        self.residual_features = residual.features(x, scales, cooccurrence_t)

    def blocks(self, names=INPUTS) -> list:
        """The combiner's inputs `names` (default INPUTS; a fused file's `inputs`), each (n, width)."""
        by_name = {"penultimate-features": self.feats, "logits": self.logits, "residual-features": self.residual_features,
                   contract.name_of("feature_squeezing"): self.squeeze[:, None], "squeeze-feature-shift": self.squeeze_shift,
                   "margin": self.margin[:, None], "log-margin": self.log_margin[:, None]}
        return [by_name[n] for n in names]

    def matrix(self, names=INPUTS) -> np.ndarray:
        return np.hstack(self.blocks(names))


def widths(inp: Inputs) -> list:
    return [b.shape[1] for b in inp.blocks()]


def columns(inp: Inputs, which) -> list:
    """Column indices of the inputs numbered `which` in matrix()."""
    starts = np.cumsum([0] + widths(inp))
    return [c for i in which for c in range(starts[i], starts[i + 1])]


def base_scores(dets: dict, resid_model, inp: Inputs):
    s = detectors.score_all(dets, inp.logits, inp.feats)
    return s["mahalanobis"], s["logreg"], residual.score(resid_model, inp.residual_features)


def oof_base(clean: Inputs, y: np.ndarray, adv: Inputs, src_fold: np.ndarray, fold: np.ndarray, k: int):
    """Out-of-fold Mahalanobis and logistic scores of clean AdvTrain and its adversarial
    examples (each example goes with its clean image's fold)."""
    out_c, out_a = np.zeros((len(y), 2)), np.zeros((len(src_fold), 2))
    for f in range(detectors.N_FOLDS):
        tr, tra = fold != f, src_fold != f
        means, precision, _ = detectors.fit_mahalanobis(clean.feats[tr], y[tr], k)
        X = np.vstack([np.hstack([clean.feats[tr], clean.logits[tr]]), np.hstack([adv.feats[tra], adv.logits[tra]])])
        t = np.concatenate([np.zeros(tr.sum()), np.ones(tra.sum())])
        mean, scale, w, b = detectors.fit_logistic(X, t)
        det = {"mean": mean, "scale": scale, "weights": w, "bias": b}
        for inp, m, out in ((clean, fold == f, out_c), (adv, src_fold == f, out_a)):
            out[m, 0] = detectors.mahalanobis_score(inp.feats[m], means, precision)
            out[m, 1] = 1 / (1 + np.exp(-detectors.logistic_logit(np.hstack([inp.feats[m], inp.logits[m]]), det)))
    return out_c, out_a


def fit_fused(X: np.ndarray, t: np.ndarray, c: float = 1.0):
    scaler = StandardScaler().fit(X)
    lr = LogisticRegression(class_weight="balanced", C=c, max_iter=1000).fit(scaler.transform(X), t)
    return scaler, lr


def fused_score(model, X: np.ndarray) -> np.ndarray:
    scaler, lr = model
    return lr.predict_proba(scaler.transform(X))[:, 1]


def successful(inp: Inputs, y: np.ndarray, clean_pred: np.ndarray) -> np.ndarray:
    return (clean_pred == y) & (inp.pred != y)


@dataclass
class AdvTrainBase:
    """AdvTrain as the combiner sees it: clean images and their successful attacks, each
    example in its clean image's fold, the base detectors' out-of-fold scores and the
    residual-statistics detector."""
    clean: Inputs
    adv: Inputs
    adv_x: np.ndarray  # the successful examples' pixels
    src: np.ndarray  # index of each example's clean image
    fold: np.ndarray  # fold of each clean image
    oc: np.ndarray  # out-of-fold (Mahalanobis, logistic) of the clean images
    oa: np.ndarray  # ... and of the examples
    rc: np.ndarray  # out-of-fold residual-statistics scores, clean
    ra: np.ndarray  # ... and examples
    resid_model: object  # the residual-statistics detector fitted on all of AdvTrain
    by_family: dict  # successful examples per "family budget": what the combiner was fitted on

    def matrices(self) -> tuple[np.ndarray, np.ndarray]:
        """The combiner's inputs (INPUTS order) for the clean images and the examples."""
        return self.clean.matrix(), self.adv.matrix()


def advtrain_base(clf: Classifier, x_tr: np.ndarray, y_tr: np.ndarray, att_tr: list, n_labels: int) -> AdvTrainBase:
    clean = Inputs(clf, x_tr)
    adv_x, src, by_family = [], [], {}
    for fam, b, xa in att_tr:
        m = successful(Inputs(clf, xa), y_tr, clean.pred)
        adv_x.append(xa[m])
        src.append(np.flatnonzero(m))
        by_family[f"{fam} {b}"] = int(m.sum())
    adv_x = np.concatenate(adv_x)
    adv = Inputs(clf, adv_x)
    src = np.concatenate(src)
    fold = detectors.folds(y_tr)
    oc, oa = oof_base(clean, y_tr, adv, fold[src], fold, n_labels)
    rc, ra = residual.out_of_fold(clean.residual_features, adv.residual_features, fold, fold[src], detectors.N_FOLDS)
    resid_model = residual.fit(clean.residual_features, adv.residual_features)
    return AdvTrainBase(clean, adv, adv_x, src, fold, oc, oa, rc, ra, resid_model, by_family)


def fit_calibrated(Xc: np.ndarray, Xa: np.ndarray, fold: np.ndarray, src: np.ndarray):
    """The combiner fitted on all of AdvTrain with the regularisation `choose_c` picks, its
    thresholds at FPRS from its own out-of-fold scores of the clean images, and the choice."""
    choice = choose_c(Xc, Xa, fold, src)
    oof, _ = oof_scores(Xc, Xa, fold, src, range(Xc.shape[1]), choice["c"])
    thresholds = {f"fpr_{p}": detectors.threshold_at(oof, p) for p in FPRS}
    return fit_fused(np.vstack([Xc, Xa]), np.r_[np.zeros(len(Xc)), np.ones(len(Xa))], choice["c"]), thresholds, choice


def choose_c(Xc: np.ndarray, Xa: np.ndarray, fold: np.ndarray, src: np.ndarray) -> dict:
    """The inverse regularisation C from C_GRID: the smallest C whose out-of-fold AdvTrain TPR
    (at the verdict's two thresholds, out-of-fold 1 % and 5 %) misses at most TIE_EXAMPLES
    more examples than the best C's; AdvTest is never read. With 100 clean images every seen
    family is separated out of fold for C >= 1, so the criterion saturates and one example
    cannot tell two C apart; the stronger regularisation is then preferred, as the
    one-standard-error rule does (Hastie et al., ESL 7.10). Weaker regularisation fits the
    seen families' own traits and lost never-seen families (experiments/family_holdout.py)."""
    missed = {}
    for c in C_GRID:
        sc, sa = oof_scores(Xc, Xa, fold, src, range(Xc.shape[1]), c)
        missed[c] = int(sum((sa <= detectors.threshold_at(sc, p)).sum() for p in FPRS))
    n = len(Xa) * len(FPRS)
    return {"c": pick_c(missed), "tie_examples": TIE_EXAMPLES, "advtrain_oof_missed": {str(c): m for c, m in missed.items()},
            "advtrain_oof_mean_tpr": {str(c): 1 - m / n for c, m in missed.items()}}


def pick_c(missed: dict) -> float:
    """choose_c's rule: the smallest C whose misses are within TIE_EXAMPLES of the fewest."""
    fewest = min(missed.values())
    return min(c for c, m in missed.items() if m <= fewest + TIE_EXAMPLES)


def oof_scores(Xc: np.ndarray, Xa: np.ndarray, fold: np.ndarray, src: np.ndarray, cols, c: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold scores of a combiner over columns `cols`, for the clean images and the
    examples (each example in its clean image's fold)."""
    cols = list(cols)
    sc, sa = np.zeros(len(Xc)), np.zeros(len(Xa))
    fa = fold[src]
    for f in range(detectors.N_FOLDS):
        keep_c, keep_a = fold != f, fa != f
        m = fit_fused(np.vstack([Xc[keep_c][:, cols], Xa[keep_a][:, cols]]), np.r_[np.zeros(keep_c.sum()), np.ones(keep_a.sum())], c)
        sc[fold == f] = fused_score(m, Xc[fold == f][:, cols])
        sa[fa == f] = fused_score(m, Xa[fa == f][:, cols])
    return sc, sa


def fit_cascade(Xc: np.ndarray, Xa: np.ndarray, fold: np.ndarray, src: np.ndarray, flag_threshold: float, cheap_cols: list, c: float):
    """The cheap combiner fitted on all of AdvTrain, and `skip_below` from out-of-fold scores:
    the CASCADE_MISS quantile of the cheap score over the inputs the full combiner flags at
    `flag_threshold`."""
    full_c, full_a = oof_scores(Xc, Xa, fold, src, range(Xc.shape[1]), c)
    cheap_c, cheap_a = oof_scores(Xc, Xa, fold, src, cheap_cols)
    flagged = np.r_[cheap_c[full_c > flag_threshold], cheap_a[full_a > flag_threshold]]
    # The cheap combiner keeps C=1: it only decides what the full one need not see.
    cheap = fit_fused(np.vstack([Xc[:, cheap_cols], Xa[:, cheap_cols]]), np.r_[np.zeros(len(Xc)), np.ones(len(Xa))])
    skip_below = float(np.quantile(flagged, CASCADE_MISS))
    return cheap, skip_below, float(np.mean(cheap_c < skip_below))


def auroc(neg, pos):
    return C.auroc(np.asarray(neg), np.asarray(pos)) if len(pos) and len(neg) else None


def main(argv=None):
    args, spec, out_dir = C.stage_args(__doc__, argv, extra=lambda ap: ap.add_argument(
        "--from-records", action="store_true", help="the attack stage's FGSM/BIM/PGD-20/C&W/Square records instead of making them"))
    t0 = time.time()
    clf = Classifier(out_dir)
    x, y, files = datasets.load_split(spec, "test")
    with open(os.path.join(out_dir, "adv_split.json")) as f:
        split = json.load(f)
    tr, te = (np.array(split[h]["index"], dtype=np.int64) for h in ("AdvTrain", "AdvTest"))
    net, _ = C.load_ckpt(C.ckpt_path(spec, "hardened"))
    if spec.fit_dir is not None or args.from_records:  # the attack stage's records, made the same way
        att_tr, att_te = attacks_from_records(spec, tr, te)
    else:
        att_tr, att_te = made_attacks(net, x, y, tr, te, spec.name)
        if os.path.exists(os.path.join(C.attack_dir(spec, None), "manifest.json")):
            # Transfer (crafted on the surrogate) is AdvTest-only and never fitted on: its
            # records add rows without changing the fit (`attacks --only transfer --served-only`).
            att_te += attacks_from_records(spec, tr, te, families=("transfer",))[1]
    # Smooth PGD-20 on both halves, made here whatever made the others (cached).
    att_tr, att_te = with_smooth(net, x, y, tr, te, att_tr, att_te, spec.name)
    print(f"[fused] attacks ready ({time.time() - t0:.0f}s)", flush=True)

    # AdvTrain: out-of-fold base scores, the combiner, its out-of-fold thresholds.
    y_tr = y[tr]
    base = advtrain_base(clf, x[tr], y_tr, att_tr, len(spec.labels))
    rc, ra, resid_model = base.rc, base.ra, base.resid_model
    resid_thresholds = {f"fpr_{p}": detectors.threshold_at(rc, p) for p in FPRS}
    C.write_json(os.path.join(out_dir, "detector_residual.json"), residual.to_json(
        resid_model, resid_thresholds, f"AdvTrain: {len(rc)} clean, {len(ra)} successful FGSM/BIM/PGD-20/C&W/smooth PGD-20 examples; "
        "thresholds from out-of-fold clean scores"))
    Xc, Xa = base.matrices()
    model, thresholds, choice = fit_calibrated(Xc, Xa, base.fold, base.src)
    scaler, lr = model
    print(f"[fused] fitted on {len(Xc)} clean and {len(Xa)} adversarial AdvTrain inputs ({Xc.shape[1]} values); "
          f"C={choice['c']} (out-of-fold AdvTrain mean TPR at 1 and 5 %: {choice['advtrain_oof_mean_tpr']}); thresholds {thresholds}", flush=True)
    cheap_cols = columns(base.clean, CHEAP_INPUTS)
    cheap, skip_below, train_skipped = fit_cascade(Xc, Xa, base.fold, base.src, thresholds["fpr_0.05"], cheap_cols, choice["c"])
    print(f"[fused] cascade: skip_below {skip_below:.4f}; AdvTrain clean skipping feature squeezing {train_skipped:.1%}", flush=True)

    # AdvTest, with the served base detectors and thresholds.
    dets = detectors.load_detectors(out_dir)
    with open(os.path.join(out_dir, "detector_squeeze.json")) as f:
        sq_thr = json.load(f)["thresholds"]
    served = {n: dets[n]["thresholds"] if "thresholds" in dets[n] else None for n in ("mahalanobis", "logreg")}

    def evaluate(inp):
        # The union of the three detectors served before this stage: the verdict it replaces.
        maha, logi, resid = base_scores(dets, resid_model, inp)
        union = {p: (maha > served["mahalanobis"][p]) | (logi > served["logreg"][p]) | (inp.squeeze > sq_thr[p])
                 for p in ("fpr_0.01", "fpr_0.05")}
        X = inp.matrix()
        return fused_score(model, X), union, fused_score(cheap, X[:, cheap_cols]) < skip_below

    y_te = y[te]
    ct = Inputs(clf, x[te])
    neg, neg_union, neg_skip = evaluate(ct)
    rows = []
    attacks = [(fam, b, xa, fam in SEEN) for fam, b, xa in att_te]
    fix_dir = datasets.fixture_dir(spec, "campaign")
    for name in ("uap__linf_z4", "uap_to0__l2_z4"):
        p = os.path.join(fix_dir, f"{spec.name}__{name}.npy")
        if os.path.exists(p):
            fam, b = name.split("__")
            attacks.append((fam, b, np.clip(x[te] + np.load(p), 0, 1).astype(np.float32), False))
    minimal = minimal_attacks(net, x[te], y[te], os.path.join(datasets.WORK, f"fused_minimal_{spec.name}.npz"))
    attacks += [(fam, b, xa, False) for fam, b, xa in minimal]
    passes = {}
    for fam, b, xa, seen in attacks:
        inp = Inputs(clf, xa)
        m = successful(inp, y_te, ct.pred)
        pos, union, skip = evaluate(inp)
        row = {"attack": fam, "budget": b, "seen": seen, "n_pos": int(m.sum()), "auroc": auroc(neg, pos[m]),
               "cascade_skipped": float(skip[m].mean()) if m.any() else None,
               # Why small budgets are hard to catch: they succeed only on images already near the boundary.
               "clean_margin_median": float(np.median(ct.margin[m])) if m.any() else None}
        for p in ("fpr_0.01", "fpr_0.05"):
            row[f"tpr_{p}"] = float((pos[m] > thresholds[p]).mean()) if m.any() else None
            row[f"union_tpr_{p}"] = float(union[p][m].mean()) if m.any() else None
            row[f"cascade_tpr_{p}"] = float((~skip[m] & (pos[m] > thresholds[p])).mean()) if m.any() else None
        rows.append(row)
        if fam == "pgd20":
            # Fooled and answered CLEAN (under the SUSPICIOUS threshold), over all AdvTest images.
            passes[b] = {"fused": float((m & (pos <= thresholds["fpr_0.05"])).mean()),
                         "union": float((m & ~union["fpr_0.05"]).mean())}
        print(f"[fused] {fam} {b}: n={row['n_pos']} AUROC {row['auroc']} TPR@1% {row['tpr_fpr_0.01']} "
              f"(union of served {row['union_tpr_fpr_0.01']})", flush=True)
    # The whole official test set as `medsentry screen` sees it (ADVERSARIAL or SUSPICIOUS);
    # its AdvTrain half is what the combiner was fitted on, so both halves are kept apart.
    on_train = fused_score(model, Xc)
    official = {"advtest": float((neg > thresholds["fpr_0.05"]).mean()), "advtrain_fitted_on": float((on_train > thresholds["fpr_0.05"]).mean()),
                "all": float((np.r_[neg, on_train] > thresholds["fpr_0.05"]).mean()), "n": len(neg) + len(on_train)}
    clean_rates = {p: {"fused": float((neg > thresholds[p]).mean()), "union": float(neg_union[p].mean()),
                       "cascade": float((~neg_skip & (neg > thresholds[p])).mean())} for p in thresholds}
    cascade = {"inputs": [INPUTS[i] for i in CHEAP_INPUTS], "widths": [widths(ct)[i] for i in CHEAP_INPUTS], "mean": cheap[0].mean_.tolist(), "scale": cheap[0].scale_.tolist(),
               "weights": cheap[1].coef_[0].tolist(), "bias": float(cheap[1].intercept_[0]), "skip_below": skip_below,
               "chosen_on": f"AdvTrain, out-of-fold: the {CASCADE_MISS:.0%} quantile of this score over the inputs the fused "
                            "detector flags at its 5 % threshold"}

    det = {"kind": "fused", "inputs": list(INPUTS), "widths": widths(ct), "mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(),
           "weights": lr.coef_[0].tolist(), "bias": float(lr.intercept_[0]), "thresholds": thresholds,
           "score": "1 / (1 + exp(-(bias + sum_j weights[j] * (x[j] - mean[j]) / scale[j]))), x = the inputs' values in "
                    "order (widths[i] each): penultimate features, logits, residual-statistics features, the feature-squeezing "
                    "score, the L2 shift of the penultimate features under each squeezer, margin = top-1 minus top-2 "
                    "softmax probability, log-margin = ln(max(margin, 1e-6))",
           "fitted_on": f"AdvTrain: {len(Xc)} clean, {len(Xa)} successful FGSM/BIM/PGD-20 (1-8/255), C&W and smooth "
                        f"PGD-20 ({SMOOTH_FACTOR}x coarser grid, {' and '.join(map(str, SMOOTH_BUDGETS))}/255) examples; "
                        "base scores and thresholds out-of-fold", "cascade": cascade, "generated_by": "python -m medsentry_training.fused"}
    C.write_json(os.path.join(out_dir, "detector_fused.json"), det)
    bundle_toml.register_detectors(out_dir)
    # Flagged examples for the tests: C&W, or (a fit run without C&W) the strongest PGD-20.
    pick = [xa for fam, _, xa in att_te if fam == "cw"] or [xa for fam, _, xa in att_te if fam == "pgd20"][-1:]
    flagged = []
    if pick:
        ok = np.flatnonzero(successful(Inputs(clf, pick[0]), y_te, ct.pred))
        flagged = [(pick[0][i], int(te[i]), int(y_te[i]), files[te[i]]) for i in ok]
    fused_sample.add_to_sample(out_dir, clf, dets, resid_model, model, thresholds["fpr_0.01"], flagged, (cheap, skip_below, cheap_cols))
    C.merge_report(out_dir, "fused_detector", {
        "command": f"python -m medsentry_training.fused --dataset {args.dataset}" + (" --from-records" if args.from_records else ""),
        "quantize_bits": clf.quantize_bits, "inputs": list(INPUTS), "widths": widths(ct),
        "attacks_made_by": "the attack stage (its records)" if spec.fit_dir is not None or args.from_records else "this stage",
        "weights": lr.coef_[0].tolist(), "regularisation": choice, "thresholds": thresholds, "residual_thresholds": resid_thresholds, "advtrain": {"clean": len(Xc), "adversarial": len(Xa), "by_family": base.by_family},
        "smooth": {"factor": SMOOTH_FACTOR, "budgets": list(SMOOTH_BUDGETS), "steps": SMOOTH_STEPS},
        "clean_advtest": clean_rates, "rows": rows,
        "cascade": {"skip_below": skip_below, "advtrain_clean_skipped": train_skipped, "advtest_clean_skipped": float(neg_skip.mean())}, "pgd20_fooled_and_clean": passes, "official_test_flagged": official,
        "clean_advtest_margin_median": float(np.median(ct.margin)), "seconds": round(time.time() - t0, 1)})
    print(f"[done] fused detector: clean AdvTest {clean_rates} ({time.time() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
