"""Writes tests/fixtures/fitted/: two bundles fitted by `fit` from the same small CNN
(tiny_models.py) exported in two layouts, for the sidecar's tests (tests/fitted_bundle.rs).

    cd models/training && .venv/bin/python tests/make_fit_fixtures.py

The labelled images are 24 per class of the official chest X-ray test set, named in a CSV
with a patient column (so the split is by patient); nothing of the data set is copied.
ROC figures are dropped from the fixtures (they are not part of the bundle contract).
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import tiny_models as T  # noqa: E402
from medsentry_training import datasets  # noqa: E402

OUT = os.path.join(datasets.REPO, "tests", "fixtures", "fitted")
PER_CLASS = 24
FIT_ARGS = ["--attacks", "fgsm,pgd20", "--eps", "2,8", "--adaptive-steps", "5"]


def patient(name: str) -> str:
    """person123_bacteria_45.jpeg -> person123; IM-0001-0001.jpeg -> IM-0001."""
    return name.split("_")[0] if name.startswith("person") else "-".join(name.split("-")[:2])


def write_csv(path: str, per_class: int) -> str:
    root = os.path.join(datasets.SHARED_DATA, "chest_xray_kermany", "images", "test")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "patient"])
        for p, c in T.chest_files(per_class, "test"):
            w.writerow([os.path.relpath(p, root), c, patient(os.path.basename(p))])
    return root


def fit(onnx_path: str, csv_path: str, root: str, out: str, work: str, extra: list) -> None:
    cmd = [sys.executable, "-m", "medsentry_training.fit", "--onnx", onnx_path, "--images", root, "--csv", csv_path,
           "--group-column", "patient", "--labels", "NORMAL,PNEUMONIA", "--out", out, "--work", work, "--force",
           "--accepts-modality", "CR,DX", "--accepts-body-part", "CHEST", *FIT_ARGS, *extra]
    subprocess.run(cmd, check=True, cwd=os.path.dirname(HERE))


def scrub(out: str, prefix: str) -> None:
    """The reports name the fit's work directory in the commands they record: keep its last
    part only (work-<name>), not this machine's temporary directory. Neither file is hashed in
    bundle.toml."""
    for name in ("report.json", "REPORT.md"):
        path = os.path.join(out, name)
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace(prefix, ""))


def main():
    tmp = tempfile.mkdtemp(prefix="fit-fixtures-")
    net = T.train_tiny()
    csv_path = os.path.join(tmp, "labels.csv")
    root = write_csv(csv_path, PER_CLASS)
    for layout, extra in (("nchw_logits", ["--mean", str(T.MEAN), "--std", str(T.STD)]),
                          ("nhwc_softmax", ["--mean", "0.5", "--std", "0.5"])):
        onnx_path = os.path.join(tmp, f"{layout}.onnx")
        T.export(net, onnx_path, layout)
        name = f"tiny-{layout.replace('_', '-')}"
        out = os.path.join(OUT, name)
        fit(onnx_path, csv_path, root, out, os.path.join(tmp, f"work-{name}"), ["--name", name] + extra)
        shutil.rmtree(os.path.join(out, "roc"), ignore_errors=True)
        scrub(out, tmp + os.sep)
    shutil.rmtree(tmp)
    print(f"[done] fixtures in {os.path.relpath(OUT, datasets.REPO)}")


if __name__ == "__main__":
    main()
