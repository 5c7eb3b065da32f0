"""Stage: fit the out-of-distribution model -> ood.json, [ood] and [accepts] in bundle.toml,
an `out_of_distribution` section in report.json, and parity fixtures for the Rust tests.

    python -m medsentry_training.ood --dataset chest_xray [--out DIR]

An input unlike anything the classifier was trained on (an MR sent to the chest model, a
photograph, a dermoscopy image) is not an attack, and the adversarial detectors, calibrated
on clean in-distribution images only, say nothing reliable about it. The sidecar answers it
OUT_OF_DISTRIBUTION instead (src/defense/ood.rs), from two kinds of evidence:

  DICOM attributes  [accepts] lists the Modality, BodyPartExamined and
      PhotometricInterpretation values the bundle was trained on; a DICOM input that
      carries one of these attributes with another value is out of distribution.
  image statistics  one Gaussian (Ledoit-Wolf shrinkage) over a vector that describes the
      image (the [0, 1] model input averaged over a GRID x GRID grid, per channel; the square
      root of its 16-bin intensity histogram over all channels; for colour inputs also of
      the 16-bin histogram of each pixel's chroma, max - min over its channels, which tells
      a grayscale image sent to a colour model) and what the classifier
      makes of it (its penultimate features). Score = squared Mahalanobis distance.
      Threshold: the 99.5th percentile of out-of-fold scores of the training images
      (5-fold cross-fitting; the test set is never used to fit or calibrate), so the
      expected clean rate is 0.5 % (at 0.1 % the chest bundle missed a quarter of the
      dermoscopy images: the training set holds a few odd images that set a 0.1 % tail).
  colour            the mean chroma of the decoded file (max - min over R, G, B; 0 for a
      grayscale file): above [accepts] max_chroma for a grayscale model, below min_chroma
      for a colour one.

Measured here (this stage's report section): the official test set's OOD rate (the target
is <= 1 %), that of 200 images of each other data set in ../shared/data, and that of
successful PGD-20 examples against the served (hardened) classifier on AdvTest: an attack
answered OUT_OF_DISTRIBUTION is still flagged, but the adversarial detectors should be the
ones to call it.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import time
import tomllib

import numpy as np
import onnxruntime as ort
from sklearn.covariance import LedoitWolf
from sklearn.model_selection import KFold

from . import bundle_toml, datasets, preprocess

BINS = 16
CALIBRATED_FPR = 0.005
FOLDS = 5
MAX_LISTED = 12  # clean test images over the threshold named in the report
OTHERS = {  # data sets sent to a bundle trained on something else: folder glob under shared/data
    "chest_xray": "chest_xray_kermany/images/test/**/*.jpeg",
    "dermoscopy": "dermoscopy_isic2018/**/*.jpg",
    "oct": "oct_kermany/**/*.jpeg",
}
PER_OTHER = 200
# What each served bundle accepts in a DICOM header (absent attributes are not checked),
# and for grayscale models the largest mean chroma (max - min over R, G, B) of a colour
# file: the chest training JPEGs (RGB, equal channels) have 0, dermoscopy photographs
# 0.05 and more (measured on every 5th chest training image and every 25th dermoscopy one).
MAX_CHROMA = 0.02
# Colour models: the smallest mean chroma of a file. Every one of the 3,161 dermoscopy
# training images is above 0.036 (`training_chroma` in the report); every chest X-ray and
# OCT scan is 0.
MIN_CHROMA = 0.02
ACCEPTS = {
    "chest_xray": {"modality": ["CR", "DX"], "body_part": ["CHEST"], "photometric": ["MONOCHROME1", "MONOCHROME2"],
                   "max_chroma": MAX_CHROMA},
    "pneumoniamnist": {"modality": ["CR", "DX"], "body_part": ["CHEST"], "photometric": ["MONOCHROME1", "MONOCHROME2"],
                       "max_chroma": MAX_CHROMA},
    # Dermoscopy in DICOM is external-camera photography (Modality XC), in colour.
    "dermoscopy": {"modality": ["XC"], "photometric": ["RGB", "YBR_FULL", "YBR_FULL_422"], "min_chroma": MIN_CHROMA},
    "oct": {"modality": ["OPT"], "photometric": ["MONOCHROME2"], "max_chroma": MAX_CHROMA},
}


def grid_of(size: int) -> int:
    """Cells per side of the layout grid: 8 when the input size allows it, else 7 (28 px)."""
    for g in (8, 7):
        if size % g == 0:
            return g
    raise ValueError(f"input size {size} is divisible by neither 8 nor 7")


def root_hist(v: np.ndarray) -> np.ndarray:
    """(N, M) values in [0, 1] -> (N, BINS) square roots of the histogram shares (bin k holds
    [k/BINS, (k+1)/BINS), the last bin also 1.0)."""
    idx = np.minimum(np.floor(v.astype(np.float64) * BINS), BINS - 1).astype(np.int64)
    return np.sqrt(np.stack([np.bincount(row, minlength=BINS) for row in idx]) / idx.shape[1])


def chroma_bins(channels: int) -> int:
    return BINS if channels == 3 else 0


def layout(x: np.ndarray, grid: int) -> np.ndarray:
    """(N, C, S, S) [0, 1] -> (N, C*grid*grid + BINS [+ BINS]): cell means, the root histogram
    of all values, and for 3 channels that of the per-pixel chroma; as src/defense/ood.rs."""
    n, c, h, w = x.shape
    x = x.astype(np.float64)
    cells = x.reshape(n, c, grid, h // grid, grid, w // grid).mean(axis=(3, 5)).reshape(n, -1)
    parts = [cells, root_hist(x.reshape(n, -1))]
    if chroma_bins(c):
        parts.append(root_hist((x.max(axis=1) - x.min(axis=1)).reshape(n, -1)))
    return np.concatenate(parts, axis=1)


class Classifier:
    """The served classifier.onnx, run as the sidecar runs it (mean/std from bundle.toml)."""

    def __init__(self, bundle_dir: str):
        with open(os.path.join(bundle_dir, "bundle.toml"), "rb") as f:
            self.manifest = tomllib.load(f)
        inp, out = self.manifest["input"], self.manifest["outputs"]
        self.mean = np.array(inp["mean"], np.float32)[:, None, None]
        self.std = np.array(inp["std"], np.float32)[:, None, None]
        self.input, self.logits_name, self.features_name = out["input"], out["logits"], out["features"]
        # Fitted bundles (the user's graph) may take NHWC and answer probabilities: the
        # class output is then read as logits = log(p), as the sidecar reads it.
        self.nhwc = inp.get("layout", "nchw") == "nhwc"
        self.probabilities = out.get("scores", "logits") == "probabilities"
        # The grid the sidecar rounds model-space inputs to before it reads them (None: none).
        self.quantize_bits = inp.get("quantize_bits")
        self.session = ort.InferenceSession(os.path.join(bundle_dir, "classifier.onnx"), providers=["CPUExecutionProvider"])

    def run(self, x: np.ndarray, *outputs: str) -> list:
        """The named outputs for [0, 1] inputs x, in batches of 256, as float64 arrays."""
        def feed(xb):
            t = ((xb - self.mean) / self.std).astype(np.float32)
            return np.ascontiguousarray(t.transpose(0, 2, 3, 1)) if self.nhwc else t
        parts = [self.session.run(list(outputs), {self.input: feed(x[i:i + 256])}) for i in range(0, len(x), 256)]
        res = [np.concatenate([p[k] for p in parts]).astype(np.float64) for k in range(len(outputs))]
        if self.probabilities:
            res = [np.log(np.maximum(r, 1e-30)) if n == self.logits_name else r for n, r in zip(outputs, res)]
        return res

    def served(self, x: np.ndarray) -> np.ndarray:
        """[0, 1] inputs as the sidecar reads them: rounded to the bundle's grid. Not done in
        run(): feature squeezing's copies of a served input are not rounded again."""
        return preprocess.quantize(x, self.quantize_bits)

    def features(self, x: np.ndarray) -> np.ndarray:
        return self.run(x, self.features_name)[0]


