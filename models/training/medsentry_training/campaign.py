"""Stage: calibrate and measure the sidecar's campaign monitor -> [campaign] in bundle.toml,
a `campaign` section in report.json, and UAP fixtures for the Rust tests.

    python -m medsentry_training.campaign --dataset chest_xray [--limit N] [--out DIR]

The campaign monitor (src/defense/campaign.rs) watches a stream of requests, not one:
  shared perturbation  the Laplacian high-pass residual of each input (4-neighbour,
      edge-replicated, on the [0, 1] tensor; mean removed, L2-normalised) against those of
      the last `residual_window` inputs; score = mean pairwise correlation over the window.
      A universal perturbation is one pattern added to every image, so its residual
      correlates across images that otherwise share little high-frequency content. An
      input already in the window (a resend) is not added again.
  class-mix drift      Pearson chi-square of the predicted classes of the last
      `class_mix_window` inputs against `reference_class_mix` (the served classifier's
      predicted mix on the clean official test set, the mix it was evaluated on). A
      targeted UAP pushes many images to one class.
Calibration (clean AdvTrain only): residual threshold = 1.25 x the largest window score of
20,000 random clean windows; class-mix threshold = chi-square upper 1e-4 quantile with
(classes - 1) degrees of freedom. Measured on AdvTest: the false-alarm rate of clean streams
(random orderings, sliding windows) and the alarm rate of streams of UAP images made
against the served model (every image of the stream carries the UAP).
"""
from __future__ import annotations

import os
import time
from collections import deque

import numpy as np
from scipy.stats import chi2

from . import advcommon as C
from . import bundle_toml, datasets

RESIDUAL_WINDOW = 32
CLASS_MIX_WINDOW = 200
CLASS_MIX_TAIL = 1e-4
RESIDUAL_MARGIN = 1.25
STREAM_LEN = 1000
FIXTURES = ("uap__linf_z4", "uap_to0__l2_z4", "uap_random__linf_z4")


def residuals(x: np.ndarray) -> np.ndarray:
    """Unit-norm, zero-mean Laplacian residual of each image (rows of the result)."""
    x = x.astype(np.float64)
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    r = 4 * x - p[:, :, :-2, 1:-1] - p[:, :, 2:, 1:-1] - p[:, :, 1:-1, :-2] - p[:, :, 1:-1, 2:]
    r = r.reshape(len(r), -1)
    r = r - r.mean(axis=1, keepdims=True)
    n = np.linalg.norm(r, axis=1, keepdims=True)
    return r / np.where(n > 0, n, 1.0)


def window_score(r: np.ndarray) -> float:
    w = len(r)
    g = r @ r.T
    return float((g.sum() - np.trace(g)) / (w * (w - 1)))


def random_windows(r: np.ndarray, n: int, rng) -> np.ndarray:
    return np.array([window_score(r[rng.choice(len(r), RESIDUAL_WINDOW, replace=False)]) for _ in range(n)])


def stream_alarms(r: np.ndarray, pred: np.ndarray, ref_mix: np.ndarray, thr_res: float, thr_mix: float, rng,
                  streams: int = 20):
    """Share of sliding windows that alarm, over `streams` streams of STREAM_LEN requests drawn
    with replacement (the monitor's view of a long run of this traffic)."""
    res_hits = res_n = mix_hits = mix_n = 0
    k = len(ref_mix)
    for _ in range(streams):
        idx = rng.integers(0, len(r), STREAM_LEN)
        window: deque = deque(maxlen=RESIDUAL_WINDOW)
        pushed = 0
        for i in idx:
            if i in window:  # a resend of an input still in the window is not added (campaign.rs)
                continue
            window.append(i)
            pushed += 1
            if len(window) == RESIDUAL_WINDOW and pushed % 8 == 0:
                res_hits += window_score(r[list(window)]) > thr_res
                res_n += 1
        for end in range(CLASS_MIX_WINDOW, STREAM_LEN + 1, 8):
            counts = np.bincount(pred[idx[end - CLASS_MIX_WINDOW:end]], minlength=k)
            exp = CLASS_MIX_WINDOW * ref_mix
            mix_hits += float(((counts - exp) ** 2 / exp).sum()) > thr_mix
            mix_n += 1
    return res_hits / res_n, mix_hits / mix_n


