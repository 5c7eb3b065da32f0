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

import json
import os
import re
import time
from collections import deque

import numpy as np
from scipy.stats import chi2

from . import advcommon as C
from . import bundle_toml, datasets
from .preprocess import quantize

RESIDUAL_WINDOW = 32
CLASS_MIX_WINDOW = 200
CLASS_MIX_TAIL = 1e-4
RESIDUAL_MARGIN = 1.25
STREAM_LEN = 1000
FIXTURES = ("uap__linf_z4", "uap_to0__l2_z4", "uap_random__linf_z4")


def residuals(x: np.ndarray, bits: int | None, chunk: int = 256) -> np.ndarray:
    """Unit-norm, zero-mean Laplacian residual of each image (rows of the result), computed
    `chunk` images at a time: each row depends on its own image only, and the float64
    temporaries of a whole 224 px training set (5,216 x 3 x 224 x 224) would need ~30 GB."""
    out = np.empty((len(x), int(np.prod(x.shape[1:]))), dtype=np.float64)
    for i in range(0, len(x), chunk):
        out[i:i + chunk] = _residuals(quantize(x[i:i + chunk], bits))
    return out


def _residuals(x: np.ndarray) -> np.ndarray:
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


def window_score_at(g: np.ndarray, idx) -> float:
    """window_score(r[idx]) read from the Gram matrix g = r @ r.T of all residuals: a window
    of 224 px RGB residuals costs 32 x 32 dot products of 150,528 values, the lookup none."""
    idx = np.asarray(idx)
    s = g[np.ix_(idx, idx)]
    w = len(idx)
    return float((s.sum() - np.trace(s)) / (w * (w - 1)))


def random_windows(r: np.ndarray, n: int, rng) -> np.ndarray:
    g = r @ r.T
    return np.array([window_score_at(g, rng.choice(len(r), RESIDUAL_WINDOW, replace=False)) for _ in range(n)])


def stream_alarms(r: np.ndarray, pred: np.ndarray, ref_mix: np.ndarray, thr_res: float, thr_mix: float, rng,
                  streams: int = 20):
    """Share of sliding windows that alarm, over `streams` streams of STREAM_LEN requests drawn
    with replacement (the monitor's view of a long run of this traffic)."""
    res_hits = res_n = mix_hits = mix_n = 0
    k = len(ref_mix)
    g = r @ r.T
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
                res_hits += window_score_at(g, list(window)) > thr_res
                res_n += 1
        for end in range(CLASS_MIX_WINDOW, STREAM_LEN + 1, 8):
            counts = np.bincount(pred[idx[end - CLASS_MIX_WINDOW:end]], minlength=k)
            exp = CLASS_MIX_WINDOW * ref_mix
            mix_hits += float(((counts - exp) ** 2 / exp).sum()) > thr_mix
            mix_n += 1
    return res_hits / res_n, mix_hits / mix_n


def patient_key(name: str) -> str:
    """The patient of an image file, from the naming conventions of the sets here: Kermany
    chest X-rays person<N>_... / IM-<N>-... / NORMAL2-IM-<N>-..., OCT <CLASS>-<N>-...;
    any other file is its own patient."""
    b = os.path.basename(name)
    for pattern in (r"(person\d+)_", r"(NORMAL2-IM-\d+)", r"(IM-\d+)", r"^[A-Z]+-(\d+)-"):
        m = re.search(pattern, b)
        if m:
            return m.group(1)
    return b


def grouped_order(files, rng) -> np.ndarray:
    """Every image once, patients in random order, each patient's images together."""
    groups: dict = {}
    for i, f in enumerate(files):
        groups.setdefault(patient_key(f), []).append(i)
    keys = list(groups)
    rng.shuffle(keys)
    return np.array([i for k in keys for i in groups[k]], dtype=np.int64)


def stream_scores(r: np.ndarray, order) -> np.ndarray:
    """The window score after every input of a stream once the window is full, as the
    sidecar keeps it: a residual equal to one already in the window is not added."""
    window: deque = deque(maxlen=RESIDUAL_WINDOW)
    out = []
    g = r @ r.T
    for i in order:
        if any(np.array_equal(r[i], r[j]) for j in window):
            continue
        window.append(i)
        if len(window) == RESIDUAL_WINDOW:
            out.append(window_score_at(g, list(window)))
    return np.array(out)


