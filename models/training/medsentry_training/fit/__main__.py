"""Fit a bundle for any ONNX image classifier: the hospital's own model, screened by the
sidecar with exactly the network that answers the clinician.

    python -m medsentry_training.fit --onnx MODEL.onnx --images DIR --out BUNDLE_DIR
        [--csv LABELS.csv --group-column patient_id] [--labels A,B,...]
        [--spec SPEC.toml | --layout nchw|nhwc --size S --color gray|rgb --mean M.. --std S..
         --scores logits|probabilities --output NAME]
        [--train-images DIR] [--per-half N] [--attacks fgsm,bim,pgd20,cw,square] [--eps 1,2,4,8]
        [--name NAME] [--task TEXT] [--work DIR] [--force] [--quantize-bits 8]

Steps (each skipped when its output exists and is current, so a rerun resumes):
  1. check the graph (graph.py): one 4-D float input, a (batch, classes) output, the input
     spec given on the command line or in --spec agrees with it;
  2. read the labelled images (images.py) into the model's [0, 1] input space; unreadable
     files are skipped and listed in skipped.json; the classes must match the output;
  3. add the penultimate features as an output (original outputs checked bit-identical
     under ONNX Runtime) and convert the graph to PyTorch (checked within 1e-4);
  4. bundle.toml (with `quantize_bits`: the sidecar rounds every input to that grid, and
     every stage scores inputs on it; 0 for none), reference outputs and the clean
     evaluation, both of the images as the sidecar reads them (rounded);
  5. the pipeline's stages on that graph, white-box: attacks, detectors, squeeze,
     bundle_toml, evaluate, fused, adaptive_fused, ood, campaign, report (the same tables
     as every bundle; --adaptive-steps sets both adaptive attacks' steps, --adaptive-eps
     both attacks' budgets, kept in fit.json for those stages);
  6. the finished bundle is copied to --out in one rename: nothing half-written there.

The labelled images are split 50/50 (by --group-column when given) into AdvTrain (detector
fitting and calibration) and AdvTest (every reported figure). --train-images, when given,
calibrates the out-of-distribution model and the campaign monitor; otherwise AdvTrain does.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import tomllib

import numpy as np
import onnx

from .. import bundle_toml, datasets
from .. import advcommon as C
from ..export import QUANTIZE_BITS
from ..export import evaluate as clean_eval
from ..preprocess import quantize
from ..sample import fmt32
from . import graph, images, torch_graph

PKG = "medsentry_training"
TRAINING = os.path.join(datasets.REPO, "models", "training")
DEFAULT_ATTACKS = "fgsm,bim,pgd20,cw,square"
SPEC_KEYS = ("layout", "size", "color", "mean", "std", "scores", "output")


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--images", required=True, help="class sub-folders, or the root the --csv paths are relative to")
    ap.add_argument("--csv", default=None)
    ap.add_argument("--group-column", default=None, help="patient/study column of --csv: splits keep a group whole")
    ap.add_argument("--labels", default=None, help="class names in output order (comma list)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default=None)
    ap.add_argument("--task", default=None)
    ap.add_argument("--data-source", default="given to fit by the user")
    ap.add_argument("--spec", default=None, help="TOML with any of " + ", ".join(SPEC_KEYS))
    ap.add_argument("--layout", choices=["nchw", "nhwc"])
    ap.add_argument("--size", type=int)
    ap.add_argument("--color", choices=["gray", "rgb"])
    ap.add_argument("--mean", type=lambda s: [float(v) for v in s.split(",")])
    ap.add_argument("--std", type=lambda s: [float(v) for v in s.split(",")])
    ap.add_argument("--scores", choices=["logits", "probabilities"])
    ap.add_argument("--output", default=None)
    ap.add_argument("--accepts-modality", default=None, help="DICOM Modality values the model takes, e.g. CR,DX")
    ap.add_argument("--accepts-body-part", default=None, help="BodyPartExamined values, e.g. CHEST")
    ap.add_argument("--accepts-photometric", default=None, help="PhotometricInterpretation values")
    ap.add_argument("--train-images", default=None)
    ap.add_argument("--train-limit", type=int, default=1000)
    ap.add_argument("--per-half", type=int, default=None, help="AdvTrain/AdvTest size cap (CPU time)")
    ap.add_argument("--attacks", default=DEFAULT_ATTACKS)
    ap.add_argument("--eps", default="1,2,4,8", help="Linf budgets in 1/255")
    ap.add_argument("--adaptive-steps", type=int, default=40)
    ap.add_argument("--adaptive-eps", default="2,4,8", help="budgets (1/255) of both adaptive attacks (the fused verdict's and evaluate's)")
    ap.add_argument("--max-batch", type=int, default=32, help="largest batch the sidecar forms (memory: 8 suits 224 px)")
    ap.add_argument("--work", default=None, help="work folder (default models/training/work/fit/NAME)")
    ap.add_argument("--force", action="store_true", help="replace an existing --out")
    ap.add_argument("--quantize-bits", type=int, default=QUANTIZE_BITS, choices=range(0, 17), metavar="0..16",
                    help="the grid the sidecar rounds every input to, as the exported bundles do (0: no rounding)")
    args = ap.parse_args(argv)
    args.name = args.name or os.path.basename(os.path.abspath(args.out))
    args.work = os.path.abspath(args.work or os.path.join(datasets.WORK, "fit", args.name))
    spec_file = {}
    if args.spec:
        with open(args.spec, "rb") as f:
            spec_file = tomllib.load(f)
        unknown = set(spec_file) - set(SPEC_KEYS)
        if unknown:
            raise SystemExit(f"--spec {args.spec}: unknown keys {sorted(unknown)} (known: {', '.join(SPEC_KEYS)})")
    args.spec_values = {k: getattr(args, k) if getattr(args, k) is not None else spec_file.get(k) for k in SPEC_KEYS}
    return args


def shared_relpath(images: str) -> str | None:
    """The images folder relative to ../shared/data, None when it lies elsewhere."""
    rel = os.path.relpath(os.path.abspath(images), os.path.abspath(datasets.SHARED_DATA))
    return None if rel.startswith("..") else rel


def data_folder(images: str) -> str:
    """The ../shared/data set the images come from (its other sets then probe the
    out-of-distribution model), else the folder's own name."""
    rel = shared_relpath(images)
    return rel.split(os.sep)[0] if rel else os.path.basename(os.path.normpath(images))