def main(argv=None):
    args, spec, out_dir = C.stage_args(__doc__, argv)
    t0 = time.time()
    st = C.load_stage(spec, args.limit)
    rng = np.random.default_rng(0)
    tr, te = st.split["train"], st.split["test"]
    logits, _ = C.forward_batches(st.model, st.x)
    pred = logits.argmax(1)
    k = logits.shape[1]
    ref_mix = np.bincount(pred, minlength=k) / len(pred)

    r_all = residuals(st.x)
    clean_train = random_windows(r_all[tr], 20000, rng)
    thr_res = float(RESIDUAL_MARGIN * clean_train.max())
    thr_mix = float(chi2.isf(CLASS_MIX_TAIL, k - 1))
    fa_res, fa_mix = stream_alarms(r_all[te], pred[te], ref_mix, thr_res, thr_mix, rng)
    print(f"[campaign] residual thr {thr_res:.4f} (clean AdvTrain window max {clean_train.max():.4f}); "
          f"class-mix thr {thr_mix:.2f}; clean AdvTest false alarms: residual {fa_res:.4f}, class mix {fa_mix:.4f}", flush=True)

    rows = []
    for rec in st.recs:
        if rec["target_model"] != C.SERVED or not rec["attack"].startswith("uap"):
            continue
        m = rec["split"] == 1
        r_adv = residuals(rec["x_adv"][m])
        res_rate, mix_rate = stream_alarms(r_adv, rec["pred_adv"][m].astype(np.int64), ref_mix, thr_res, thr_mix, rng,
                                           streams=5)
        rows.append({"attack": rec["attack"], "budget": rec["budget"], "n": int(m.sum()),
                     "residual_alarm_rate": res_rate, "class_mix_alarm_rate": mix_rate,
                     "mean_window_score": float(random_windows(r_adv, 200, rng).mean()),
                     "predicted_mix": (np.bincount(rec["pred_adv"][m], minlength=k) / m.sum()).tolist()})
        print(f"[campaign] {rec['attack']} {rec['budget']}: residual {res_rate:.3f}, class mix {mix_rate:.3f}", flush=True)

    fix_dir = os.path.join(datasets.REPO, "tests", "fixtures", "campaign")
    os.makedirs(fix_dir, exist_ok=True)
    for rec in st.recs:
        name = f"{rec['attack']}__{rec['budget']}"
        if rec["target_model"] == C.SERVED and name in FIXTURES and "uap" in rec:
            np.save(os.path.join(fix_dir, f"{spec.name}__{name}.npy"), rec["uap"][0].astype(np.float32))

    section = {"residual_window": RESIDUAL_WINDOW, "residual_threshold": round(thr_res, 6),
               "class_mix_window": CLASS_MIX_WINDOW, "class_mix_threshold": round(thr_mix, 4),
               "reference_class_mix": [round(float(v), 6) for v in ref_mix]}
    bundle_toml.set_campaign(out_dir, section)
    C.merge_report(out_dir, "campaign", {"command": f"python -m medsentry_training.campaign --dataset {args.dataset}",
                       "config": section, "calibration": {"clean_advtrain_windows": len(clean_train),
                                                          "clean_advtrain_window_max": float(clean_train.max()),
                                                          "clean_advtrain_window_mean": float(clean_train.mean()),
                                                          "class_mix_tail": CLASS_MIX_TAIL, "residual_margin": RESIDUAL_MARGIN},
                       "clean_advtest_false_alarm": {"residual": fa_res, "class_mix": fa_mix, "stream_len": STREAM_LEN},
                       "uap_streams": rows, "seconds": round(time.time() - t0, 1)})
    print(f"[done] campaign monitor calibrated in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
