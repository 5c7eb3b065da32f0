"""Stage: feature squeezing (Xu et al. 2018), the training-free second opinion, calibrated on
clean AdvTrain and evaluated on AdvTest -> detector_squeeze.json, a `feature_squeezing`
section in report.json.

    python -m medsentry_training.squeeze --dataset chest_xray [--limit N] [--out DIR]

Squeezers, on the [0, 1] input before mean/std (src/defense/squeeze.rs computes the same):
  bit depth  round(x * (2^b - 1)) / (2^b - 1), b = 5 (the 8-bit X-ray keeps 32 grey levels:
             perturbations of a few /255 mostly vanish);
  median     3x3 median filter, edges replicated (scipy mode "nearest").
Score = max over squeezers of the L1 distance between the softmax of the input and that of
the squeezed input (higher = more adversarial). The sidecar runs the two squeezed copies in
the same batch as the input. Thresholds: on clean AdvTrain scores, the smallest t with
#(score > t) <= fpr * n, fpr 1 % and 5 % (the rule of the other detectors). Evaluation:
AUROC and TPR per attack row with the positives of evaluate.positives.
"""
from __future__ import annotations

import os
import time

import numpy as np
from scipy.ndimage import median_filter

from . import advcommon as C
from . import contract, sample
from .detectors import threshold_at
from .evaluate import detected_rows, positives

BIT_DEPTH = 5
MEDIAN_SIZE = 3


def squeeze_bits(x: np.ndarray, bits: int = BIT_DEPTH) -> np.ndarray:
    levels = float(2 ** bits - 1)
    return (np.round(x.astype(np.float64) * levels) / levels).astype(np.float32)


def squeeze_median(x: np.ndarray, size: int = MEDIAN_SIZE) -> np.ndarray:
    return median_filter(x, size=(1, 1, size, size), mode="nearest").astype(np.float32)


def feature_shift(feats: np.ndarray, copy_feats: list) -> np.ndarray:
    """(n, copies): the L2 distance between each input's penultimate features and each
    squeezed copy's (src/defense/squeeze.rs `feature_shift`), a raw signal of the fused
    detector."""
    return np.column_stack([np.linalg.norm(c - feats, axis=1) for c in copy_feats])


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def scores(model, x: np.ndarray) -> np.ndarray:
    p = softmax(C.forward_batches(model, x)[0])
    d = [np.abs(p - softmax(C.forward_batches(model, sq(x))[0])).sum(axis=1) for sq in (squeeze_bits, squeeze_median)]
    return np.maximum(*d)


def add_to_sample(out_dir: str, model) -> None:
    """Adds this detector's score to advtest_sample.json (the Rust parity test's items)."""
    if not os.path.exists(os.path.join(out_dir, sample.FILE)):
        return
    s = sample.Sample(out_dir)
    s.add_scores(contract.name_of("feature_squeezing"), scores(model, s.pixels()))
    s.write()


def main(argv=None):
    args, spec, out_dir = C.stage_args(__doc__, argv)
    t0 = time.time()
    st = C.load_stage(spec, args.limit)
    neg_train = scores(st.model, st.x[st.split["train"]])
    thresholds = {f"fpr_{f}": threshold_at(neg_train, f) for f in (0.01, 0.05)}
    det = {"kind": "feature_squeezing", "bit_depth": BIT_DEPTH, "median_size": MEDIAN_SIZE, "thresholds": thresholds,
           "score": "max over squeezers of L1(softmax(x), softmax(squeeze(x))); squeezers on [0,1] before mean/std",
           "checkpoint_sha256": st.man["shas"]["hardened"],
           "fitted_on": "thresholds only, clean AdvTrain (training-free detector)",
           "generated_by": "python -m medsentry_training.squeeze"}
    C.write_json(os.path.join(out_dir, "detector_squeeze.json"), det)

    neg = scores(st.model, st.x[st.split["test"]])
    rows = []
    for r in detected_rows(st.recs):
        attacked, m = positives(r)
        row = {"attack": r.attack, "budget": r.budget, "n_pos": int(m.sum()), "n_attacked": int(attacked.sum())}
        if m.any():
            pos = scores(st.model, r.x_adv[m])
            row.update({"auroc": C.auroc(neg, pos), **{f"tpr_{k}": float((pos > v).mean()) for k, v in thresholds.items()}})
        rows.append(row)
        print(f"[squeeze] {r.attack} {r.budget}: n={row['n_pos']} AUROC {row.get('auroc')}", flush=True)
    C.merge_report(out_dir, "feature_squeezing", {"command": f"python -m medsentry_training.squeeze --dataset {args.dataset}",
                                "config": {"bit_depth": BIT_DEPTH, "median_size": MEDIAN_SIZE}, "thresholds": thresholds,
                                "clean_advtest_fpr": {k: float((neg > v).mean()) for k, v in thresholds.items()},
                                "rows": rows, "seconds": round(time.time() - t0, 1)})
    add_to_sample(out_dir, st.model)
    print(f"[done] feature squeezing: thresholds {thresholds}, {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
