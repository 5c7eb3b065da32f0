"""Dataset loading into cached [0, 1] arrays at the model's input size.

Reads ../shared/data (each set's SOURCE.md documents origin and split); caches the
preprocessed arrays under models/training/work/ so later stages start in seconds.
"""
from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass

import numpy as np

from .preprocess import load_image

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
SHARED_DATA = os.environ.get("MEDSENTRY_DATA", os.path.join(REPO, "..", "shared", "data"))
WORK = os.path.join(REPO, "models", "training", "work")


@dataclass(frozen=True)
class DatasetSpec:
    name: str            # bundle name
    folder: str          # folder under shared/data
    labels: tuple        # class labels in index order
    color: str           # "gray" or "rgb"
    size: int            # model input height = width
    source_md: str       # path of SOURCE.md relative to shared/data
    adv_per_half: int | None = None  # AdvTrain/AdvTest size cap (stratified); None = all of each half
    # Sets that hold only a test split: the share of patients this pipeline holds out as its
    # test set (patient-disjoint from its training set), and which rows of labels.csv it uses.
    patient_test_share: float | None = None
    rows_where: tuple | None = None  # (column, value)
    # Bundles fitted for a classifier this pipeline did not train (`fit`): the fit's work
    # folder (fit.json, the preprocessed images, attack records) and the bundle it builds.
    fit_dir: str | None = None
    bundle_dir: str | None = None


CHEST_XRAY = DatasetSpec(
    name="chest-xray-pneumonia", folder="chest_xray_kermany", labels=("NORMAL", "PNEUMONIA"),
    color="gray", size=64, source_md="chest_xray_kermany/SOURCE.md",
)

# The MedMNIST PneumoniaMNIST benchmark: the same Kermany X-rays and official split at 28 px.
# The npz that ../shared/data/pneumoniamnist/SOURCE.md describes is not on this machine, so
# the images come from chest_xray_kermany (224 px squares, so MedMNIST's centre crop is a
# no-op), area-resized to 28 px by the pipeline's own resize.
PNEUMONIAMNIST = DatasetSpec(
    name="pneumoniamnist-28", folder="chest_xray_kermany", labels=("NORMAL", "PNEUMONIA"),
    color="gray", size=28, source_md="chest_xray_kermany/SOURCE.md",
)

# HAM10000 + the official ISIC 2018 Task 3 test set, 7 classes in DermaMNIST's order.
DERMOSCOPY = DatasetSpec(
    name="dermoscopy-isic2018", folder="dermoscopy_isic2018",
    labels=("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"),
    color="rgb", size=64, source_md="dermoscopy_isic2018/SOURCE.md",
    # 1,512 test images would give halves of 756; 7 targeted UAPs per setting and the
    # per-image attacks on both halves would take most of a day on 2 cores, so each half is
    # a stratified 300 (the same rule as --limit, but these are the bundle's real figures).
    adv_per_half=300,
)

# Retinal OCT (Kermany OCT2017 v2 test folder, 1,000 images of 657 patients, 4 classes in
# OCTMNIST's order). ../shared/data has no OCT training images, so the pipeline splits these
# by patient: 30 % of patients are its test set, the rest its training set. The images
# are 496 px high and 512-1,536 px wide; the contract's area resize squeezes them to 64 x 64.
OCT = DatasetSpec(
    name="oct-kermany", folder="oct_kermany", labels=("CNV", "DME", "DRUSEN", "NORMAL"),
    color="gray", size=64, source_md="oct_kermany/SOURCE.md",
    patient_test_share=0.3, rows_where=("source_version", "v2_OCT2017"),
)

SPECS = {"chest_xray": CHEST_XRAY, "pneumoniamnist": PNEUMONIAMNIST, "dermoscopy": DERMOSCOPY, "oct": OCT}


def resolve(name: str) -> DatasetSpec:
    """A data set by its key in SPECS, or a `fit` work folder (one holding fit.json)."""
    if name in SPECS:
        return SPECS[name]
    path = os.path.join(name, "fit.json")
    if not os.path.exists(path):
        raise SystemExit(f"--dataset {name!r}: neither one of {sorted(SPECS)} nor a fit work folder (no fit.json)")
    import json
    with open(path) as f:
        fit = json.load(f)
    return DatasetSpec(**{**fit["spec"], "labels": tuple(fit["spec"]["labels"]), "fit_dir": os.path.abspath(name)})


def fixture_dir(spec: DatasetSpec, kind: str) -> str:
    """Where a stage writes (and reads) the fixtures of the Rust tests: tests/fixtures/KIND,
    or for a fitted bundle its work folder (a fit run must not write into the repository;
    fixtures of a bundle that is committed are copied from there by hand)."""
    if spec.fit_dir is not None:
        return os.path.join(spec.fit_dir, "fixtures", kind)
    return os.path.join(REPO, "tests", "fixtures", kind)


def fit_config(spec: DatasetSpec) -> dict:
    """fit.json of a fitted bundle ({} for the pipeline's own data sets)."""
    if spec.fit_dir is None:
        return {}
    import json
    with open(os.path.join(spec.fit_dir, "fit.json")) as f:
        return json.load(f)


def add_dataset_arg(ap) -> None:
    ap.add_argument("--dataset", default="chest_xray", metavar="NAME|FIT_DIR",
                    help=f"one of {', '.join(sorted(SPECS))}, or the work folder of a `fit` run")


