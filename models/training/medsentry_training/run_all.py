"""Driver: the whole offline pipeline for one data set, resumable.

    python -m medsentry_training.run_all --dataset chest_xray [--limit N] [--out DIR] [--retrain] [--force]

Runs the stages of STAGES in order, each a `python -m medsentry_training.STAGE` subprocess
with its wall time logged. The table declares each stage's command, inputs and outputs
(path patterns; globs allowed); a stage runs when it is stale:
  - an output is missing, or the newest input is newer than the oldest output (`stale`;
    by more than MTIME_SLACK_S), or
  - it is forced: --retrain forces the training stages, --force the others (and is passed
    on to the attack stage, which then redoes its files), or
  - it runs every time (`always`, with the reason: it resumes inside, or it is cheap and
    rewrites a section of a file that export starts afresh), or
  - its `check` says outputs that look current by their times were made from something
    else (export: classifier.onnx computes what the hardened checkpoint does; detectors and
    evaluate: made from the attack stage's snapshot, evaluate at this --limit).
Stages marked `real_bundle_only` write models/<bundle>/ (bundle.toml, fixtures) and are
not run when --out points elsewhere or with --limit (quick checks must not touch the real
bundle). With --limit, missing checkpoints are not trained (a quick check must not write a
real checkpoint): the dependent attacks are skipped with a warning instead.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

from . import datasets
from . import advcommon as C

PKG = "medsentry_training"
# Files a copy or a git checkout writes within this many seconds of each other count as
# written at the same time (such a restore writes a checkpoint and the bundle's files in
# any order, milliseconds apart); a stage runs for much longer than this.
MTIME_SLACK_S = 2.0


@dataclass(frozen=True)
class Ctx:
    """What a stage's command and paths are made from."""
    args: argparse.Namespace
    paths: dict  # placeholders of the path patterns: out, adir, repo, bundle, ckpt_KIND, history_KIND

    @property
    def ds(self) -> list[str]:
        return ["--dataset", self.args.dataset]

    @property
    def lim(self) -> list[str]:
        return ["--limit", str(self.args.limit)] if self.args.limit else []

    @property
    def outs(self) -> list[str]:
        return ["--out", self.paths["out"]]


@dataclass(frozen=True)
class Stage:
    label: str  # as the log names it
    module: str  # python -m medsentry_training.<module>
    argv: Callable[[Ctx], list[str]]
    inputs: tuple[str, ...] = ()  # path patterns: "{out}/detector_*.json"
    outputs: tuple[str, ...] = ()
    always: str = ""  # why it runs every time, if it does
    real_bundle_only: bool = False
    forced_by: str = "force"  # the run_all option that forces it
    make_under_limit: bool = True  # False: with --limit a missing output is not made
    needs: tuple[str, ...] = ()  # paths that must exist before it (else run_all stops)
    # Beyond file times: why outputs that exist and are newer than the inputs are still not
    # current (made from another snapshot, or by a --limit run), or None.
    check: Callable[[Ctx], str | None] | None = None


def _json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _snapshot_sha(c: Ctx) -> str | None:
    """The sha256 of the served snapshot the attack stage last used (its manifest)."""
    return _json(os.path.join(c.paths["adir"], "manifest.json")).get("shas", {}).get("hardened")


def _export_check(c: Ctx) -> str | None:
    """classifier.onnx must compute what the live hardened checkpoint computes (16 test images)."""
    import numpy as np
    import onnxruntime as ort
    spec = datasets.SPECS[c.args.dataset]
    model, _ = C.load_ckpt(c.paths["ckpt_hardened"])
    x, _, _ = datasets.load_split(spec, "test")
    x = x[:16]
    sess = ort.InferenceSession(os.path.join(c.paths["out"], "classifier.onnx"), providers=["CPUExecutionProvider"])
    norm = ((x - model.mean.numpy()) / model.std.numpy()).astype(np.float32)
    lo, fe = sess.run(["logits", "features"], {"input": norm})
    tl, tf = C.forward_batches(model, x)
    diff = max(float(np.abs(lo - tl).max()), float(np.abs(fe - tf).max()))
    return None if diff <= 1e-4 else f"classifier.onnx differs from the hardened checkpoint by {diff:.2g}"


def _detectors_check(c: Ctx) -> str | None:
    """Fitted on the attack stage's snapshot, with cross-fitted thresholds."""
    det = _json(os.path.join(c.paths["out"], "detector_mahalanobis.json"))
    if det.get("checkpoint_sha256") != _snapshot_sha(c):
        return "detector_mahalanobis.json was fitted on another snapshot"
    return None if "thresholds_from" in det else "detector_mahalanobis.json predates cross-fitted thresholds"


