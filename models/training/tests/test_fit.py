"""The `fit` command: a real small model fitted on real chest X-rays (both layouts), and
every bad input the command must refuse with a message naming the cause, leaving nothing
in --out.

    cd models/training && .venv/bin/python -m pytest tests -q
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tiny_models as T  # noqa: E402
from medsentry_training import preprocess  # noqa: E402

TRAINING = os.path.dirname(HERE)


def run_fit(*args, check=True):
    cmd = [sys.executable, "-m", "medsentry_training.fit", *args]
    p = subprocess.run(cmd, cwd=TRAINING, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"fit failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """10 real chest X-rays per class as class sub-folders (symlinks), plus one broken file."""
    root = tmp_path_factory.mktemp("images")
    for path, c in T.chest_files(10, "test"):
        os.makedirs(root / c, exist_ok=True)
        os.symlink(path, root / c / os.path.basename(path))
    (root / "NORMAL" / "broken.png").write_bytes(b"not a png")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    net = T.train_tiny(steps=20)
    paths = {}
    for layout in ("nchw_logits", "nhwc_softmax"):
        paths[layout] = str(d / f"{layout}.onnx")
        T.export(net, paths[layout], layout)
    return paths


def hand_graph(path, input_shape, *, act="Relu", classes=2, extra_input=False, softmax=False):
    """Conv -> act -> GlobalAveragePool -> Flatten -> Gemm [-> Softmax], built with onnx.helper."""
    rng = np.random.default_rng(0)
    c = input_shape[1] if len(input_shape) == 4 else 1
    inits = [numpy_helper.from_array(rng.normal(size=(4, c, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(classes, 4)).astype(np.float32), "fc_w"),
             numpy_helper.from_array(np.zeros(classes, np.float32), "fc_b")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node(act, ["c"], ["a"]),
             helper.make_node("GlobalAveragePool", ["a"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits" if not softmax else "z"], transB=1)]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["z"], ["logits"], axis=1))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["n", 1]))
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", classes])],
                          inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18 if act == "Mish" else 17)], ir_version=8), path)
    return path


def test_fit_serves_the_users_graph_in_both_layouts(tiny, images, tmp_path):
    refs = {}
    for layout, extra in (("nchw_logits", ["--mean", str(T.MEAN), "--std", str(T.STD)]),
                          ("nhwc_softmax", ["--mean", "0.5", "--std", "0.5"])):
        out = tmp_path / layout
        run_fit("--onnx", tiny[layout], "--images", str(images), "--out", str(out), "--work", str(tmp_path / f"w-{layout}"),
                "--attacks", "fgsm,pgd20", "--eps", "8", "--adaptive-steps", "2", *extra)
        with open(out / "bundle.toml", "rb") as f:
            m = tomllib.load(f)
        assert m["input"]["layout"] == ("nhwc" if layout.startswith("nhwc") else "nchw")
        assert m["outputs"]["scores"] == ("probabilities" if layout.endswith("softmax") else "logits")
        assert {d["kind"] for d in m["detectors"]} >= {"mahalanobis", "logistic", "feature_squeezing", "fused"}
        assert set(m["files"]) >= {"classifier.onnx", "ood.json", "detector_fused.json"}
        skipped = json.load(open(tmp_path / f"w-{layout}" / "skipped.json"))
        assert [s["file"] for s in skipped] == [os.path.join("NORMAL", "broken.png")]
        # The original output of the fitted graph is ONNX Runtime's on the user's graph, for
        # the pixels as the sidecar reads them: rounded to the default 8-bit grid.
        assert m["input"]["quantize_bits"] == 8
        ref = json.load(open(out / "reference.json"))
        x = np.array([it["pixels"] for it in ref["items"]], np.float32).reshape(-1, 1, T.SIZE, T.SIZE)
        x = preprocess.quantize(x, 8)
        orig = ort.InferenceSession(tiny[layout])
        feed = (x - T.MEAN) / T.STD if layout == "nchw_logits" else np.transpose(x * 2 - 1, (0, 2, 3, 1))
        raw = orig.run(None, {orig.get_inputs()[0].name: feed.astype(np.float32)})[0]
        assert np.array_equal(raw, np.array([it["raw_output"] for it in ref["items"]], np.float32))
        refs[layout] = np.array([it["probabilities"] for it in ref["items"]])
        report = json.load(open(out / "report.json"))
        assert report["fit"]["onnx_torch_max_abs_diff"] <= 1e-4
        assert "adversarial_evaluation" in report and "fused_detector" in report and "out_of_distribution" in report
        assert (out / "REPORT.md").read_text().count("the user's graph") >= 1
        # Smooth PGD-20 is made by the fused stage itself, on both halves, and is a seen family.
        smooth = [r for r in report["fused_detector"]["rows"] if r["attack"] == "pgd20_smooth"]
        assert [r["budget"] for r in smooth] == ["linf_4", "linf_8"] and all(r["seen"] for r in smooth)
        assert {"pgd20_smooth linf_4", "pgd20_smooth linf_8"} <= set(report["fused_detector"]["advtrain"]["by_family"])
        kinds = [r["attack"] for r in report["adaptive_fused"]["rows"]]
        assert sorted(set(kinds)) == ["feature-hiding", "fused-aware", "fused-aware-lowpass", "fused-aware-lowpass-8"]
        if layout == "nchw_logits":
            rerun_one_adaptive_kind(tmp_path / f"w-{layout}")
    assert np.abs(refs["nchw_logits"] - refs["nhwc_softmax"]).max() <= 1e-5


def rerun_one_adaptive_kind(work):
    """adaptive_fused --kinds re-runs one attack and keeps the other kinds' rows; with other
    steps than the last run it refuses (the rows would not compare)."""
    report = work / "bundle" / "report.json"
    before = json.load(open(report))["adaptive_fused"]["rows"]
    stage = [sys.executable, "-m", "medsentry_training.adaptive_fused", "--dataset", str(work), "--kinds", "fused-aware-lowpass"]
    subprocess.run(stage + ["--steps", "2"], cwd=TRAINING, check=True, capture_output=True)
    after = json.load(open(report))["adaptive_fused"]
    assert [r for r in after["rows"] if r["attack"] != "fused-aware-lowpass"] == \
        [r for r in before if r["attack"] != "fused-aware-lowpass"]
    assert [r["attack"] for r in after["rows"]] == [r["attack"] for r in before]
    assert after["command"].endswith("--kinds fused-aware-lowpass")
    # The report names both runs: the one that measured the kept rows, then this one.
    assert len(after["commands"]) == 2 and after["commands"][1] == after["command"]
    assert "--kinds" not in after["commands"][0]
    p = subprocess.run(stage + ["--steps", "3"], cwd=TRAINING, capture_output=True, text=True)
    assert p.returncode != 0 and "another number of steps" in p.stderr, p.stderr[-2000:]


@pytest.mark.parametrize("case, message", [
    ("vector_input", "has 2 dimensions"),
    ("two_inputs", "has 2 inputs"),
    ("dynamic_size", "dynamic: pass --size"),
    ("mish", "cannot convert operator Mish"),
    ("three_classes", "output 'logits' has 3"),
])
def test_bad_graphs_are_refused_with_the_cause(case, message, images, tmp_path):
    shapes = {"vector_input": ["n", 16], "dynamic_size": ["n", 1, "h", "w"]}
    path = hand_graph(str(tmp_path / "m.onnx"), shapes.get(case, ["n", 1, 16, 16]), act="Mish" if case == "mish" else "Relu",
                      extra_input=case == "two_inputs", classes=3 if case == "three_classes" else 2)
    out = tmp_path / "out"
    p = run_fit("--onnx", path, "--images", str(images), "--out", str(out), "--work", str(tmp_path / "w"), check=False)
    assert p.returncode != 0
    assert message in p.stderr, p.stderr[-2000:]
    assert not out.exists(), "nothing half-written in --out"


def test_one_class_and_label_mismatch_are_refused(images, tmp_path):
    path = hand_graph(str(tmp_path / "m.onnx"), ["n", 1, 16, 16])
    one = tmp_path / "one"
    os.makedirs(one / "NORMAL")
    for f in sorted(os.listdir(images / "NORMAL"))[:4]:
        os.symlink(os.path.realpath(images / "NORMAL" / f), one / "NORMAL" / f)
    p = run_fit("--onnx", path, "--images", str(one), "--out", str(tmp_path / "o1"), "--work", str(tmp_path / "w1"), check=False)
    assert p.returncode != 0 and "1 class(es)" in p.stderr, p.stderr[-2000:]
    p = run_fit("--onnx", path, "--images", str(images), "--labels", "A,B,C", "--out", str(tmp_path / "o2"),
                "--work", str(tmp_path / "w2"), check=False)
    assert p.returncode != 0 and "--labels has 3 names" in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_outputs_stay_bit_identical_and_penultimate_is_found(tmp_path):
    from medsentry_training.fit import graph
    path = hand_graph(str(tmp_path / "m.onnx"), ["n", 1, 16, 16], softmax=True)
    model = onnx.load(path)
    spec = graph.inspect(model)
    assert (spec.layout, spec.scores, spec.channels, spec.height) == ("nchw", "probabilities", 1, 16)
    assert graph.penultimate(model, spec.output) == "f"
    x = np.random.default_rng(1).random((5, 1, 16, 16), dtype=np.float32)
    aug = graph.add_features(model, spec, graph.feature_dim(model, spec, x))
    assert graph.check_outputs_unchanged(model.SerializeToString(), aug.SerializeToString(), spec, x) == 10
    assert graph.spec_of(aug).feature_dim == 4