def ordered_streams(r: np.ndarray, files, rng, grouped: int) -> dict:
    """Window scores of the set in file order and in `grouped` patient-grouped orders."""
    out = {"file_order": stream_scores(r, np.arange(len(r)))}
    out["patient_grouped"] = np.concatenate([stream_scores(r, grouped_order(files, rng)) for _ in range(grouped)])
    return out


def ordered_section(spec, x_test, files_test, thr_res: float, bits: int | None) -> tuple[float, dict]:
    """The ordered-stream calibration on the official training set, and the clean official
    test set streamed in file order and grouped by patient at the resulting threshold."""
    x_train, _, files_train = datasets.load_split(spec, "train")
    r_train = residuals(x_train, bits)
    # its own generator, never the caller's: the full stage and --ordered-only must draw the
    # same random training windows, or the threshold (1.25 x their maximum) differs between them
    rng = np.random.default_rng(0)
    cal = ordered_streams(r_train, files_train, rng, grouped=2)
    cal["random"] = random_windows(r_train, 20000, rng)  # (more images than AdvTrain: a fuller tail)
    cal_max = max(float(v.max()) for v in cal.values())
    thr = max(thr_res, float(RESIDUAL_MARGIN * cal_max))
    test = ordered_streams(residuals(x_test, bits), files_test, rng, grouped=5)
    return thr, {"training_set_max": {k: float(v.max()) for k, v in cal.items()}, "training_images": len(x_train),
                 "clean_test": {k: {"windows": len(v), "max": float(v.max()), "alarm_rate": float((v > thr).mean())}
                                for k, v in test.items()}}


def fixture_streams(spec, x_test, advtest, thr: float, rng, bits: int | None) -> list:
    """UAP streams from the committed fixtures (every AdvTest image carries the UAP, and at
    half its norm as a stand-in for the weaker budgets), shuffled and in file order."""
    rows = []
    fix_dir = datasets.fixture_dir(spec, "campaign")
    for name in FIXTURES:
        path = os.path.join(fix_dir, f"{spec.name}__{name}.npy")
        if not os.path.exists(path):
            continue
        d = np.load(path)
        for scale in (1.0, 0.5):
            r = residuals(np.clip(x_test[advtest] + scale * d, 0, 1), bits)
            shuffled, ordered = stream_scores(r, rng.permutation(len(r))), stream_scores(r, np.arange(len(r)))
            rows.append({"uap": name, "scale": scale, "min_window_score": float(min(shuffled.min(), ordered.min())),
                         "alarm_rate": float(np.concatenate([shuffled, ordered]).__gt__(thr).mean())})
    return rows


def fooled_rate(rec, m: np.ndarray) -> float | None:
    """Share of the AdvTest images the served model gets right clean that the UAP moves to a
    wrong class (the record's own `success` also counts images already wrong, or already in
    a targeted UAP's class)."""
    ok = m & (rec.pred_clean == rec.label)
    return float((rec.pred_adv[ok] != rec.label[ok]).mean()) if ok.any() else None


def ordered_only(args, spec, out_dir):
    """--ordered-only: recalibrate the residual threshold without the attack records."""
    t0 = time.time()
    rng = np.random.default_rng(0)
    with open(os.path.join(out_dir, "report.json")) as f:
        camp = json.load(f)["campaign"]
    with open(os.path.join(out_dir, "adv_split.json")) as f:
        advtest = np.array(json.load(f)["AdvTest"]["index"], dtype=np.int64)
    x, _, files = datasets.load_split(spec, "test")
    random_thr = float(RESIDUAL_MARGIN * camp["calibration"]["clean_advtrain_window_max"])
    bits = bundle_toml.quantize_bits(out_dir)
    thr, ordered = ordered_section(spec, x, files, random_thr, bits)
    camp.setdefault("uap_streams_threshold", camp["config"]["residual_threshold"])
    camp["config"]["residual_threshold"] = round(thr, 6)
    camp["ordered"] = ordered
    camp["fixture_streams"] = fixture_streams(spec, x, advtest, thr, rng, bits)
    camp["command"] = f"python -m medsentry_training.campaign --dataset {args.dataset} --ordered-only"
    camp["ordered_seconds"] = round(time.time() - t0, 1)
    bundle_toml.set_campaign(out_dir, camp["config"])
    C.merge_report(out_dir, "campaign", camp)
    print(f"[campaign] residual threshold {random_thr:.4f} (random windows) -> {thr:.4f} (ordered training streams "
          f"{ordered['training_set_max']}); clean test {ordered['clean_test']}; fixtures {camp['fixture_streams']}", flush=True)