def relative(path: str) -> str:
    """A path as the stages (run in models/training) and the reports should name it:
    relative to models/training, so no machine path lands in a committed bundle."""
    return os.path.relpath(os.path.abspath(path), TRAINING)


def command_line(argv) -> str:
    return "python -m medsentry_training.fit " + " ".join(
        shlex.quote(relative(a) if os.path.exists(a) else a) for a in argv)


def run_stage(stage, stage_args, log):
    cmd = [sys.executable, "-m", f"{PKG}.{stage}"] + stage_args
    print(f"[stage] {stage} {' '.join(stage_args)}", flush=True)
    t0 = time.time()
    rc = subprocess.call(cmd, cwd=TRAINING)
    log.append({"stage": stage, "seconds": round(time.time() - t0, 1), "rc": rc})
    print(f"[stage-time] {stage}: {time.time() - t0:.1f}s (rc {rc})", flush=True)
    if rc != 0:
        raise SystemExit(f"stage {stage} failed (rc {rc}); rerun the same command to resume")


def read_images(args, spec: graph.InputSpec, labels):
    """images_test.npz (the labelled set) and images_train.npz in the work folder."""
    path = os.path.join(args.work, "images_test.npz")
    if os.path.exists(path):
        z = np.load(path, allow_pickle=False)
        return list(z["labels"])
    data = images.read(args.images, spec.color, spec.height, csv_path=args.csv, labels=labels,
                       group_column=args.group_column)
    if len(data.labels) != spec.classes:
        raise SystemExit(f"{len(data.labels)} classes {data.labels} but output {spec.output!r} has {spec.classes}")
    for s in data.skipped:
        print(f"[skipped] {s['file']}: {s['reason']}", flush=True)
    C.write_json(os.path.join(args.work, "skipped.json"), data.skipped)
    if args.train_images:
        train = images.read(args.train_images, spec.color, spec.height, labels=data.labels, limit=args.train_limit)
        for s in train.skipped:
            print(f"[skipped] training {s['file']}: {s['reason']}", flush=True)
        xt, yt, ft = train.x, train.y, train.files
    else:  # AdvTrain (the same split advcommon.make_split makes) calibrates OOD and campaign
        _, held = datasets.grouped_split(data.y, data.groups, 0.5, C.SPLIT_SEED)
        xt, yt, ft = data.x[held], data.y[held], [data.files[i] for i in held]
    np.savez(os.path.join(args.work, "images_train.npz"), x=xt, y=yt, files=np.array(ft))
    np.savez(path + ".tmp.npz", x=data.x, y=data.y, files=np.array(data.files), groups=data.groups,
             labels=np.array(data.labels))
    os.replace(path + ".tmp.npz", path)
    print(f"[images] {len(data.y)} labelled ({np.bincount(data.y).tolist()} per class), {len(data.skipped)} skipped; "
          f"{len(yt)} for calibration", flush=True)
    return data.labels


