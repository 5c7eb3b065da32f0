"""What the experiments share: a bundle's AdvTrain and AdvTest as the fused stage sees them
(the attack stage's records: `attacks --dataset D --served-only --only fgsm,bim,pgd20,cw,square,transfer`;
without the smooth PGD-20 the stage makes since 2026-12-03, as the 64 px bundles were fitted)
and the protocol every experiment measures by: fitted on AdvTrain only (5 folds by clean
image), threshold = the 1 % quantile of the out-of-fold clean AdvTrain scores, AdvTest
scored once, successful attacks only.
"""
import json
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from medsentry_training import adaptive_fused as A, advcommon as C, datasets, detectors, fused as F  # noqa: E402
from medsentry_training.ood import Classifier  # noqa: E402


@dataclass
class Setup:
    spec: object
    clf: Classifier
    x: np.ndarray  # the official test set, [0, 1]
    y: np.ndarray
    tr: np.ndarray  # AdvTrain indices into x
    te: np.ndarray  # AdvTest indices
    base: F.AdvTrainBase  # clean AdvTrain and its successful examples, folds
    ct: F.Inputs  # clean AdvTest
    tests: list  # AdvTest attacks: (family, budget, x_adv, Inputs, successful mask)


def fit_halves(fit_dir: str):
    """A `fit` work folder's dataset spec, bundle folder, official test set (x, y) and its
    AdvTrain and AdvTest indices (adv_split.json)."""
    spec = datasets.resolve(fit_dir)
    bundle = os.path.join(fit_dir, "bundle")
    return (spec, bundle, *halves(spec, bundle))


def halves(spec, bundle: str):
    """The official test set (x, y) and its AdvTrain and AdvTest indices (the bundle's adv_split.json)."""
    x, y, _ = datasets.load_split(spec, "test")
    with open(os.path.join(bundle, "adv_split.json")) as f:
        split = json.load(f)
    tr, te = (np.array(split[h]["index"], dtype=np.int64) for h in ("AdvTrain", "AdvTest"))
    return x, y, tr, te


def write_fused(out_dir: str, model, thresholds: dict) -> dict:
    """Replaces the combiner's weights and thresholds in out_dir/detector_fused.json (a scratch
    copy of a bundle) with a re-fitted one's; returns the file's contents."""
    scaler, lr = model
    path = os.path.join(out_dir, "detector_fused.json")
    with open(path) as f:
        d = json.load(f)
    d.update({"mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(), "weights": lr.coef_[0].tolist(),
              "bias": float(lr.intercept_[0]), "thresholds": thresholds})
    with open(path, "w") as f:
        json.dump(d, f)
    return d


def adaptive_pass(net, tf, clf: Classifier, x_ok: np.ndarray, y_ok: np.ndarray, eps_255: int, steps: int, kind: str, score=None):
    """adaptive_fused's attack `kind` at eps_255 with its three lambdas against the combiner in
    tf, on images the classifier gets right, re-scored exactly (by `score` of the combiner's
    input matrix, default the linear combiner of tf's file): (fooled by any lambda, fooled
    and not ADVERSARIAL, fooled and answered CLEAN) per image."""
    thresholds = tf.fused["thresholds"]
    if score is None:
        fz = A.served_linear(tf.fused)
        score = lambda X: F.fused_score(fz, X)  # noqa: E731
    xt, yt = torch.from_numpy(x_ok), torch.from_numpy(y_ok)
    fooled_any, passed1, passed5 = (np.zeros(len(y_ok), bool) for _ in range(3))
    for lam in A.LAMBDAS:
        xa = np.concatenate([A.attack(net, tf, xt[i:i + 64], yt[i:i + 64], eps_255 / 255, steps, kind, lam,
                                      A.logit(thresholds["fpr_0.05"]), seed=eps_255).numpy() for i in range(0, len(y_ok), 64)])
        inp = F.Inputs(clf, xa, tf.scales, tf.cooccurrence_t)
        s = score(inp.matrix(tf.fused["inputs"]))
        fooled = inp.pred != y_ok
        fooled_any |= fooled
        passed1 |= fooled & (s <= thresholds["fpr_0.01"])
        passed5 |= fooled & (s <= thresholds["fpr_0.05"])
    return fooled_any, passed1, passed5


