"""Does rounding the resized image to 8 bits, as a client that sends images already at the
model's size does (an 8-bit PNG at 64 x 64, or OIP FP32 tensors made from one), move the
fused verdict on clean images? The sidecar resizes a full-size upload without that rounding,
and so did the pipeline that calibrated each bundle.

    cd models/training/experiments && ../.venv/bin/python quantised_inputs.py [--refit] DATASET [DATASET ...]

Scores the clean AdvTest half as cached and rounded with np.round(x * 255) / 255, through the
fused stage's exact scoring, and prints the share over the 1 % and 5 % thresholds. --refit
(needs the fused stage's attack caches, made by `fused --dataset D`): also the TPR at the 1 %
threshold on the fused stage's AdvTest attacks as made and rounded (an attacker sending an
8-bit image at the model's size rounds too), then the same for a combiner re-fitted as the
fused stage does with each clean AdvTrain image's rounded copy as a second clean row (same
fold), so its thresholds are calibrated on both.

Measured 2026-12-04: dermoscopy as cached 0.7 / 4.3 %, rounded 2.3 / 16.7 %; pneumoniamnist
0.6 / 3.8 %, rounded 0.6 / 3.5 %; chest_xray 1.9 / 3.2 %, rounded 0.6 / 1.3 % (the rounding
moves the scores of every bundle, upwards on dermoscopy, downwards on chest).
--refit (dermoscopy 120 s, pneumoniamnist 90 s with the caches), TPR at 1 %, as made ->
rounded: served dermoscopy PGD-20 at 2 / 4 / 8 of 255 13 -> 40 / 62 -> 71 / 84 -> 90 %, smooth
PGD-20 8/255 9 -> 31 %, Square 58 -> 71 % (the served combiner reads the 8-bit grid of a
model-size image as a sign of attack); served pneumoniamnist 8 -> 4 / 28 -> 24 % at 4 / 8 of
255, C&W 65 -> 56 %. Re-fitted with rounded clean copies: clean AdvTest as cached / rounded
dermoscopy 1.7 / 0.0 %, pneumoniamnist 1.6 / 0.3 %, and the rounded attacks are missed
(dermoscopy PGD-20 at 8/255 32 %, Square 8 %; pneumoniamnist PGD-20 15 %): with rounding on
the clean side only, the combiner learns the grid as a sign of a clean image. Rounding has to
be on both sides, or on every input in the sidecar and the pipeline alike.

Built the same day: a bundle with `[input] quantize_bits = 8` has every input rounded by the
sidecar and by fused.Inputs, so on the re-fitted bundles this script's "as cached" and
"rounded" columns are the same inputs (the figures above are of the bundles before that).
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from medsentry_training import advcommon as C, adaptive_fused as A, datasets, fused as F  # noqa: E402
from medsentry_training.fused_attacks import made_attacks, with_smooth  # noqa: E402
from medsentry_training.ood import Classifier  # noqa: E402
from common import halves  # noqa: E402


def rounded(x: np.ndarray) -> np.ndarray:
    return (np.round(x * 255) / 255).astype(np.float32)


def main(names: list, refit: bool) -> None:
    for name in names:
        spec = datasets.resolve(name)
        bundle = C.default_bundle_dir(spec)
        x, y, tr, te = halves(spec, bundle)
        clf = Classifier(bundle)
        tf = A.TorchFused(bundle)
        fz, t = A.served_linear(tf.fused), tf.fused["thresholds"]
        for how, xs in (("as cached", x[te]), ("rounded to 8 bits", rounded(x[te]))):
            s = F.fused_score(fz, F.Inputs(clf, xs, tf.scales, tf.cooccurrence_t).matrix(tf.fused["inputs"]))
            print(f"{name} {how}: clean AdvTest over the 1 % threshold {100 * (s > t['fpr_0.01']).mean():.1f} %, "
                  f"over 5 % {100 * (s > t['fpr_0.05']).mean():.1f} % (n={len(s)})", flush=True)
        if refit:
            refitted(spec, clf, x, y, tr, te, fz, t)


def refitted(spec, clf, x, y, tr, te, fz, t) -> None:
    """TPR at 1 % on the attacks as made and rounded, served combiner and one re-fitted with
    rounded clean copies."""
    net, _ = C.load_ckpt(C.ckpt_path(spec, "hardened"))
    att_tr, att_te = with_smooth(net, x, y, tr, te, *made_attacks(net, x, y, tr, te, spec.name), spec.name)
    base = F.advtrain_base(clf, x[tr], y[tr], att_tr, len(spec.labels))
    Xc, Xa = base.matrices()
    Xc2 = np.vstack([Xc, F.Inputs(clf, rounded(x[tr])).matrix()])
    model, thr, choice = F.fit_calibrated(Xc2, Xa, np.r_[base.fold, base.fold], base.src)
    ct = F.Inputs(clf, x[te])
    # Each input's combiner matrix once (as made and rounded), scored by both combiners.
    neg = [F.Inputs(clf, xs).matrix() for xs in (x[te], rounded(x[te]))]
    pos = []
    for fam, b, xa in att_te:
        inps = [F.Inputs(clf, xs) for xs in (xa, rounded(xa))]
        masks = [F.successful(inp, y[te], ct.pred) for inp in inps]
        pos.append((fam, b, [inp.matrix()[k] for inp, k in zip(inps, masks)]))
    for label, m, th in (("served", fz, t), (f"re-fitted with rounded clean copies (C={choice['c']})", model, thr)):
        over = lambda X: (F.fused_score(m, X) > th["fpr_0.01"]).mean()  # noqa: E731
        out = [f"clean {100 * over(neg[0]):.1f} / rounded {100 * over(neg[1]):.1f} %"]
        out += [f"{fam} {b} {100 * over(Xs[0]):.0f} / {100 * over(Xs[1]):.0f} (n={len(Xs[0])}/{len(Xs[1])})" for fam, b, Xs in pos]
        print(f"{spec.name} {label}, at 1 %, as made / rounded: " + ", ".join(out), flush=True)

if __name__ == "__main__":
    main([a for a in sys.argv[1:] if a != "--refit"], "--refit" in sys.argv[1:])