def augment(args, original: onnx.ModelProto, spec: graph.InputSpec, bundle_dir: str) -> dict:
    x = np.load(os.path.join(args.work, "images_test.npz"), allow_pickle=False)["x"][:16]
    dim = graph.feature_dim(original, spec, x)
    aug = graph.add_features(original, spec, dim)
    data = aug.SerializeToString()
    n = graph.check_outputs_unchanged(original.SerializeToString(), data, spec, x)
    model, _ = torch_graph.convert(aug)
    diff = torch_graph.check_against_onnxruntime(data, model, spec, x)
    if diff > 1e-4:
        raise SystemExit(f"the PyTorch conversion of the graph differs from ONNX Runtime by {diff:.3g} (> 1e-4): "
                         "white-box attacks through it would not be attacks on the served model")
    with open(os.path.join(bundle_dir, "classifier.onnx"), "wb") as f:
        f.write(data)
    print(f"[graph] features {graph.penultimate(original, spec.output)!r} ({dim}) added as {graph.FEATURES_OUTPUT!r}; "
          f"{n} original output values bit-identical; PyTorch twin within {diff:.2e}", flush=True)
    return {"original_outputs_bit_identical_values": n, "onnx_torch_max_abs_diff": diff, "feature_dim": dim}


def write_base(args, spec: graph.InputSpec, labels, bundle_dir: str, checks: dict):
    """bundle.toml without detectors, reference.json and the clean evaluation in report.json."""
    model, ck = C.load_ckpt(os.path.join(bundle_dir, "classifier.onnx"))
    z = np.load(os.path.join(args.work, "images_test.npz"), allow_pickle=False)
    x, y, files = z["x"], z["y"], list(z["files"])
    bits = args.quantize_bits or None
    served = quantize(x, bits)
    clean = clean_eval(model.net, ck, served, y)
    ref_idx = [int(np.flatnonzero(y == c)[0]) for c in range(len(labels)) if (y == c).any()][:8]
    import onnxruntime as ort
    sess = ort.InferenceSession(os.path.join(bundle_dir, "classifier.onnx"), providers=["CPUExecutionProvider"])
    out, fe = sess.run([spec.output, graph.FEATURES_OUTPUT], {spec.input: graph.to_graph_input(served[ref_idx], spec)})
    logits = np.log(np.maximum(out, torch_graph.MIN_PROBABILITY)) if spec.scores == "probabilities" else out
    e = np.exp(logits - logits.max(1, keepdims=True))
    C.write_json(os.path.join(bundle_dir, "reference.json"), {
        "about": "Written by medsentry_training.fit: model-space pixels ([0,1], before mean/std) of the user's images "
                 "and ONNX Runtime's outputs of the original graph's class output on them as the sidecar reads them "
                 "(rounded to quantize_bits; logits = log of the probabilities for a graph that answers probabilities).",
        "data_root": shared_relpath(args.images), "shape": [spec.channels, spec.height, spec.width],
        "items": [{"file": files[i], "label": int(y[i]), "pixels": fmt32(x[i]),
                   "logits": logits[k].tolist(), "probabilities": (e[k] / e[k].sum()).tolist(),
                   "raw_output": out[k].tolist(), "features_head": fe[k][:8].tolist()} for k, i in enumerate(ref_idx)]})
    inputs = {"channels": spec.channels, "height": spec.height, "width": spec.width, "color": spec.color,
              "resize": "area", "mean": spec.mean, "std": spec.std, "layout": spec.layout,
              "dicom": "modality rescale, then the first VOI window (or VOI LUT; min-max when absent), "
                       "then MONOCHROME1 inversion, to [0, 1]", **({"quantize_bits": bits} if bits else {})}
    doc = {"name": args.name, "version": "1.0.0", "task": args.task or f"{len(labels)} classes: {', '.join(labels)}",
           "labels": list(labels), "max_batch": args.max_batch if spec.dynamic_batch else 1, "data_source": args.data_source,
           "input": inputs,
           "outputs": {"input": spec.input, "logits": spec.output, "features": graph.FEATURES_OUTPUT,
                       "feature_dim": spec.feature_dim, "scores": spec.scores},
           "files": {"classifier.onnx": C.sha256_file(os.path.join(bundle_dir, "classifier.onnx"))},
           "figures": {**{f"served_test_{k}": float(f"{v:.6g}") for k, v in clean.items() if isinstance(v, float)},
                       "onnx_torch_max_abs_diff": float(f"{checks['onnx_torch_max_abs_diff']:.3g}")}}
    header = (f"# Written by models/training (python -m medsentry_training.fit --onnx {os.path.basename(args.onnx)}); "
              "the classifier is the user's graph with its penultimate features added as an output.")
    bundle_toml.write_new(bundle_dir, doc, header)
    C.write_json(os.path.join(bundle_dir, "report.json"), {
        "dataset": args.name, "served_classifier": "the user's ONNX graph (not adversarially trained by this pipeline)",
        "clean_test": {"hardened": clean}, "fit": {**checks, "input_spec": spec.__dict__,
                                                   "onnx_sha256": C.sha256_file(args.onnx)}, "parity": checks["onnx_torch_max_abs_diff"]})
    print(f"[clean] {json.dumps(clean)}", flush=True)


