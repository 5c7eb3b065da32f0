"""Stage: export a bundle: classifier.onnx (logits + features, dynamic batch), parity check
against PyTorch, clean evaluation on the official test set, reference outputs for the Rust
tests, bundle.toml with sha256s and figures.

    python -m medsentry_training.export --dataset chest_xray --classifier hardened
    python -m medsentry_training.export --refresh-reference DIR

--refresh-reference recomputes an exported bundle's reference outputs for its inputs as the
sidecar reads them (on the bundle's `[input] quantize_bits` grid), without exporting again.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import onnxruntime as ort
import torch
from scipy.special import softmax
from sklearn.metrics import roc_auc_score

from . import advcommon as C
from . import bundle_toml, datasets, preprocess
from .nets import Normalized, SmallResNet
from .ood import Classifier
from .train import CKPT_DIR

MEDMNIST_ANCHORS = {
    "chest_xray": "PneumoniaMNIST (same X-rays, 28 px): ResNet-18@28 ACC 0.854, ResNet-50@224 ACC 0.884",
    "pneumoniamnist": "PneumoniaMNIST: ResNet-18@28 ACC 0.854, ResNet-50@224 ACC 0.884",
    "dermoscopy": "DermaMNIST (HAM10000, its own split): ResNet-50@224 ACC 0.731",
    "oct": "OCTMNIST (OCT v3, 97,477 training images, its own test set): ResNet-50@224 ACC 0.776",
}
N_REFERENCE_PER_CLASS = 4
# The bundle's `[input] quantize_bits`: every later stage scores inputs on this grid, as the
# sidecar reads them (preprocess.quantize; experiments/quantised_inputs.py says why).
QUANTIZE_BITS = 8


def load_model(spec, kind):
    ck = torch.load(os.path.join(CKPT_DIR, f"{spec.name}_{kind}.pt"), weights_only=False)
    net = SmallResNet(ck["channels"], len(ck["labels"]), width=16, stem_stride=2)
    net.load_state_dict(ck["net"])
    net.eval()
    return net, ck


def auc(scores: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC of `scores` for the positive class 1, ties counted half (scikit-learn's
    roc_auc_score; the rank-sum formula it replaced agrees to rounding:
    tests/test_sklearn_parity.py)."""
    return float(roc_auc_score(y, scores))


def evaluate(net, ck, x, y):
    model = Normalized(net, ck["mean"], ck["std"]).eval()
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(x[i:i + 256])) for i in range(0, len(x), 256)])
    prob = torch.softmax(logits, 1).numpy()
    pred = prob.argmax(1)
    out = {"accuracy": float((pred == y).mean()),
           "balanced_accuracy": float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))}
    if prob.shape[1] == 2:
        out["auc"] = auc(prob[:, 1], y)
        out["sensitivity"] = float((pred[y == 1] == 1).mean())
        out["specificity"] = float((pred[y == 0] == 0).mean())
    else:
        # MedMNIST's multi-class AUC: the mean of the one-vs-rest AUCs
        present = [c for c in range(prob.shape[1]) if 0 < (y == c).sum() < len(y)]
        out["auc"] = float(np.mean([auc(prob[:, c], (y == c).astype(np.int64)) for c in present]))
        out["auc_kind"] = "macro one-vs-rest"
        out["recall_per_class"] = [float((pred[y == c] == c).mean()) if (y == c).any() else None
                                   for c in range(prob.shape[1])]
    return out


REFERENCE_ABOUT = ("Written by medsentry_training.export: model-space pixels ([0,1], before mean/std) of real test "
                   "images as the pipeline preprocesses them (before the rounding to the bundle's quantize_bits), and "
                   "onnxruntime's outputs on them as the sidecar reads them (rounded).")


