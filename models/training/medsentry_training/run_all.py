"""Driver: the whole offline pipeline for one data set, resumable.

    python -m medsentry_training.run_all --dataset chest_xray [--limit N] [--out DIR] [--retrain]

Stages (each a `python -m` subprocess, its wall time logged; each skipped when its outputs
exist and are current):
  1. train standard     python -m medsentry_training.train --kind standard   (skip: checkpoint exists)
  2. train hardened     python -m medsentry_training.train --kind hardened   (skip: checkpoint exists)
  3. train surrogate    python -m medsentry_training.train --kind surrogate  (skip: checkpoint exists)
  4. export             python -m medsentry_training.export --dataset D --classifier hardened
                        (skip: classifier.onnx in the bundle reproduces the live hardened
                        checkpoint within 1e-4). Export always writes models/<bundle>/, so it
                        is NOT run when --out points elsewhere or with --limit (quick checks
                        must not touch the real bundle).
  5. attacks            python -m medsentry_training.attacks [--limit N]  (per-file resume; redone
                        when the live hardened checkpoint differs from the attacked snapshot)
  6. detectors          python -m medsentry_training.detectors [--limit N] --out DIR
                        (skip: detector files exist, were fitted on the current snapshot and
                        carry cross-fitted thresholds)
     squeeze            python -m medsentry_training.squeeze [--limit N] --out DIR (feature
                        squeezing thresholds + evaluation, ~20 s: always run)
     bundle_toml        python -m medsentry_training.bundle_toml (real bundle only: lists the
                        served detectors, thresholds and sha256s in bundle.toml)
  7. evaluate           python -m medsentry_training.evaluate [--limit N] --out DIR
                        (skip: report.json has an adversarial_evaluation for the current snapshot
                        and the detector thresholds now in --out)
  8. campaign           python -m medsentry_training.campaign (real bundle only: [campaign] in
                        bundle.toml, UAP fixtures for the Rust tests; ~40 s, always run)
     fused, ood         python -m medsentry_training.fused / .ood (real bundle only: the fused detector
                        that sets the verdict, the out-of-distribution model)
     adaptive_fused     python -m medsentry_training.adaptive_fused (adaptive attacks on the verdict)
     export_eval        python -m medsentry_training.export_eval (AdvTest for `medsentry eval`)
     report             python -m medsentry_training.report --out DIR (REPORT.md from report.json)
--retrain forces stages 1-3; --force forces stages 4-7. With --limit, missing checkpoints
are not trained (a quick check must not write a real checkpoint): the dependent attacks are
skipped with a warning instead.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from . import datasets
from . import advcommon as C

PKG = "medsentry_training"


def run(stage, args, log):
    cmd = [sys.executable, "-m", f"{PKG}.{stage}"] + args
    print(f"[stage] {stage}: {' '.join(['python', '-m', f'{PKG}.{stage}'] + args)}", flush=True)
    t0 = time.time()
    rc = subprocess.call(cmd, cwd=os.path.join(datasets.REPO, "models", "training"))
    dt = time.time() - t0
    log.append({"stage": stage, "args": args, "seconds": round(dt, 1), "rc": rc})
    print(f"[stage-time] {stage} {' '.join(args)}: {dt:.1f}s (rc {rc})", flush=True)
    if rc != 0:
        raise SystemExit(f"stage {stage} failed (rc {rc})")


def export_current(spec) -> bool:
    onnx_path = os.path.join(C.default_bundle_dir(spec), "classifier.onnx")
    if not os.path.exists(onnx_path):
        return False
    import numpy as np
    import onnxruntime as ort
    model, _ = C.load_ckpt(C.ckpt_path(spec, "hardened"))
    x, _, _ = datasets.load_split(spec, "test")
    x = x[:16]
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    norm = ((x - model.mean.numpy()) / model.std.numpy()).astype(np.float32)
    lo, fe = sess.run(["logits", "features"], {"input": norm})
    tl, tf = C.forward_batches(model, x)
    return max(float(np.abs(lo - tl).max()), float(np.abs(fe - tf).max())) <= 1e-4


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="chest_xray", choices=sorted(datasets.SPECS))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--small-n", type=int, default=None)
    ap.add_argument("--square-queries", type=int, default=None, help="passed to attacks (quick checks)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    spec = datasets.SPECS[args.dataset]
    out_dir = os.path.abspath(args.out) if args.out else C.default_bundle_dir(spec)
    real_bundle = os.path.abspath(out_dir) == os.path.abspath(C.default_bundle_dir(spec))
    lim = ["--limit", str(args.limit)] if args.limit else []
    ds = ["--dataset", args.dataset]
    log, t0 = [], time.time()

    for kind in ["standard", "hardened", "surrogate"]:
        # Finished = the selected checkpoint and the history train.py writes at its end
        # (an interrupted run leaves only the checkpoint; train resumes it).
        history = C.ckpt_path(spec, kind).replace(".pt", ".history.json")
        have = os.path.exists(C.ckpt_path(spec, kind)) and os.path.exists(history)
        if have and not args.retrain:
            print(f"[skip] train {kind}: checkpoint exists", flush=True)
        elif args.limit and not have:
            print(f"[skip] train {kind}: missing, but --limit runs never write real checkpoints", flush=True)
        else:
            run("train", ds + ["--kind", kind], log)
    if not os.path.exists(C.ckpt_path(spec, "hardened")) or not os.path.exists(C.ckpt_path(spec, "standard")):
        raise SystemExit("standard and hardened checkpoints are needed")

    if not real_bundle or args.limit:
        print("[skip] export: writes the real bundle; not run for --out elsewhere / --limit", flush=True)
    elif export_current(spec) and not args.force:
        print("[skip] export: classifier.onnx matches the live hardened checkpoint", flush=True)
    else:
        run("export", ds + ["--classifier", "hardened"], log)

    adir = C.attack_dir(spec, args.limit)
    # attacks: per-file resume inside the stage (it re-snapshots and redoes stale files)
    run("attacks", ds + lim + (["--small-n", str(args.small_n)] if args.small_n else []) +
        (["--square-queries", str(args.square_queries)] if args.square_queries else []) +
        (["--force"] if args.force else []), log)
    sha = C.load_manifest(adir)["shas"]["hardened"]

    outs = ["--out", out_dir]
    def detector(name):
        try:
            with open(os.path.join(out_dir, f"detector_{name}.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}
    # current = fitted on this snapshot by this version of the stage (cross-fitted thresholds)
    if detector("mahalanobis").get("checkpoint_sha256") == sha and "thresholds_from" in detector("mahalanobis") and \
            os.path.exists(os.path.join(out_dir, "advtest_sample.json")) and not args.force:
        print("[skip] detectors: present for the current snapshot", flush=True)
    else:
        run("detectors", ds + lim + outs, log)
    run("squeeze", ds + lim + outs, log)
    if real_bundle and not args.limit:
        # export rewrites bundle.toml without detectors: (re)register them every time.
        run("bundle_toml", ds, log)
    rep = os.path.join(out_dir, "report.json")
    done = False
    if os.path.exists(rep) and os.path.exists(os.path.join(out_dir, "REPORT.md")):
        with open(rep) as f:
            ev = json.load(f).get("adversarial_evaluation", {})
        thresholds = {n: detector(n).get("thresholds") for n in ev.get("detection", {}).get("thresholds", {})}
        done = ev.get("served", {}).get("checkpoint_sha256") == sha and ev.get("limit") == args.limit and \
            thresholds == ev.get("detection", {}).get("thresholds") and "clean_advtest_accuracy" in \
            ev.get("robust_accuracy_advtest", {})
    if done and not args.force:
        print("[skip] evaluate: report.json is current", flush=True)
    else:
        run("evaluate", ds + lim + outs, log)
    if real_bundle and not args.limit:
        run("campaign", ds, log)
        # The verdict's detector, the out-of-distribution model and the adaptive attacks on the
        # verdict (fused reads the UAP fixtures campaign writes).
        run("fused", ds, log)
        run("ood", ds, log)
        run("adaptive_fused", ds, log)
        run("export_eval", ds, log)
    run("report", ["--out", out_dir], log)
    print(f"[done] pipeline {time.time() - t0:.0f}s; stages {json.dumps(log)}", flush=True)
    C.write_json(os.path.join(adir, "run_all_log.json"), {"stages": log, "total_seconds": round(time.time() - t0, 1)})


if __name__ == "__main__":
    main()
