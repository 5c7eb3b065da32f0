"""run_all decides what to run from its table of stages (inputs, outputs, command): a
stage runs when an output is missing or older than an input, when forced, or when the
table says it runs every time; checked on temporary files."""
from __future__ import annotations

import argparse
import os

from medsentry_training import run_all as R


def touch(path, mtime, content="x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(content)
    os.utime(path, (mtime, mtime))


def current_contents(c, t):
    """What the detectors and evaluate checks read, as a full run on snapshot "abc" leaves it."""
    import json
    touch(f"{c.paths['adir']}/manifest.json", t, json.dumps({"shas": {"hardened": "abc"}}))
    touch(f"{c.paths['out']}/detector_mahalanobis.json", t + 100, json.dumps({"checkpoint_sha256": "abc", "thresholds_from": "cross-fit"}))
    report = {"adversarial_evaluation": {"served": {"checkpoint_sha256": "abc"}, "limit": None,
                                         "detection": {"thresholds": {}}, "robust_accuracy_advtest": {"clean_advtest_accuracy": 0.8}}}
    return json.dumps(report)


def ctx(tmp_path, **opts) -> R.Ctx:
    args = argparse.Namespace(dataset="chest_xray", limit=None, small_n=None, square_queries=None, out=None,
                              retrain=False, force=False)
    vars(args).update(opts)
    paths = {"out": str(tmp_path / "bundle"), "adir": str(tmp_path / "attacks"), "repo": str(tmp_path),
             "work": str(tmp_path / "work"), "bundle": "b"}
    for kind in ("standard", "hardened", "surrogate"):
        paths[f"ckpt_{kind}"] = str(tmp_path / f"{kind}.pt")
        paths[f"history_{kind}"] = str(tmp_path / f"{kind}.history.json")
    return R.Ctx(args, paths)


def stage(label):
    return next(s for s in R.STAGES if s.label == label)


def test_stale_when_an_output_is_missing_or_older_than_an_input(tmp_path):
    t = 1_700_000_000
    c = ctx(tmp_path)
    det, ev = stage("detectors"), stage("evaluate")
    assert R.decide(det, c, True)[0] and "is missing" in R.decide(det, c, True)[1]
    touch(f"{c.paths['adir']}/hardened__pgd20__linf_4.npz", t)
    for out in det.outputs:
        touch(out.format(**c.paths), t + 100)
    report = current_contents(c, t)
    assert R.decide(det, c, True) == (False, "outputs current")
    touch(f"{c.paths['adir']}/hardened__cw__l2_c1.npz", t + 200)  # a new attack record
    go, why = R.decide(det, c, True)
    assert go and why == f"{c.paths['adir']}/hardened__cw__l2_c1.npz is newer than {c.paths['out']}/detector_mahalanobis.json"
    # evaluate's roc plots are globbed: none yet = missing; then current; then a refit detector
    touch(f"{c.paths['out']}/report.json", t + 300, report)
    touch(f"{c.paths['out']}/REPORT.md", t + 300)
    assert "roc_*.png is missing" in R.decide(ev, c, True)[1]
    touch(f"{c.paths['out']}/roc/roc_fgsm.png", t + 300)
    touch(f"{c.paths['out']}/roc/roc_cw.png", t + 300)
    assert R.decide(ev, c, True) == (False, "outputs current")
    touch(f"{c.paths['out']}/detector_logreg.json", t + 400)
    assert R.decide(ev, c, True)[0]
    # within the slack a restore's order does not count
    touch(f"{c.paths['out']}/detector_logreg.json", t + 300 + R.MTIME_SLACK_S / 2)
    assert R.decide(ev, c, True) == (False, "outputs current")


def test_force_retrain_always_and_the_real_bundle_rule(tmp_path):
    t = 1_700_000_000
    c = ctx(tmp_path)
    train = stage("train hardened")
    touch(c.paths["ckpt_hardened"], t)
    touch(c.paths["history_hardened"], t)
    assert R.decide(train, c, True) == (False, "outputs current")
    assert R.decide(train, ctx(tmp_path, force=True), True) == (False, "outputs current")
    assert R.decide(train, ctx(tmp_path, retrain=True), True) == (True, "--retrain")
    os.remove(c.paths["history_hardened"])
    assert R.decide(train, c, True)[0]
    go, why = R.decide(train, ctx(tmp_path, limit=10, retrain=True), True)  # quick checks never write checkpoints
    assert not go and "--limit" in why
    assert R.decide(stage("squeeze"), c, True)[1].startswith("runs every time")
    for label in ("export", "bundle_toml", "campaign", "fused", "ood", "adaptive_fused", "export_eval"):
        assert not R.decide(stage(label), c, False)[0] and not R.decide(stage(label), ctx(tmp_path, limit=5), True)[0]
    assert R.decide(stage("report"), ctx(tmp_path, limit=5), False)[0]
    assert R.decide(stage("detectors"), ctx(tmp_path, force=True), True) == (True, "--force")


def test_the_table_keeps_the_stage_order_and_commands(tmp_path):
    assert [s.label for s in R.STAGES] == [
        "train standard", "train hardened", "train surrogate", "export", "attacks", "detectors", "squeeze",
        "bundle_toml", "evaluate", "campaign", "fused", "ood", "adaptive_fused", "export_eval", "report"]
    c = ctx(tmp_path, limit=20, small_n=5, force=True)
    assert stage("attacks").argv(c) == ["--dataset", "chest_xray", "--limit", "20", "--small-n", "5", "--force"]
    assert stage("evaluate").argv(c) == ["--dataset", "chest_xray", "--limit", "20", "--out", c.paths["out"]]
    assert stage("report").argv(c) == ["--out", c.paths["out"]]


def test_outputs_newer_than_their_inputs_still_run_when_made_from_something_else(tmp_path):
    """A --limit run writes detectors and report.json into the bundle: by their times they
    look current to the full run that follows; the stages' checks say they are not."""
    import json
    t = 1_700_000_000
    c = ctx(tmp_path)
    ev = stage("evaluate")
    touch(f"{c.paths['adir']}/hardened__pgd20__linf_4.npz", t)
    for f in ("detector_mahalanobis.json", "detector_logreg.json", "detector_logreg_all.json", "classifier.onnx",
              "roc/roc_pgd20.png", "REPORT.md"):
        touch(f"{c.paths['out']}/{f}", t + 10)
    with open(f"{c.paths['adir']}/manifest.json", "w") as f:
        json.dump({"shas": {"hardened": "abc"}}, f)
    report = {"adversarial_evaluation": {"served": {"checkpoint_sha256": "abc"}, "limit": 40,
                                         "detection": {"thresholds": {}}, "robust_accuracy_advtest": {"clean_advtest_accuracy": 0.8}}}
    with open(f"{c.paths['out']}/report.json", "w") as f:
        json.dump(report, f)
    os.utime(f"{c.paths['out']}/report.json", (t + 10, t + 10))
    go, why = R.decide(ev, c, True)
    assert go and "--limit 40" in why, why
    assert R.decide(ev, ctx(tmp_path, limit=40), True) == (False, "outputs current")
    report["adversarial_evaluation"]["served"]["checkpoint_sha256"] = "other"
    with open(f"{c.paths['out']}/report.json", "w") as f:
        json.dump(report, f)
    os.utime(f"{c.paths['out']}/report.json", (t + 10, t + 10))
    assert "another snapshot" in R.decide(ev, ctx(tmp_path, limit=40), True)[1]