def main(argv=None):
    args, spec, out_dir = C.stage_args(__doc__, argv, extra=lambda ap: ap.add_argument(
        "--ordered-only", action="store_true", help="recalibrate with ordered streams, without the attack records"))
    if args.ordered_only:
        return ordered_only(args, spec, out_dir)
    t0 = time.time()
    st = C.load_stage(spec, args.limit)
    rng = np.random.default_rng(0)
    tr, te = st.split["train"], st.split["test"]
    if min(len(tr), len(te)) < RESIDUAL_WINDOW:
        print(f"[skip] campaign: AdvTrain/AdvTest hold {len(tr)}/{len(te)} images, fewer than one window of "
              f"{RESIDUAL_WINDOW}: no [campaign] section, so the monitor does not run for this bundle", flush=True)
        return
    logits, _ = C.forward_batches(st.model, st.x)
    pred = logits.argmax(1)
    k = logits.shape[1]
    ref_mix = np.bincount(pred, minlength=k) / len(pred)

    bits = bundle_toml.quantize_bits(out_dir)
    r_all = residuals(st.x, bits)
    clean_train = random_windows(r_all[tr], 20000, rng)
    thr_res, ordered = ordered_section(spec, st.x, st.files, float(RESIDUAL_MARGIN * clean_train.max()), bits)
    thr_mix = float(chi2.isf(CLASS_MIX_TAIL, k - 1))
    fa_res, fa_mix = stream_alarms(r_all[te], pred[te], ref_mix, thr_res, thr_mix, rng)
    print(f"[campaign] residual thr {thr_res:.4f} (clean AdvTrain window max {clean_train.max():.4f}); "
          f"class-mix thr {thr_mix:.2f}; clean AdvTest false alarms: residual {fa_res:.4f}, class mix {fa_mix:.4f}", flush=True)

    rows = []
    for rec in st.recs:
        if rec.target_model != C.SERVED or not rec.attack.startswith("uap"):
            continue
        m = rec.split == 1
        r_adv = residuals(rec.x_adv[m], bits)
        res_rate, mix_rate = stream_alarms(r_adv, rec.pred_adv[m].astype(np.int64), ref_mix, thr_res, thr_mix, rng,
                                           streams=5)
        rows.append({"attack": rec.attack, "budget": rec.budget, "n": int(m.sum()),
                     "residual_alarm_rate": res_rate, "class_mix_alarm_rate": mix_rate,
                     "mean_window_score": float(random_windows(r_adv, 200, rng).mean()),
                     # how much of an attack the stream is: a UAP that moves almost no prediction
                     # is no campaign, and the report says so beside a stream that never alarms
                     "changed_prediction_rate": float((rec.pred_adv[m] != rec.pred_clean[m]).mean()),
                     "fooled_rate": fooled_rate(rec, m),
                     "predicted_mix": (np.bincount(rec.pred_adv[m], minlength=k) / m.sum()).tolist()})
        print(f"[campaign] {rec.attack} {rec.budget}: residual {res_rate:.3f}, class mix {mix_rate:.3f}", flush=True)

    fix_dir = datasets.fixture_dir(spec, "campaign")
    os.makedirs(fix_dir, exist_ok=True)
    for rec in st.recs:
        name = f"{rec.attack}__{rec.budget}"
        if rec.target_model == C.SERVED and name in FIXTURES and rec.uap is not None:
            np.save(os.path.join(fix_dir, f"{spec.name}__{name}.npy"), rec.uap[0].astype(np.float32))

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
                       "uap_streams": rows, "ordered": ordered,
                       "fixture_streams": fixture_streams(spec, st.x, te, thr_res, rng, bits),
                       "seconds": round(time.time() - t0, 1)})
    print(f"[done] campaign monitor calibrated in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