def load(argv, caches: bool = False) -> Setup:
    """The bundle named by argv[1] (default chest_xray) with its attacks: the attack stage's
    records, or with `caches` the fused stage's own (made_attacks and smooth PGD-20, cached
    in the work folder by `fused --dataset D`)."""
    spec = datasets.SPECS[argv[1] if len(argv) > 1 else "chest_xray"]
    out_dir = C.default_bundle_dir(spec)
    clf = Classifier(out_dir)
    x, y, tr, te = halves(spec, out_dir)
    if caches:
        from medsentry_training.fused_attacks import made_attacks, with_smooth
        net, _ = C.load_ckpt(C.ckpt_path(spec, "hardened"))
        att_tr, att_te = with_smooth(net, x, y, tr, te, *made_attacks(net, x, y, tr, te, spec.name), spec.name)
    else:
        att_tr, att_te = F.attacks_from_records(spec, tr, te)
    base = F.advtrain_base(clf, x[tr], y[tr], att_tr, len(spec.labels))
    ct = F.Inputs(clf, x[te])
    tests = []
    for fam, b, xa in att_te:
        inp = F.Inputs(clf, xa)
        m = F.successful(inp, y[te], ct.pred)
        if m.any():  # a row without a successful example (transfer at 1/255) has nothing to score
            tests.append((fam, b, xa, inp, m))
    return Setup(spec, clf, x, y, tr, te, base, ct, tests)


def lin(c: float):
    return lambda: make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))


def fit_weighted(Rc, Ra, wa, c: float):
    """Standardise, then a logistic regression with per-example weights `wa` on the
    adversarial rows (clean and adversarial totals equal); returns its scoring function."""
    X = np.vstack([Rc, Ra])
    w = np.r_[np.full(len(Rc), wa.sum() / len(Rc)), wa]
    sc = StandardScaler().fit(X)
    lr = LogisticRegression(C=c, max_iter=5000).fit(sc.transform(X), np.r_[np.zeros(len(Rc)), np.ones(len(Ra))],
                                                    sample_weight=w / w.mean())
    return lambda Z: lr.predict_proba(sc.transform(Z))[:, 1]


def oof_fit(s: Setup, make, Rc, Ra, Tc, Tp):
    """Out-of-fold scores of the clean AdvTrain rows Rc (their examples Ra in their image's
    fold), then the model fitted on all of AdvTrain scored on clean AdvTest Tc and each
    attack's rows Tp."""
    sc, fa = np.zeros(len(Rc)), s.base.fold[s.base.src]
    for f in range(detectors.N_FOLDS):
        kc, ka = s.base.fold != f, fa != f
        g = make().fit(np.vstack([Rc[kc], Ra[ka]]), np.r_[np.zeros(kc.sum()), np.ones(ka.sum())])
        sc[~kc] = g.predict_proba(Rc[~kc])[:, 1]
    g = make().fit(np.vstack([Rc, Ra]), np.r_[np.zeros(len(Rc)), np.ones(len(Ra))])
    return sc, g.predict_proba(Tc)[:, 1], [g.predict_proba(t)[:, 1] for t in Tp]


def report(s: Setup, name: str, oof, tc, tp) -> None:
    """Clean AdvTest over the 1 % threshold, mean TPR, and TPR (AUROC) per attack row."""
    t1 = detectors.threshold_at(oof, 0.01)
    auc = lambda p: roc_auc_score(np.r_[np.zeros(len(tc)), np.ones(len(p))], np.r_[tc, p])  # noqa: E731
    rows = [f"{fam}{b[-1]} {100 * (p > t1).mean():.0f}% ({auc(p):.3f})" for (fam, b, *_), p in zip(s.tests, tp)]
    tpr = np.mean([(p > t1).mean() for p in tp])
    print(f"{name}: clean AdvTest {100 * (tc > t1).mean():.1f}%, mean TPR {100 * tpr:.1f}% | " + ", ".join(rows), flush=True)


def add_minimal_attacks(s: Setup) -> None:
    """Adds the fused stage's DeepFool and L-BFGS AdvTest rows (its cache) to s.tests."""
    net, _ = C.load_ckpt(C.ckpt_path(s.spec, "hardened"))
    cache = os.path.join(datasets.WORK, f"fused_minimal_{s.spec.name}.npz")
    for fam, b, xa in F.minimal_attacks(net, s.x[s.te], s.y[s.te], cache):
        inp = F.Inputs(s.clf, xa)
        s.tests.append((fam, b, xa, inp, F.successful(inp, s.y[s.te], s.ct.pred)))


def advtrain_tpr(s: Setup, Xc, Xa, c: float) -> float:
    """choose_c's criterion, AdvTrain only: out-of-fold TPR averaged over the 1 and 5 % thresholds."""
    sc, sa = F.oof_scores(Xc, Xa, s.base.fold, s.base.src, range(Xc.shape[1]), c)
    return 100 * np.mean([(sa > detectors.threshold_at(sc, p)).mean() for p in F.FPRS])
