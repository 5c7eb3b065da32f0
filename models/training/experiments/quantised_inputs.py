"""Does rounding the resized image to 8 bits, as a client that sends images already at the
model's size does (an 8-bit PNG at 64 x 64, or OIP FP32 tensors made from one), move the
fused verdict on clean images? The sidecar resizes a full-size upload without that rounding,
and so did the pipeline that calibrated each bundle.

    cd models/training/experiments && ../.venv/bin/python quantised_inputs.py DATASET [DATASET ...]

Scores the clean AdvTest half as cached and rounded with np.round(x * 255) / 255, through the
fused stage's exact scoring, and prints the share over the 1 % and 5 % thresholds.

Measured 2026-12-04: dermoscopy as cached 0.7 / 4.3 %, rounded 2.3 / 16.7 %; pneumoniamnist
0.6 / 3.8 %, rounded 0.6 / 3.5 %; chest_xray 1.9 / 3.2 %, rounded 0.6 / 1.3 % (the rounding
moves the scores of every bundle, upwards on dermoscopy, downwards on chest).
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from medsentry_training import advcommon as C, adaptive_fused as A, datasets, fused as F  # noqa: E402
from medsentry_training.ood import Classifier  # noqa: E402


def main(names: list) -> None:
    for name in names:
        spec = datasets.resolve(name)
        bundle = C.default_bundle_dir(spec)
        x, _, _ = datasets.load_split(spec, "test")
        with open(os.path.join(bundle, "adv_split.json")) as f:
            te = np.array(json.load(f)["AdvTest"]["index"], dtype=np.int64)
        clf = Classifier(bundle)
        tf = A.TorchFused(bundle)
        fz, t = A.served_linear(tf.fused), tf.fused["thresholds"]
        for how, xs in (("as cached", x[te]), ("rounded to 8 bits", (np.round(x[te] * 255) / 255).astype(np.float32))):
            s = F.fused_score(fz, F.Inputs(clf, xs, tf.scales).matrix(tf.fused["inputs"]))
            print(f"{name} {how}: clean AdvTest over the 1 % threshold {100 * (s > t['fpr_0.01']).mean():.1f} %, "
                  f"over 5 % {100 * (s > t['fpr_0.05']).mean():.1f} % (n={len(s)})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