def _evaluate_check(c: Ctx) -> str | None:
    """report.json evaluated this snapshot, at this --limit, with the detectors' current thresholds."""
    ev = _json(os.path.join(c.paths["out"], "report.json")).get("adversarial_evaluation", {})
    if ev.get("served", {}).get("checkpoint_sha256") != _snapshot_sha(c):
        return "report.json evaluated another snapshot"
    if ev.get("limit") != c.args.limit:
        return f"report.json was made with --limit {ev.get('limit')}"
    det = ev.get("detection", {}).get("thresholds", {})
    if {n: _json(os.path.join(c.paths["out"], f"detector_{n}.json")).get("thresholds") for n in det} != det:
        return "the detectors' thresholds changed since report.json"
    return None if "clean_advtest_accuracy" in ev.get("robust_accuracy_advtest", {}) else "report.json lacks clean AdvTest accuracy"


def _train(kind: str) -> Stage:
    return Stage(f"train {kind}", "train", lambda c: c.ds + ["--kind", kind], (),
                 # finished = the selected checkpoint and the history train.py writes at its end
                 # (an interrupted run leaves only the checkpoint; train resumes it)
                 (f"{{ckpt_{kind}}}", f"{{history_{kind}}}"), forced_by="retrain", make_under_limit=False)


STAGES = (
    _train("standard"), _train("hardened"), _train("surrogate"),
    Stage("export", "export", lambda c: c.ds + ["--classifier", "hardened"],
          ("{ckpt_hardened}",),
          ("{out}/classifier.onnx", "{out}/reference.json", "{out}/bundle.toml", "{out}/report.json"),
          real_bundle_only=True, needs=("{ckpt_standard}", "{ckpt_hardened}"), check=_export_check),
    Stage("attacks", "attacks",
          lambda c: c.ds + c.lim + (["--small-n", str(c.args.small_n)] if c.args.small_n else []) +
          (["--square-queries", str(c.args.square_queries)] if c.args.square_queries else []) +
          (["--force"] if c.args.force else []),
          ("{ckpt_hardened}", "{ckpt_standard}", "{ckpt_surrogate}"),
          ("{adir}/manifest.json", "{adir}/split.json", "{adir}/*.npz"),
          always="resumes per file (redoes the files made for another checkpoint or split)"),
    Stage("detectors", "detectors", lambda c: c.ds + c.lim + c.outs,
          ("{adir}/*.npz",),
          ("{out}/detector_mahalanobis.json", "{out}/advtest_sample.json", "{out}/adv_split.json",
           "{out}/detectors_fit_log.json"), check=_detectors_check),
    Stage("squeeze", "squeeze", lambda c: c.ds + c.lim + c.outs,
          ("{adir}/*.npz", "{out}/advtest_sample.json"),
          ("{out}/detector_squeeze.json", "{out}/report.json", "{out}/advtest_sample.json"),
          always="about 20 s; adds its scores to the advtest_sample.json detectors rewrites"),
    Stage("bundle_toml", "bundle_toml", lambda c: c.ds,
          ("{out}/detector_*.json",), ("{out}/bundle.toml",), real_bundle_only=True,
          always="export rewrites bundle.toml without detectors"),
    # classifier.onnx: export starts report.json afresh, so evaluate follows it.
    Stage("evaluate", "evaluate", lambda c: c.ds + c.lim + c.outs,
          ("{adir}/*.npz", "{out}/detector_mahalanobis.json", "{out}/detector_logreg.json",
           "{out}/detector_logreg_all.json", "{out}/classifier.onnx"),
          ("{out}/roc/roc_*.png", "{out}/report.json", "{out}/REPORT.md"), check=_evaluate_check),
    Stage("campaign", "campaign", lambda c: c.ds,
          ("{adir}/*.npz",), ("{out}/bundle.toml", "{out}/report.json", "{repo}/tests/fixtures/campaign/{bundle}__*.npy"),
          real_bundle_only=True, always="about 40 s; [campaign] in bundle.toml, which export starts afresh"),
    # fused reads the UAP fixtures campaign writes.
    Stage("fused", "fused", lambda c: c.ds,
          ("{out}/classifier.onnx", "{out}/adv_split.json", "{out}/detector_*.json",
           "{repo}/tests/fixtures/campaign/{bundle}__*.npy"),
          ("{out}/detector_residual.json", "{out}/detector_fused.json", "{out}/advtest_sample.json",
           "{out}/bundle.toml", "{out}/report.json"),
          real_bundle_only=True, always="the verdict's detector; [[detectors]], which export starts afresh"),
    Stage("ood", "ood", lambda c: c.ds, ("{out}/classifier.onnx", "{out}/adv_split.json"),
          ("{out}/ood.json", "{out}/bundle.toml", "{out}/report.json", "{repo}/tests/fixtures/ood/{bundle}.json"),
          real_bundle_only=True, always="[ood] and [accepts] in bundle.toml, which export starts afresh"),
    Stage("adaptive_fused", "adaptive_fused", lambda c: c.ds,
          ("{out}/detector_*.json", "{out}/classifier.onnx"), ("{out}/report.json",),
          real_bundle_only=True, always="its only output is a section of report.json"),
    Stage("export_eval", "export_eval", lambda c: c.ds,
          ("{adir}/*.npz", "{out}/report.json", "{out}/detector_*.json"),
          ("{work}/eval/{bundle}/manifest.json", "{repo}/tests/fixtures/eval/{bundle}.json"),
          real_bundle_only=True, always="13 s"),
    Stage("report", "report", lambda c: ["--out", c.paths["out"]], ("{out}/report.json",), ("{out}/REPORT.md",),
          always="renders REPORT.md from report.json"),
)


