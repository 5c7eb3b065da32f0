"""Square 8/255 on the official test images `fit` never read, against the served verdict.

    cd models/training/experiments && ../.venv/bin/python square_unseen.py FIT_DIR [MAX_IMAGES] [--saved]

(--saved: score the chunks a stopped run saved, attack nothing)

On the 224 px bundle only 19 of AdvTest's 100 images give a successful Square example (Linf
8/255, 500 queries, margin loss: the settings of the fused stage), so its never-seen row
moves 5 points per image. The bundle's fit read 200 of the 624 official test images
(adv_split.json); the other 424 are used only by `medsentry screen` as clean images. Here
Square runs on those the served classifier gets right, in chunks of 32 saved under
work/square_unseen_<bundle>/ (a second run resumes), and the served fused verdict (the
bundle's classifier.onnx and detector_fused.json, as the fused stage scores AdvTest) is
measured on the successful examples: TPR at the 1 % and 5 % thresholds. Nothing here is
fitted or served.

Measured 2026-12-03 on chest-xray-resnet18-224 (re-fitted with smooth PGD-20; 2 threads,
about 300-500 s per chunk; stopped after 7 of 11 chunks, then `--saved`): 224 clean-correct
images, 80 fooled; fused TPR at 1 % 68.8 % (95 % interval 57.4-78.7 %), at least SUSPICIOUS
88.8 %. AdvTest's row: 73.7 % of 19. The same 80 examples (`--saved`, 168 s) after the
combiner's C rule (fused.choose_c: C 1 -> 0.3, written after AdvTest's row was seen, so
these images are its check): 80.0 % (95 % interval 69.6-88.1 %), at least SUSPICIOUS 97.5 %;
AdvTest's row 84.2 % of 19.
"""
import json
import os
import sys
import time

import numpy as np
import torch
import torchattacks

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from medsentry_training import advcommon as C, datasets, fused as F  # noqa: E402
from medsentry_training.adaptive_fused import served_linear  # noqa: E402
from medsentry_training.ood import Classifier  # noqa: E402
from common import fit_halves  # noqa: E402
from medsentry_training.report_targets import interval  # noqa: E402

CHUNK = 32


def main(fit_dir: str, max_images: int = 10_000, saved_only: bool = False) -> None:
    t0 = time.time()
    spec, bundle, x, y, tr, te = fit_halves(fit_dir)
    read = set(tr.tolist()) | set(te.tolist())
    unseen = np.array([i for i in range(len(x)) if i not in read][:max_images])
    clf = Classifier(bundle)
    clean = F.Inputs(clf, x[unseen])
    keep = unseen[clean.pred == y[unseen]]
    net, _ = C.load_ckpt(C.ckpt_path(spec, "hardened"))
    out = os.path.join(datasets.WORK, f"square_unseen_{spec.name}")
    os.makedirs(out, exist_ok=True)
    advs, done = [], []
    for k in range(0, len(keep), CHUNK):
        path = os.path.join(out, f"chunk_{k:04d}.npz")
        idx = keep[k:k + CHUNK]
        if os.path.exists(path) and np.array_equal(np.load(path)["index"], idx):
            advs.append(np.load(path)["x_adv"])
            done.append(idx)
            continue
        if saved_only:
            continue
        atk = torchattacks.Square(net, eps=8 / 255, n_queries=500, loss="margin", seed=0)
        xa = atk(torch.from_numpy(x[idx]), torch.from_numpy(y[idx])).numpy()
        np.savez(path, index=idx, x_adv=xa)
        advs.append(xa)
        done.append(idx)
        print(f"chunk {k // CHUNK + 1} of {-(-len(keep) // CHUNK)} ({time.time() - t0:.0f}s)", flush=True)
    xa, keep = np.concatenate(advs), np.concatenate(done)
    inp = F.Inputs(clf, xa, *residual_shape(bundle))
    ok = inp.pred != y[keep]
    with open(os.path.join(bundle, "detector_fused.json")) as f:
        fused = json.load(f)
    s = F.fused_score(served_linear(fused), inp.matrix(fused["inputs"]))[ok]
    k1, k5 = int((s > fused["thresholds"]["fpr_0.01"]).sum()), int((s > fused["thresholds"]["fpr_0.05"]).sum())
    lo, hi = interval(k1, int(ok.sum()))
    print(f"Square 8/255 on {len(keep)} clean-correct never-read images: {ok.sum()} fooled; fused TPR at 1 % "
          f"{100 * k1 / max(ok.sum(), 1):.1f} % (95 % interval {100 * lo:.1f}-{100 * hi:.1f} %), at least SUSPICIOUS "
          f"{100 * k5 / max(ok.sum(), 1):.1f} % ({time.time() - t0:.0f}s)", flush=True)


def residual_shape(bundle: str) -> tuple:
    """The residual detector file's scales and co-occurrence clip (fused.Inputs' arguments)."""
    with open(os.path.join(bundle, "detector_residual.json")) as f:
        d = json.load(f)
    return d.get("scales", [1]), d.get("cooccurrence_t", 0)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--saved"]
    main(args[0], *(int(a) for a in args[1:2]), saved_only="--saved" in sys.argv)