def unit_hash(text: str) -> float:
    """A deterministic number in [0, 1) for a string (sha256), for seedless, stable splits."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) / 16 ** 12


def _split_of(spec: DatasetSpec, row: dict) -> str:
    if spec.patient_test_share is None:
        return row["split"]
    return "test" if unit_hash(row["patient_id"]) < spec.patient_test_share else "train"


def kermany_patient(name: str) -> str:
    """Patient id in a Kermany file name: person123_bacteria_45.jpeg -> person123,
    IM-0001-0001.jpeg -> IM-0001, NORMAL2-IM-0007-0001.jpeg -> NORMAL2-IM-0007."""
    if name.startswith("person"):
        return name.split("_")[0]
    parts = name.split("-")
    return "-".join(parts[:3] if name.startswith("NORMAL2") else parts[:2])


# Patient id from the file name, for sets whose own split keeps several images of a patient
# in one split.
PATIENT_IN_NAME = {"chest_xray_kermany": kermany_patient}


def groups(spec: DatasetSpec, files) -> np.ndarray | None:
    """The group of each file that a split (AdvTrain/AdvTest, validation) must keep on one
    side: the patient id for the sets this pipeline splits by patient (OCT file names are
    <CLASS>-<patient>-<n>.jpeg), else copy_groups; None when every file stands alone."""
    if spec.fit_dir is not None:
        z = np.load(os.path.join(spec.fit_dir, "images_test.npz"), allow_pickle=False)
        return z["groups"] if "groups" in z.files else None
    if spec.patient_test_share is None:
        return copy_groups(spec, files)
    return np.array([os.path.basename(f).split("-")[1] for f in files])


def copy_groups(spec: DatasetSpec, files) -> np.ndarray | None:
    """Files that are byte-identical, or whose names give the same patient (PATIENT_IN_NAME),
    share a group, so that no image has its copy, and no patient an image, on both sides of a
    split (the Kermany chest test set holds six pairs of identical files under two names).
    None when every file is alone, so that such a set keeps its plain stratified split."""
    parent = list(range(len(files)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = {}  # content digest or patient id -> the first file that had it
    name = PATIENT_IN_NAME.get(spec.folder)
    for i, f in enumerate(files):
        with open(os.path.join(SHARED_DATA, spec.folder, f), "rb") as fh:
            keys = [hashlib.sha256(fh.read()).hexdigest()]
        if name:
            keys.append("patient " + name(os.path.basename(f)))
        for k in keys:
            a, b = root(i), root(first.setdefault(k, i))
            parent[max(a, b)] = min(a, b)
    roots = np.array([root(i) for i in range(len(files))])
    if len(np.unique(roots)) == len(files):
        return None
    return np.array([f"g{r:06d}" for r in roots])


def _rows(spec: DatasetSpec):
    with open(os.path.join(SHARED_DATA, spec.folder, "labels.csv"), newline="") as f:
        return list(csv.DictReader(f))


def load_split(spec: DatasetSpec, split: str):
    """Returns (x float32 (N, C, S, S) in [0, 1], y int64 (N,), files list). For a fitted
    bundle: the labelled images the fit read ("test": split into AdvTrain/AdvTest) and its
    training images ("train": the user's, or AdvTrain when none were given)."""
    if spec.fit_dir is not None:
        z = np.load(os.path.join(spec.fit_dir, f"images_{split}.npz"), allow_pickle=False)
        return z["x"], z["y"], list(z["files"])
    os.makedirs(WORK, exist_ok=True)
    cache = os.path.join(WORK, f"{spec.name}_{split}_{spec.size}.npz")
    if os.path.exists(cache):
        z = np.load(cache, allow_pickle=False)
        return z["x"], z["y"], list(z["files"])
    rows = [r for r in _rows(spec) if _split_of(spec, r) == split
            and (spec.rows_where is None or r[spec.rows_where[0]] == spec.rows_where[1])]
    rows.sort(key=lambda r: r["file"])
    xs = [load_image(os.path.join(SHARED_DATA, spec.folder, r["file"]), spec.color, spec.size, spec.size)
          for r in rows]
    x = np.stack(xs).astype(np.float32)
    y = np.array([int(r["label"]) for r in rows], dtype=np.int64)
    files = [r["file"] for r in rows]
    np.savez(cache, x=x, y=y, files=np.array(files))
    return x, y, files


def grouped_split(y: np.ndarray, group: np.ndarray | None, fraction: float, seed: int):
    """(rest, held) like stratified_split, but with `group` (patient ids) whole patients are
    held out: `fraction` of the patients of each class (a patient's class = that of its first
    image), so that no patient is on both sides."""
    if group is None:
        return stratified_split(y, fraction, seed)
    rng = np.random.default_rng(seed)
    first = {}
    for g, c in zip(group, y):
        first.setdefault(g, c)
    held_groups = set()
    for c in np.unique(y):
        pats = np.array(sorted(g for g, k in first.items() if k == c))
        rng.shuffle(pats)
        held_groups.update(pats[: int(round(len(pats) * fraction))].tolist())
    held = np.flatnonzero(np.isin(group, list(held_groups)))
    rest = np.setdiff1d(np.arange(len(y)), held)
    return rest, held


def stratified_split(y: np.ndarray, fraction: float, seed: int):
    """Indices (rest, held) with `fraction` of every class held out."""
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        held.extend(idx[: int(round(len(idx) * fraction))])
    held = np.sort(np.array(held))
    rest = np.setdiff1d(np.arange(len(y)), held)
    return rest, held