def expand(patterns, paths: dict) -> list[tuple[str, list[str]]]:
    """(pattern with its placeholders filled, the files it names) for each pattern."""
    out = []
    for p in patterns:
        full = p.format(**paths)
        out.append((full, sorted(glob.glob(full)) if glob.has_magic(full) else [full] * os.path.exists(full)))
    return out


def stale(inputs, outputs) -> str | None:
    """Why a stage whose (pattern, files) inputs and outputs are these must run: an output
    pattern names no file, or the newest input is newer than the oldest output by more than
    MTIME_SLACK_S. None when its outputs are current. Inputs that name no file are not
    counted (an optional input; a stage stops by itself when a required one is absent)."""
    for pattern, files in outputs:
        if not files:
            return f"{pattern} is missing"
    ins = [f for _, files in inputs for f in files]
    outs = [f for _, files in outputs for f in files]
    if ins and outs:
        newest = max(ins, key=os.path.getmtime)
        oldest = min(outs, key=os.path.getmtime)
        if os.path.getmtime(newest) > os.path.getmtime(oldest) + MTIME_SLACK_S:
            return f"{newest} is newer than {oldest}"
    return None


def decide(stage: Stage, ctx: Ctx, real_bundle: bool) -> tuple[bool, str]:
    """(run it?, why) for one stage of the table."""
    if stage.real_bundle_only and (not real_bundle or ctx.args.limit):
        return False, "writes the real bundle; not run for --out elsewhere / --limit"
    why = stale(expand(stage.inputs, ctx.paths), expand(stage.outputs, ctx.paths))
    if why and ctx.args.limit and not stage.make_under_limit:
        return False, f"{why}, but --limit runs never write it"
    if getattr(ctx.args, stage.forced_by):
        return True, f"--{stage.forced_by}"
    if stage.always:
        return True, f"runs every time: {stage.always}"
    if not why and stage.check:
        why = stage.check(ctx)
    return (True, why) if why else (False, "outputs current")


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


def context(args) -> Ctx:
    spec = datasets.SPECS[args.dataset]
    paths = {"out": os.path.abspath(args.out) if args.out else C.default_bundle_dir(spec),
             "adir": C.attack_dir(spec, args.limit), "repo": datasets.REPO, "work": datasets.WORK, "bundle": spec.name}
    for kind in ("standard", "hardened", "surrogate"):
        paths[f"ckpt_{kind}"] = C.ckpt_path(spec, kind)
        paths[f"history_{kind}"] = C.ckpt_path(spec, kind).replace(".pt", ".history.json")
    return Ctx(args, paths)


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
    ctx = context(args)
    spec = datasets.SPECS[args.dataset]
    real_bundle = ctx.paths["out"] == os.path.abspath(C.default_bundle_dir(spec))
    log, t0 = [], time.time()
    for stage in STAGES:
        missing = [p for p, files in expand(stage.needs, ctx.paths) if not files]
        if missing:
            raise SystemExit(f"{stage.label} needs {', '.join(missing)}")
        go, why = decide(stage, ctx, real_bundle)
        if not go:
            print(f"[skip] {stage.label}: {why}", flush=True)
            continue
        print(f"[run] {stage.label}: {why}", flush=True)
        run(stage.module, stage.argv(ctx), log)
    print(f"[done] pipeline {time.time() - t0:.0f}s; stages {json.dumps(log)}", flush=True)
    C.write_json(os.path.join(ctx.paths["adir"], "run_all_log.json"),
                 {"stages": log, "total_seconds": round(time.time() - t0, 1)})


if __name__ == "__main__":
    main()
