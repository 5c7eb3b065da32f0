"""The bundle contract's detectors (models/detector_kinds.toml, contract.py): what
bundle_toml registers, what the committed bundles list, and the names advtest_sample.json
scores are written under (sample.py, its one writer).
"""
from __future__ import annotations

import glob
import json
import os
import tomllib

import numpy as np

from medsentry_training import bundle_toml, contract, datasets, sample


def rows(dets) -> list[tuple[str, str, str]]:
    return [(d["name"], d["kind"], d["file"]) if isinstance(d, dict) else (d.name, d.kind, d.file) for d in dets]


def registered(tmp_path, drop=()) -> list[dict]:
    (tmp_path / "bundle.toml").write_text('# test bundle\nname = "t"\n\n[files]\n"classifier.onnx" = "00"\n')
    for d in contract.detectors():
        if d.name not in drop:
            (tmp_path / d.file).write_text(json.dumps({"thresholds": {"fpr_0.01": 0.9, "fpr_0.05": 0.5}}))
    bundle_toml.register_detectors(str(tmp_path))
    with open(tmp_path / "bundle.toml", "rb") as f:
        return tomllib.load(f)["detectors"]


def test_the_contract_is_what_bundle_toml_registers(tmp_path):
    assert rows(registered(tmp_path)) == rows(contract.detectors())
    assert [d.key for d in contract.detectors()] == ["mahalanobis", "logreg", "squeeze", "residual", "fused"]


def test_optional_detectors_are_left_out_when_their_file_is_absent(tmp_path):
    optional = [d.name for d in contract.detectors() if d.optional]
    assert optional, "the contract marks the later stages' detectors optional"
    assert rows(registered(tmp_path, drop=optional)) == rows(d for d in contract.detectors() if not d.optional)


def test_every_committed_bundle_lists_contract_detectors_in_the_contracts_order():
    paths = sorted(glob.glob(os.path.join(datasets.REPO, "models", "*", "bundle.toml")))
    assert paths
    order = rows(contract.detectors())
    for path in paths:
        with open(path, "rb") as f:
            listed = rows(tomllib.load(f).get("detectors", []))
        assert listed == [r for r in order if r in listed], f"{path}: {listed}"
        required = [r for r, d in zip(order, contract.detectors()) if not d.optional]
        assert set(required) <= set(listed), f"{path} lacks a required detector"


def test_sample_scores_are_written_under_the_contracts_names(tmp_path):
    assert contract.name_of("logistic") == "learned-logistic"
    assert contract.name_of("feature_squeezing") == "feature-squeezing"
    assert contract.name_of("residual_statistics") == "residual-statistics"
    keys = {"mahalanobis": 1.0, "logreg": 2.0, "logreg_all": 3.0, "squeeze": 4.0, "residual": 5.0, "fused": 6.0}
    x = np.arange(2 * 1 * 2 * 2, dtype=np.float32).reshape(2, 1, 2, 2) / 10
    items = [sample.item("clean", "none", "none", i, f"f{i}.png", 0, x[i], [0.1, 0.2], [1.0], keys) for i in range(2)]
    assert list(items[0]["scores"]) == ["mahalanobis", "learned-logistic", "logreg_all", "feature-squeezing",
                                        "residual-statistics", "fused"]
    sample.create(str(tmp_path), x.shape[1:], items)
    s = sample.Sample(str(tmp_path))
    assert np.array_equal(s.pixels(), x)
    s.add_scores("fused", [0.25, 0.75])
    s.set_field("cascade_skip", [True, False])
    s.append(dict(items[0], kind="cw"))
    s.write()
    s = sample.Sample(str(tmp_path))
    assert [it["kind"] for it in s.items] == ["clean", "clean", "cw"] and s.items[1]["scores"]["fused"] == 0.75
    s.drop("cw")
    assert len(s.items) == 2 and s.items[0]["cascade_skip"] is True


def test_committed_samples_score_under_the_names_the_pipeline_writes():
    """Every committed advtest_sample.json scores each item under the contract's names (of
    the detectors whose files the bundle has) and the reference "logreg_all", nothing else."""
    paths = sorted(glob.glob(os.path.join(datasets.REPO, "models", "*", sample.FILE)) +
                   glob.glob(os.path.join(datasets.REPO, "tests", "fixtures", "fitted", "*", sample.FILE)))
    assert paths
    for path in paths:
        bundle = os.path.dirname(path)
        want = {d.name for d in contract.detectors() if os.path.exists(os.path.join(bundle, d.file))}
        want |= {"logreg_all"} if os.path.exists(os.path.join(bundle, "detector_logreg_all.json")) else set()
        with open(path) as f:
            items = json.load(f)["items"]
        for it in items:
            assert set(it["scores"]) == want, f"{path}: {it['kind']} {sorted(it['scores'])}"
