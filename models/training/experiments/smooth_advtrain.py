"""Does the combiner resist the adaptive low-pass attack once it has seen smooth attacks?

    cd models/training/experiments && ../.venv/bin/python smooth_advtrain.py DATASET BUNDLE_DIR SCRATCH_DIR [rows] [KIND ...]

(a second run with SCRATCH_DIR left in place attacks the same combiner; `rows`: the AdvTest
rows of the attack stage's records too)

Written before the fused stage made smooth PGD-20 itself (fused_attacks.with_smooth, since
2026-12-03); it measured the case for it. Point BUNDLE_DIR at a bundle fitted before then.
Such a fused detector is fitted on FGSM/BIM/PGD-20/C&W examples only, all high-frequency; its
residual features at coarser scales (residual.SCALES) have no smooth example to learn from.
Here: non-adaptive PGD-20 with the perturbation on a grid adaptive_fused.LOWPASS_FACTORS
["fused-aware-lowpass"] times coarser (cross-entropy only, 4 and 8/255) on AdvTrain, its
successful examples added to the combiner's adversarial side, the combiner re-fitted and
calibrated as the fused stage does (AdvTrain only, out-of-fold thresholds), written with
the bundle's other files to SCRATCH_DIR, and attacked there by adaptive_fused's
fused-aware-lowpass (8/255, 10 steps, the three lambdas) on the clean-correct AdvTest images.
Prints clean AdvTest over the 1 % threshold and, per attack, fooled / not ADVERSARIAL /
answered CLEAN. Nothing here is served.

Measured 2026-12-03 on chest-xray-resnet18-224 (bundle re-fitted with scales 1, 2, 4; 81
clean-correct AdvTest images, 8/255, 10 steps; 2 threads, then 1 for the second run):
103 successful smooth examples joined the 607 of AdvTrain; C = 1.0; clean AdvTest over the
1 / 5 % thresholds 1.0 / 3.0 % (served combiner 2.0 / 6.0 %). fused-aware-lowpass: 93.8 %
fooled, 0.0 % not ADVERSARIAL, 0.0 % CLEAN (served combiner 43.2 / 24.7 %);
fused-aware-lowpass-8: 63.0 % fooled, 4.9 % not ADVERSARIAL, 3.7 % CLEAN (served 29.6 /
25.9 %). AdvTest rows at 1 %: every FGSM/BIM/PGD-20/C&W row 100 % (AUROC 0.997-1.000), but
Square 8/255, never seen, 73.7 % (14 of 19, AUROC 0.989; served 100 %).
"""
import os
import shutil
import sys
import time


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from medsentry_training import advcommon as C, adaptive_fused as A, datasets, fused as F  # noqa: E402
from medsentry_training.fused_attacks import smooth_pgd  # noqa: E402
from medsentry_training.ood import Classifier  # noqa: E402
from common import adaptive_pass, halves, write_fused  # noqa: E402

BUDGETS_255 = (4, 8)


def main(dataset: str, bundle: str, scratch: str, kinds: list) -> None:
    t0 = time.time()
    spec = datasets.resolve(dataset)
    x, y, tr, te = halves(spec, bundle)
    net, _ = C.load_ckpt(C.ckpt_path(spec, "hardened"))
    done = os.path.join(scratch, "smooth_advtrain.done")
    if not os.path.exists(done):  # a second run with other kinds attacks the same combiner
        refit(spec, bundle, scratch, net, x, y, tr, te)
        open(done, "w").close()
    clf = Classifier(scratch)
    ct = F.Inputs(clf, x[te])
    tf = A.TorchFused(scratch)
    thresholds = tf.fused["thresholds"]
    fz = A.served_linear(tf.fused)
    ok = te[ct.pred == y[te]]
    if "rows" in kinds:  # the AdvTest rows the fused stage reports, against the re-fitted combiner
        _, att_te = F.attacks_from_records(spec, tr, te)
        clean_s = F.fused_score(fz, ct.matrix(tf.fused["inputs"]))
        for fam, b, xa in att_te:
            inp = F.Inputs(clf, xa, tf.scales, tf.cooccurrence_t)
            m = F.successful(inp, y[te], ct.pred)
            pos = F.fused_score(fz, inp.matrix(tf.fused["inputs"]))[m]
            print(f"{fam} {b}: n={m.sum()} TPR@1% {100 * (pos > thresholds['fpr_0.01']).mean():.1f} % "
                  f"AUROC {F.auroc(clean_s, pos)}", flush=True)
    for kind in [k for k in kinds if k != "rows"] or ("fused-aware-lowpass",):
        fooled_any, passed1, passed5 = adaptive_pass(net, tf, clf, x[ok], y[ok], 8, 10, kind)
        print(f"{kind} 8/255 (n={len(ok)}): fooled {100 * fooled_any.mean():.1f} %, not ADVERSARIAL "
              f"{100 * passed1.mean():.1f} %, answered CLEAN {100 * passed5.mean():.1f} % ({time.time() - t0:.0f}s)", flush=True)


def refit(spec, bundle: str, scratch: str, net, x, y, tr, te) -> None:
    """SCRATCH_DIR: the bundle with the combiner re-fitted on AdvTrain plus smooth PGD-20."""
    t0 = time.time()
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(bundle, scratch)
    clf = Classifier(scratch)
    att_tr, _ = F.attacks_from_records(spec, tr, te)
    factor = A.LOWPASS_FACTORS["fused-aware-lowpass"]
    smooth = [("pgd20_smooth", f"linf_{e}", smooth_pgd(net, x[tr], y[tr], e / 255, factor)) for e in BUDGETS_255]
    print(f"smooth PGD-20 on AdvTrain made ({time.time() - t0:.0f}s)", flush=True)
    base = F.advtrain_base(clf, x[tr], y[tr], att_tr + smooth, len(spec.labels))
    Xc, Xa = base.matrices()
    model, thresholds, choice = F.fit_calibrated(Xc, Xa, base.fold, base.src)
    served = write_fused(scratch, model, thresholds)
    ct = F.Inputs(clf, x[te])
    clean_scores = F.fused_score(model, ct.matrix(served["inputs"]))
    print(f"combiner: {len(Xc)} clean, {len(Xa)} adversarial AdvTrain inputs, C={choice['c']}, thresholds {thresholds}; "
          f"clean AdvTest over 1 %: {100 * (clean_scores > thresholds['fpr_0.01']).mean():.1f} %, "
          f"over 5 %: {100 * (clean_scores > thresholds['fpr_0.05']).mean():.1f} % ({time.time() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4], sys.argv[4:])