def vectors(x: np.ndarray, clf: Classifier, grid: int) -> np.ndarray:
    x = clf.served(x)
    return np.concatenate([layout(x, grid), clf.features(x)], axis=1)


def out_of_fold(v: np.ndarray) -> np.ndarray:
    scores = np.empty(len(v))
    for fit, held in KFold(FOLDS, shuffle=True, random_state=0).split(v):
        scores[held] = LedoitWolf().fit(v[fit]).mahalanobis(v[held])
    return scores


def file_chroma(path: str) -> float:
    """Mean over pixels of max - min over R, G, B of the decoded file (0 for a grayscale
    file); as src/pipeline/prepare.rs's mean_chroma."""
    x = preprocess.decode_rgb01(path)
    return float((x.max(axis=0) - x.min(axis=0)).mean())


def colour_ood(accepts: dict, chroma: np.ndarray) -> np.ndarray:
    """Whether each file's chroma contradicts [accepts]; as src/defense/ood.rs's colour_mismatch."""
    out = np.zeros(len(chroma), dtype=bool)
    if accepts.get("max_chroma") is not None:
        out |= chroma > accepts["max_chroma"]
    if accepts.get("min_chroma") is not None:
        out |= chroma < accepts["min_chroma"]
    return out


def other_sets(spec, rng) -> dict:
    """PER_OTHER images of every other data set, in this bundle's colour mode and size, with
    their files' mean chroma: {key: (x, chroma)}."""
    out = {}
    for key, pattern in OTHERS.items():
        if datasets.SPECS[key].folder == spec.folder:
            continue
        paths = sorted(glob.glob(os.path.join(datasets.SHARED_DATA, pattern), recursive=True))
        paths = [paths[i] for i in sorted(rng.choice(len(paths), min(PER_OTHER, len(paths)), replace=False))]
        x = np.stack([preprocess.load_image(p, spec.color, spec.size, spec.size) for p in paths]).astype(np.float32)
        out[key] = (x, np.array([file_chroma(p) for p in paths]))
    return out