def main(argv=None):
    args = parse(argv)
    t0 = time.time()
    out = os.path.abspath(args.out)
    if os.path.exists(out) and os.listdir(out) and not args.force:
        raise SystemExit(f"--out {args.out} exists and is not empty: pass --force to replace it")
    original = onnx.load(args.onnx)
    spec = graph.inspect(original, **args.spec_values)
    labels = args.labels.split(",") if args.labels else None
    if labels is not None and len(labels) != spec.classes:
        raise SystemExit(f"--labels has {len(labels)} names but output {spec.output!r} has {spec.classes} classes")
    bundle_dir = os.path.join(args.work, "bundle")
    os.makedirs(bundle_dir, exist_ok=True)
    labels = read_images(args, spec, labels)
    fit_path = os.path.join(args.work, "fit.json")
    onnx_sha = C.sha256_file(args.onnx)
    fit = {}
    if os.path.exists(fit_path):
        with open(fit_path) as f:
            fit = json.load(f)
    # Another grid changes the reference outputs and every figure: the base is written again.
    if (fit.get("onnx_sha256") != onnx_sha or fit.get("quantize_bits", 0) != args.quantize_bits
            or not os.path.exists(os.path.join(bundle_dir, "bundle.toml"))):
        checks = augment(args, original, spec, bundle_dir)
        per_half = args.per_half
        accepts = {k: getattr(args, f"accepts_{a}").split(",") for k, a in
                   (("modality", "modality"), ("body_part", "body_part"), ("photometric", "photometric"))
                   if getattr(args, f"accepts_{a}")}
        fit = {"onnx_sha256": onnx_sha, "quantize_bits": args.quantize_bits, "input_spec": spec.__dict__, "checks": checks, "accepts": accepts,
               "command": command_line(sys.argv[1:] if argv is None else argv),
               "spec": {"name": args.name, "folder": data_folder(args.images), "labels": labels,
                        "color": spec.color, "size": spec.height, "source_md": args.data_source,
                        "adv_per_half": per_half, "bundle_dir": bundle_dir}}
        C.write_json(fit_path, fit)
        write_base(args, spec, labels, bundle_dir, checks)
    # A resumed run may change stage flags (e.g. fewer attacks): the report names the command
    # that finished the bundle, and adaptive_fused reads its budgets from here.
    stage_config = {"command": command_line(sys.argv[1:] if argv is None else argv),
                    "adaptive_eps": [int(e) for e in args.adaptive_eps.split(",")]}
    if any(fit.get(k) != v for k, v in stage_config.items()):
        fit.update(stage_config)
        C.write_json(fit_path, fit)
    log = []
    ds = ["--dataset", relative(args.work)]
    run_stage("attacks", ds + ["--only", args.attacks, "--eps", args.eps], log)
    for stage in ("detectors", "squeeze", "bundle_toml"):
        run_stage(stage, ds, log)
    run_stage("evaluate", ds + ["--adaptive-steps", str(args.adaptive_steps)], log)
    run_stage("fused", ds, log)
    run_stage("adaptive_fused", ds + ["--steps", str(args.adaptive_steps)], log)
    for stage in ("ood", "campaign", "report"):
        run_stage(stage, ds, log)
    tmp = out + ".fit-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(bundle_dir, tmp)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    print(f"[done] bundle {args.name} in {out} ({time.time() - t0:.0f}s); stages {json.dumps(log)}", flush=True)


if __name__ == "__main__":
    main()
