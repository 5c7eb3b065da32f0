"""The user's labelled images, read into the model's [0, 1] input space.

Two layouts:
  DIR/<class>/<file>      one sub-folder per class (class order: --labels, else sorted names)
  --csv FILE              columns `file` (relative to the CSV's folder or --images) and
                          `label` (a class name or index), and optionally a patient/study
                          column (--group-column) so that splits keep a patient on one side.
PNG and JPEG go through preprocess.py (the contract the sidecar shares); DICOM through
dicom_reference.render (the sidecar's windowing), repeated to three planes for RGB models.
A file that cannot be read is skipped and listed with its reason, never silently dropped.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

import numpy as np

from .. import preprocess
from .graph import GraphError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}


@dataclass
class Labelled:
    """What `read` found: model-space images, labels, groups and what was skipped."""
    x: np.ndarray            # float32 (N, C, S, S) in [0, 1]
    y: np.ndarray            # int64 (N,)
    files: list              # paths relative to the root
    groups: np.ndarray       # patient/study id per image (the file itself when none given)
    labels: list             # class names in index order
    skipped: list = field(default_factory=list)  # {"file", "reason"}


def _is_dicom(path: str) -> bool:
    if path.lower().endswith((".dcm", ".dicom")):
        return True
    with open(path, "rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM"


def load(path: str, color: str, size: int) -> np.ndarray:
    """One file -> float32 (C, size, size) in [0, 1]; raises with the reason."""
    if _is_dicom(path):
        try:
            import pydicom
            from ..dicom_reference import render
        except ImportError:
            raise ValueError("DICOM needs pydicom: pip install -r requirements-dicom.txt") from None
        planes = render(pydicom.dcmread(path))
        rgb01 = np.repeat(planes, 3, axis=0) if planes.shape[0] == 1 else planes
        return preprocess.to_model_space(rgb01, color, size, size)
    return preprocess.load_image(path, color, size, size)


def _entries_from_folders(root: str, labels: list | None):
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if labels is None:
        labels = classes
    missing = [c for c in classes if c not in labels]
    if missing:
        raise GraphError(f"sub-folders {missing} of {root} are not among --labels {labels}")
    entries = []
    for c in classes:
        for dirpath, _, names in os.walk(os.path.join(root, c)):
            for n in sorted(names):
                if os.path.splitext(n)[1].lower() in EXTENSIONS or not os.path.splitext(n)[1]:
                    rel = os.path.relpath(os.path.join(dirpath, n), root)
                    entries.append((rel, labels.index(c), None))
    return labels, entries


def _entries_from_csv(csv_path: str, root: str, labels: list | None, group_column: str | None):
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "file" not in rows[0] or "label" not in rows[0]:
        raise GraphError(f"{csv_path} needs the columns `file` and `label`")
    if group_column and group_column not in rows[0]:
        raise GraphError(f"{csv_path} has no column {group_column!r}")
    raw = [r["label"] for r in rows]
    if labels is None:
        labels = sorted(set(raw), key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v))
    entries = []
    for r in rows:
        lab = r["label"]
        idx = labels.index(lab) if lab in labels else (int(lab) if lab.isdigit() and int(lab) < len(labels) else None)
        if idx is None:
            raise GraphError(f"label {lab!r} of {r['file']} is not among the classes {labels}")
        entries.append((r["file"], idx, r[group_column] if group_column else None))
    return labels, entries


def read(root: str, color: str, size: int, *, csv_path=None, labels=None, group_column=None, limit=None,
         seed: int = 0) -> Labelled:
    """Reads every image (or a stratified `limit` of them, seeded) of the labelled set."""
    if csv_path:
        labels, entries = _entries_from_csv(csv_path, root, labels, group_column)
    else:
        labels, entries = _entries_from_folders(root, labels)
    if limit and len(entries) > limit:
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(entries), limit, replace=False))
        entries = [entries[i] for i in pick]
    xs, ys, files, groups, skipped = [], [], [], [], []
    for rel, lab, grp in entries:
        try:
            xs.append(load(os.path.join(root, rel), color, size))
        except Exception as e:  # noqa: BLE001 - any unreadable file is listed with its reason
            skipped.append({"file": rel, "reason": f"{type(e).__name__}: {e}"})
            continue
        ys.append(lab)
        files.append(rel)
        groups.append(grp if grp is not None else rel)
    present = sorted(set(ys))
    if len(present) < 2:
        raise GraphError(f"the labelled images hold {len(present)} class(es) ({[labels[i] for i in present]}) after "
                         f"{len(skipped)} unreadable file(s); detectors need at least two classes")
    return Labelled(x=np.stack(xs).astype(np.float32), y=np.array(ys, np.int64), files=files,
                    groups=np.array(groups), labels=list(labels), skipped=skipped)
