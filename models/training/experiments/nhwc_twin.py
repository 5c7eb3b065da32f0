"""The same classifier in another layout: NHWC input in [-1, 1], softmax output.

Issue 12 asks that a second ONNX file with a different layout fit and serve as well as the
first, with the same figures. This experiment rewrites the hospital stand-in (NCHW, ImageNet
mean/std outside the graph, logits) the way a Keras or TensorFlow export would look: input
(N, H, W, 3) scaled to [-1, 1], the ImageNet normalisation inside the graph, a final Softmax.
It adds the feature output with `fit`'s own graph code, carries the fitted bundle's detectors
over (their inputs, the penultimate features and the log-probabilities, are the same
functions of the image), and screens the official test images through the real sidecar
(`medsentry screen --json`) with both bundles, comparing probabilities, detector scores and
verdicts image by image.

    cd models/training && .venv/bin/python experiments/nhwc_twin.py \
        --onnx work/hospital/resnet18_224.onnx --bundle ../chest-xray-resnet18-224 \
        --images ../../../shared/data/chest_xray_kermany/images/test

It refits nothing: the full `fit` on this copy (attacks included) costs the same CPU hours as
the first; the small-model fit tests run every stage in both layouts (tests/test_fit.py).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tomllib

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from medsentry_training import bundle_toml  # noqa: E402
from medsentry_training.advcommon import sha256_file  # noqa: E402
from medsentry_training.fit import graph  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def rewrite_nhwc_softmax(model: onnx.ModelProto, mean, std) -> onnx.ModelProto:
    """(N, H, W, C) in [-1, 1] -> transpose -> (x + 1) / 2 -> (x - mean) / std -> the original
    graph -> Softmax. The original nodes and initializers are kept as they are."""
    g = model.graph
    old_in, old_out = g.input[0], g.output[0]
    _, c, h, w = [d.dim_value for d in old_in.type.tensor_type.shape.dim]
    shape = [1, c, 1, 1]
    inits = [helper.make_tensor("nhwc_one", TensorProto.FLOAT, [], [1.0]),
             helper.make_tensor("nhwc_half", TensorProto.FLOAT, [], [0.5]),
             helper.make_tensor("nhwc_mean", TensorProto.FLOAT, shape, list(mean)),
             helper.make_tensor("nhwc_std", TensorProto.FLOAT, shape, list(std))]
    pre = [helper.make_node("Transpose", ["image"], ["nhwc_t"], perm=[0, 3, 1, 2]),
           helper.make_node("Add", ["nhwc_t", "nhwc_one"], ["nhwc_a"]),
           helper.make_node("Mul", ["nhwc_a", "nhwc_half"], ["nhwc_01"]),
           helper.make_node("Sub", ["nhwc_01", "nhwc_mean"], ["nhwc_s"]),
           helper.make_node("Div", ["nhwc_s", "nhwc_std"], [old_in.name])]
    post = [helper.make_node("Softmax", [old_out.name], ["probabilities"], axis=1)]
    new_in = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", h, w, c])
    new_out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", old_out.type.tensor_type.shape.dim[1].dim_value])
    graph_ = helper.make_graph(pre + list(g.node) + post, "nhwc_softmax", [new_in], [new_out],
                               initializer=list(g.initializer) + inits)
    out = helper.make_model(graph_, opset_imports=model.opset_import, producer_name="nhwc_twin")
    out.ir_version = model.ir_version
    onnx.checker.check_model(out)
    return out


def screen(binary: str, models_dir: str, model: str, images: str) -> dict:
    run = subprocess.run([binary, "screen", "--json", "--intra-threads", "2", "--models-dir", models_dir, "--model", model, images],
                         capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return {os.path.relpath(r["file"], images): r for r in rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", required=True, help="the original NCHW graph (logits, mean/std outside)")
    ap.add_argument("--bundle", required=True, help="the bundle `fit` made from it")
    ap.add_argument("--images", required=True)
    ap.add_argument("--work", default="work/fit/nhwc-twin")
    ap.add_argument("--binary", default=os.path.join(REPO, "target", "release", "medsentry"))
    args = ap.parse_args()

    with open(os.path.join(args.bundle, "bundle.toml"), "rb") as f:
        doc = tomllib.load(f)
    name = doc["name"] + "-nhwc"
    out_dir = os.path.join(args.work, "models", name)
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(out_dir)
    original = onnx.load(args.onnx)
    twin = rewrite_nhwc_softmax(original, doc["input"]["mean"], doc["input"]["std"])
    spec = graph.inspect(twin, mean=[0.5] * 3, std=[0.5] * 3)
    assert (spec.layout, spec.scores) == ("nhwc", "probabilities"), spec
    x = np.random.default_rng(0).random((4, 3, spec.height, spec.width), dtype=np.float32)
    dim = graph.feature_dim(twin, spec, x)
    fitted = graph.add_features(twin, spec, dim)
    data = fitted.SerializeToString()
    n = graph.check_outputs_unchanged(twin.SerializeToString(), data, spec, x)
    with open(os.path.join(out_dir, "classifier.onnx"), "wb") as f:
        f.write(data)
    for file in doc["files"]:
        if file != "classifier.onnx":
            shutil.copy(os.path.join(args.bundle, file), out_dir)
    doc["name"] = name
    doc["input"].update({"layout": "nhwc", "mean": [0.5] * 3, "std": [0.5] * 3})
    doc["outputs"].update({"input": spec.input, "logits": spec.output, "scores": "probabilities"})
    doc["files"]["classifier.onnx"] = sha256_file(os.path.join(out_dir, "classifier.onnx"))
    bundle_toml.write_new(out_dir, doc, "# experiments/nhwc_twin.py: the NHWC/[-1,1]/softmax rewrite, detectors carried over")
    print(f"[twin] {name}: {n} original output values bit-identical after adding features ({dim})", flush=True)

    models_a = os.path.join(args.work, "original")
    os.makedirs(models_a)
    os.symlink(os.path.abspath(args.bundle), os.path.join(models_a, os.path.basename(os.path.normpath(args.bundle))))
    a = screen(args.binary, models_a, doc["name"].removesuffix("-nhwc"), args.images)
    b = screen(args.binary, os.path.join(args.work, "models"), name, args.images)
    common = sorted(set(a) & set(b))
    prob = max(abs(a[k]["probabilities"][c] - b[k]["probabilities"][c]) for k in common for c in a[k]["probabilities"])
    det = {d["name"]: 0.0 for d in a[common[0]]["detectors"]}
    for k in common:
        for u, v in zip(a[k]["detectors"], b[k]["detectors"]):
            det[u["name"]] = max(det[u["name"]], abs(u["score"] - v["score"]) / max(abs(u["score"]), 1e-6))
    same_verdict = sum(a[k]["verdict"] == b[k]["verdict"] for k in common)
    same_label = sum(a[k]["label"] == b[k]["label"] for k in common)
    verdicts = {v: sum(a[k]["verdict"] == v for k in common) for v in sorted({a[k]["verdict"] for k in common})}
    result = {"images": len(common), "only_one_side": len(set(a) ^ set(b)), "max_abs_probability_difference": prob,
              "max_relative_detector_score_difference": det, "same_verdict": same_verdict, "same_label": same_label,
              "verdicts_original": verdicts}
    print(json.dumps(result, indent=1))
    with open(os.path.join(args.work, "comparison.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
