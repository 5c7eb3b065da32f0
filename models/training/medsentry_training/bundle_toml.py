"""bundle.toml: the one writer of the file (export and fit write its first version with
write_new; detector registration, campaign and ood rewrite their sections).

    python -m medsentry_training.bundle_toml --dataset chest_xray

registers the detectors fitted by `detectors` in models/NAME/bundle.toml: one
[[detectors]] entry per served detector of the contract (models/detector_kinds.toml,
contract.py: name, kind, file, in its order; an optional one only when its file exists)
with its threshold at 1 % FPR (verdict ADVERSARIAL) and 5 % FPR (SUSPICIOUS), both
calibrated on clean AdvTrain, and the sha256 of its file in [files] (the sidecar refuses
files that do not match).
"""
from __future__ import annotations

import argparse
import json
import os
import tomllib

from . import contract, datasets
from .advcommon import sha256_file

FILE = "bundle.toml"


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(float(v)) if isinstance(v, float) else str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v)} to TOML")


def dumps(doc: dict, header: str = "") -> str:
    """TOML for a document of scalars, lists, tables and arrays of tables (one level)."""
    lines = [header.rstrip()] if header else []
    scalars = {k: v for k, v in doc.items() if not isinstance(v, dict) and not (isinstance(v, list) and v and isinstance(v[0], dict))}
    lines += [f"{k} = {_value(v)}" for k, v in scalars.items()]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines += ["", f"[{k}]"] + [f"{json.dumps(kk) if not kk.isidentifier() else kk} = {_value(vv)}" for kk, vv in v.items()]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                lines += ["", f"[[{k}]]"] + [f"{kk} = {_value(vv)}" for kk, vv in item.items()]
    return "\n".join(lines) + "\n"


def write(path: str, doc: dict, header: str):
    with open(path, "w") as f:
        f.write(dumps(doc, header))


def write_new(bundle_dir: str, doc: dict, header: str):
    """A bundle's first bundle.toml (export, fit): no detectors yet."""
    write(os.path.join(bundle_dir, FILE), doc, header)


def register_detectors(bundle_dir: str):
    path, doc, header = _load(bundle_dir)
    detectors = []
    for det in contract.detectors():
        p = os.path.join(bundle_dir, det.file)
        if not os.path.exists(p) and det.optional:
            continue
        if not os.path.exists(p):
            raise SystemExit(f"{p} is missing: run `python -m medsentry_training.detectors` first")
        with open(p) as f:
            d = json.load(f)
        thr = d["thresholds"]
        detectors.append({"name": det.name, "kind": det.kind, "file": det.file,
                          "threshold": thr["fpr_0.01"], "calibrated_fpr": 0.01,
                          "suspicious_threshold": thr["fpr_0.05"], "suspicious_fpr": 0.05})
        doc["files"][det.file] = sha256_file(p)
    doc["detectors"] = detectors
    _rewrite(path, doc, header)
    print(f"[done] {len(detectors)} detectors registered in {os.path.relpath(path, datasets.REPO)}")


def _load(bundle_dir: str):
    path = os.path.join(bundle_dir, FILE)
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    with open(path) as f:
        header = "".join(line for line in f.readlines()[:1] if line.startswith("#"))
    return path, doc, header


def quantize_bits(bundle_dir: str) -> int | None:
    """The bundle's `[input] quantize_bits` (the grid the sidecar rounds inputs to), or None."""
    return _load(bundle_dir)[1]["input"].get("quantize_bits")


def _rewrite(path: str, doc: dict, header: str):
    # Keep the table order of export's file: [campaign] and detectors before [files] and [figures].
    tail = ("accepts", "ood", "campaign", "detectors", "files", "figures")
    ordered = {k: v for k, v in doc.items() if k not in tail}
    ordered.update({k: doc[k] for k in tail if k in doc})
    ordered.setdefault("figures", {})
    write(path, ordered, header)


def set_campaign(bundle_dir: str, section: dict):
    """[campaign]: the campaign monitor's windows, thresholds and reference class mix."""
    path, doc, header = _load(bundle_dir)
    doc["campaign"] = section
    _rewrite(path, doc, header)
    print(f"[done] [campaign] written to {os.path.relpath(path, datasets.REPO)}")


def set_ood(bundle_dir: str, section: dict, accepts: dict):
    """[ood] (the out-of-distribution model's file, threshold and calibrated rate, with its
    sha256 in [files]) and [accepts] (the DICOM attribute values the bundle takes)."""
    path, doc, header = _load(bundle_dir)
    doc["ood"] = section
    doc["accepts"] = accepts
    doc.setdefault("files", {})[section["file"]] = sha256_file(os.path.join(bundle_dir, section["file"]))
    _rewrite(path, doc, header)
    print(f"[done] [ood] and [accepts] written to {os.path.relpath(path, datasets.REPO)}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    datasets.add_dataset_arg(ap)
    args = ap.parse_args(argv)
    spec = datasets.resolve(args.dataset)
    register_detectors(spec.bundle_dir or os.path.join(datasets.REPO, "models", spec.name))


if __name__ == "__main__":
    main()