def refresh_reference(out_dir: str) -> None:
    """reference.json's outputs recomputed by the bundle's served classifier for its items'
    pixels as the sidecar reads them (ood.Classifier.served); the pixels are kept."""
    clf = Classifier(out_dir)
    path = os.path.join(out_dir, "reference.json")
    with open(path) as f:
        ref = json.load(f)
    x = np.array([it["pixels"] for it in ref["items"]], dtype=np.float32).reshape(-1, *ref["shape"])
    logits, feats = clf.run(clf.served(x), clf.logits_name, clf.features_name)
    for it, lg, p, ft in zip(ref["items"], logits, softmax(logits, axis=1), feats, strict=True):
        it.update({"logits": lg.tolist(), "probabilities": p.tolist(), "features_head": ft[:8].tolist()})
    ref["about"] = REFERENCE_ABOUT
    with open(path, "w") as f:
        json.dump(ref, f)
    print(f"[done] {path}: outputs of {len(x)} items on the grid of quantize_bits = {clf.quantize_bits}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="chest_xray", choices=sorted(datasets.SPECS))
    ap.add_argument("--classifier", default="hardened", choices=["hardened", "standard"])
    ap.add_argument("--version", default="1.0.0")
    ap.add_argument("--refresh-reference", metavar="DIR", help="only recompute DIR/reference.json's outputs (see above)")
    args = ap.parse_args(argv)
    if args.refresh_reference:
        return refresh_reference(args.refresh_reference)
    t0 = time.time()
    spec = datasets.SPECS[args.dataset]
    out_dir = os.path.join(datasets.REPO, "models", spec.name)
    os.makedirs(out_dir, exist_ok=True)
    net, ck = load_model(spec, args.classifier)
    mean, std = ck["mean"], ck["std"]

    onnx_path = os.path.join(out_dir, "classifier.onnx")
    dummy = torch.zeros(2, ck["channels"], spec.size, spec.size)
    torch.onnx.export(net, (dummy,), onnx_path, input_names=["input"], output_names=["logits", "features"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}},
                      opset_version=17, dynamo=False)

    xte, yte, files = datasets.load_split(spec, "test")
    def normalise(x01):
        return ((x01 - np.array(mean, dtype=np.float32).reshape(1, -1, 1, 1))
                / np.array(std, dtype=np.float32).reshape(1, -1, 1, 1)).astype(np.float32)
    norm = normalise(xte)
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    ort_logits, ort_feats = sess.run(["logits", "features"], {"input": norm[:64]})
    with torch.no_grad():
        t_logits, t_feats = net(torch.from_numpy(norm[:64]))
    parity = max(float(np.abs(ort_logits - t_logits.numpy()).max()), float(np.abs(ort_feats - t_feats.numpy()).max()))
    print(f"[parity] max |onnxruntime - torch| over logits and features of 64 test images: {parity:.2e}")
    if parity > 1e-4:
        raise SystemExit(f"ONNX export does not match PyTorch ({parity:.2e} > 1e-4)")

    figures = {"onnx_torch_max_abs_diff": parity}
    evals = {}
    for kind in ["standard", "hardened"]:
        if os.path.exists(os.path.join(CKPT_DIR, f"{spec.name}_{kind}.pt")):
            k_net, k_ck = load_model(spec, kind)
            evals[kind] = evaluate(k_net, k_ck, xte, yte)
            evals[kind]["selected_epoch"] = k_ck["epoch"]
            evals[kind]["val"] = k_ck["val"]
            for m, v in evals[kind].items():
                if isinstance(v, float):
                    figures[f"{kind}_test_{m}"] = v
    print(f"[eval] {json.dumps(evals)}")

    # Reference inputs/outputs the Rust tests compare against (first files of each class;
    # one each with many classes, so that an RGB bundle's file stays near 2 MB).
    ref_idx = []
    per_class = max(1, min(N_REFERENCE_PER_CLASS, 8 // len(spec.labels)))
    for c in range(len(spec.labels)):
        ref_idx += [i for i in range(len(yte)) if yte[i] == c][:per_class]
    served = preprocess.quantize(xte[ref_idx], QUANTIZE_BITS)
    ref_logits, ref_feats = sess.run(["logits", "features"], {"input": normalise(served)})
    ref_prob = softmax(ref_logits, axis=1)
    reference = {
        "about": REFERENCE_ABOUT,
        "data_root": spec.folder, "shape": [ck["channels"], spec.size, spec.size],
        "items": [{"file": files[i], "label": int(yte[i]), "pixels": [float(v) for v in xte[i].ravel()],
                   "logits": ref_logits[k].tolist(), "probabilities": ref_prob[k].tolist(),
                   "features_head": ref_feats[k][:8].tolist()} for k, i in enumerate(ref_idx)],
    }
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(reference, f)

    h = ck.get("harden")
    tasks = {"chest_xray": "pediatric chest X-ray: NORMAL vs PNEUMONIA (Kermany 2018)",
             "pneumoniamnist": "pediatric chest X-ray at 28 px (PneumoniaMNIST): NORMAL vs PNEUMONIA",
             "dermoscopy": "dermoscopy, 7 lesion classes (HAM10000 / ISIC 2018 Task 3)"}
    doc = {
        "name": spec.name, "version": args.version, "task": tasks.get(args.dataset, args.dataset),
        "labels": list(spec.labels), "max_batch": 32, "data_source": spec.source_md,
        "input": {"channels": ck["channels"], "height": spec.size, "width": spec.size, "color": spec.color,
                  "resize": "area", "mean": [round(m, 7) for m in mean], "std": [round(s, 7) for s in std],
                  "dicom": "modality rescale, then the first VOI window (or VOI LUT; min-max when absent), "
                           "then MONOCHROME1 inversion, to [0, 1]",
                  "quantize_bits": QUANTIZE_BITS},
        "outputs": {"input": "input", "logits": "logits", "features": "features", "feature_dim": net.feature_dim},
    }
    if h:
        doc["hardening"] = {"method": h["method"], "norm": h["norm"], "epsilon": round(h["eps"], 6), "steps": h["steps"]}
    doc["files"] = {"classifier.onnx": C.sha256_file(onnx_path)}
    doc["figures"] = {k: float(f"{v:.6g}") for k, v in sorted(figures.items())}
    header = (f"# Written by models/training (python -m medsentry_training.export --dataset {args.dataset} "
              f"--classifier {args.classifier}); detectors added by python -m medsentry_training.bundle_toml.")
    bundle_toml.write_new(out_dir, doc, header)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump({"dataset": args.dataset, "served_classifier": args.classifier, "clean_test": evals,
                   "medmnist_anchor": MEDMNIST_ANCHORS.get(args.dataset), "parity": parity}, f, indent=1)
    print(f"[done] bundle written to models/{spec.name} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