def recorded_pgd(spec, idx: np.ndarray) -> dict:
    """{budget k: PGD-20 x_adv aligned with idx} from a fitted bundle's attack records."""
    if spec.fit_dir is None:
        return {}
    from . import advcommon as C
    adir = C.attack_dir(spec, None)
    out = {}
    for r in C.load_attacks(adir, "hardened", shas=C.load_manifest(adir)["shas"]):
        if r.attack == "pgd20":
            pos = {int(i): j for j, i in enumerate(r.index)}
            if all(int(i) in pos for i in idx):
                out[int(r.budget.split("_")[1])] = r.x_adv[[pos[int(i)] for i in idx]]
    return out


def pgd_rows(spec, out_dir, model, clf, grid, threshold, x_test, y_test) -> list:
    """OOD rate of successful PGD-20 examples (Linf 2, 4, 8/255) made against the served
    hardened checkpoint on the AdvTest images (adv_split.json)."""
    import torch
    import torchattacks

    from .advcommon import ckpt_path, load_ckpt
    with open(os.path.join(out_dir, "adv_split.json")) as f:
        idx = np.array(json.load(f)["AdvTest"]["index"])
    net, _ = load_ckpt(ckpt_path(spec, "hardened"))
    torch.manual_seed(0)
    x, y = torch.from_numpy(x_test[idx]), torch.from_numpy(y_test[idx])
    with torch.no_grad():
        clean_ok = net(x).argmax(1) == y
    rows = []
    recorded = recorded_pgd(spec, idx)
    for k in (2, 4, 8):
        eps = k / 255
        if spec.fit_dir is not None and k not in recorded:
            continue
        # A fitted bundle's attack stage made these already (and at full size they are costly).
        x_adv = torch.from_numpy(recorded[k]) if k in recorded else \
            torchattacks.PGD(net, eps=eps, alpha=2.5 * eps / 20, steps=20, random_start=True)(x, y)
        with torch.no_grad():
            fooled = (net(x_adv).argmax(1) != y) & clean_ok
        adv = x_adv[fooled].numpy()
        s = model.mahalanobis(vectors(adv, clf, grid)) if len(adv) else np.array([])
        rows.append({"budget": f"linf_{k}", "n_successful": int(fooled.sum()), "ood_rate": float((s > threshold).mean()) if len(s) else None})
        print(f"[ood] PGD-20 {k}/255: {len(s)} successful, {100 * rows[-1]['ood_rate'] if len(s) else 0:.1f} % out of distribution", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    datasets.add_dataset_arg(ap)
    ap.add_argument("--out", default=None, help="bundle folder (default models/NAME)")
    args = ap.parse_args(argv)
    spec = datasets.resolve(args.dataset)
    out_dir = args.out or spec.bundle_dir or os.path.join(datasets.REPO, "models", spec.name)
    t0 = time.time()
    rng = np.random.default_rng(0)
    clf = Classifier(out_dir)
    grid = grid_of(spec.size)

    x_train, _, _ = datasets.load_split(spec, "train")
    v_train = vectors(x_train, clf, grid)
    oof = out_of_fold(v_train)
    threshold = float(np.quantile(oof, 1 - CALIBRATED_FPR))
    model = LedoitWolf().fit(v_train)
    print(f"[ood] {len(x_train)} training images, {v_train.shape[1]} dims, threshold {threshold:.2f} "
          f"(out-of-fold {100 * (1 - CALIBRATED_FPR):.1f}th percentile)", flush=True)

    accepts = ACCEPTS.get(args.dataset) or datasets.fit_config(spec).get("accepts", {})
    if spec.color == "gray" and spec.fit_dir is not None:
        accepts = {**accepts, "max_chroma": MAX_CHROMA}
    checks_colour = accepts.get("max_chroma") is not None or accepts.get("min_chroma") is not None
    # The colour rule reads the files (a fitted bundle's images are arrays only).
    files_of = (lambda split: [os.path.join(datasets.SHARED_DATA, spec.folder, f) for f in datasets.load_split(spec, split)[2]]) \
        if checks_colour and spec.fit_dir is None else None

    def row(name, s, chroma):
        r = {"set": name, "n": len(s), "ood_rate": float((s > threshold).mean()), "median_score": float(np.median(s))}
        if chroma is not None:
            r["with_colour_rule_rate"] = float(((s > threshold) | colour_ood(accepts, chroma)).mean())
        return r

    x_test, y_test, files_test = datasets.load_split(spec, "test")
    s_test = model.mahalanobis(vectors(x_test, clf, grid))
    rows = [row(f"{spec.folder} official test (in distribution)", s_test,
                np.array([file_chroma(p) for p in files_of("test")]) if files_of else None)]
    # The clean test images over the threshold, named so that a reader can look at what the
    # score calls unfamiliar (real radiographs with odd framing, not attacks).
    over = sorted(np.flatnonzero(s_test > threshold), key=lambda i: -s_test[i])[:MAX_LISTED]
    over_threshold = [{"file": str(files_test[i]), "label": int(y_test[i]), "score": float(s_test[i])} for i in over]
    for key, (x, chroma) in other_sets(spec, rng).items():
        rows.append(row(datasets.SPECS[key].folder, model.mahalanobis(vectors(x, clf, grid)), chroma if files_of else None))
    for r in rows:
        print(f"[ood] {r['set']}: {100 * r['ood_rate']:.1f} % of {r['n']} out of distribution (median score {r['median_score']:.1f})"
              + (f", {100 * r['with_colour_rule_rate']:.1f} % with the colour rule" if "with_colour_rule_rate" in r else ""), flush=True)
    training_chroma = None
    if files_of:
        c = np.array([file_chroma(p) for p in files_of("train")])
        training_chroma = {"min": float(c.min()), "max": float(c.max()), "median": float(np.median(c)),
                           "contradicting_accepts": int(colour_ood(accepts, c).sum())}
        print(f"[ood] training files' mean chroma {training_chroma}", flush=True)

    c = int(x_train.shape[1])
    doc = {"kind": "gaussian", "grid": grid, "bins": BINS, "chroma_bins": chroma_bins(c), "channels": c,
           "feature_dim": int(v_train.shape[1] - grid * grid * c - BINS - chroma_bins(c)),
           "mean": model.location_.tolist(), "precision": model.precision_.tolist()}
    with open(os.path.join(out_dir, "ood.json"), "w") as f:
        json.dump(doc, f)
    section = {"file": "ood.json", "threshold": round(threshold, 6), "calibrated_fpr": CALIBRATED_FPR}
    bundle_toml.set_ood(out_dir, section, accepts)

    # Parity fixture: a few official test images (their [0, 1] tensors) and Python's scores.
    # (Two per class for 2-class bundles, one per class otherwise: the fixture stays small.)
    per = 2 if len(np.unique(y_test)) <= 2 else 1
    pick = np.concatenate([np.flatnonzero(y_test == c)[:per] for c in np.unique(y_test)])
    fix = {"bundle": spec.name, "threshold": threshold,
           "cases": [{"file": files_test[i], "score": float(s_test[i]),
                      "tensor": np.round(x_test[i].astype(np.float64), 7).ravel().tolist()} for i in pick]}
    fix_dir = datasets.fixture_dir(spec, "ood")
    os.makedirs(fix_dir, exist_ok=True)
    with open(os.path.join(fix_dir, f"{spec.name}.json"), "w") as f:
        json.dump(fix, f)

    attacked = pgd_rows(spec, out_dir, model, clf, grid, threshold, x_test, y_test)

    from .advcommon import merge_report
    merge_report(out_dir, "out_of_distribution", {
        "command": f"python -m medsentry_training.ood --dataset {args.dataset}",
        "vector": f"{grid}x{grid} cell means per channel + sqrt of a {BINS}-bin histogram"
                  + (f" + sqrt of a {BINS}-bin chroma histogram" if chroma_bins(c) else "") + f" + {doc['feature_dim']} penultimate features",
        "threshold": threshold, "calibrated_fpr": CALIBRATED_FPR, "training_images": len(x_train),
        "out_of_fold_max": float(oof.max()), "out_of_fold_median": float(np.median(oof)),
        "clean_test_over_threshold": over_threshold, "accepts": accepts, "rows": rows, "training_chroma": training_chroma,
        "pgd20_successful": attacked, "seconds": round(time.time() - t0, 1)})
    print(f"[done] out-of-distribution model in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
