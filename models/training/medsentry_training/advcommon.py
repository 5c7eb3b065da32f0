"""Shared helpers of the adversarial stages (attacks, detectors, evaluate, run_all).

Not a stage itself. Paths are derived from the package location (datasets.REPO), never
written as absolute paths.

Provenance: the hardened checkpoint keeps improving while it trains, so every stage loads
it at run time. The attack stage copies the exact bytes it attacked into its output folder
(`served_snapshot.pt`, with its sha256 in the manifest); the detector and evaluation stages
use that snapshot so that attacks, detectors and figures all refer to the same network, and
`run_all` re-runs the attacks when the live checkpoint no longer matches the snapshot.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from . import datasets, records
from .nets import Normalized, SimpleCNN, SmallResNet
from .records import AttackRecord

torch.set_num_threads(int(os.environ.get("MEDSENTRY_TORCH_THREADS", "2")))

CKPT_DIR = os.path.join(datasets.REPO, "models", "training", "checkpoints")
ATTACK_ROOT = os.path.join(datasets.WORK, "attacks")
SPLIT_SEED = 1
EPS_LIST = [1, 2, 4, 8]  # Linf budgets in 1/255 units
SERVED = "hardened"
# MEDSENTRY_TORCH_DEVICE=cuda runs the attacked classifiers' large batches on a GPU
# (Normalized.accelerate): the attack and adaptive stages are hours on 2 CPU cores. Detector
# fitting and everything the Rust side recomputes stay on the CPU (forward_batches).
TORCH_DEVICE = os.environ.get("MEDSENTRY_TORCH_DEVICE", "cpu")


def default_bundle_dir(spec) -> str:
    return spec.bundle_dir or os.path.join(datasets.REPO, "models", spec.name)


def attack_dir(spec, limit: int | None) -> str:
    sub = spec.name if not limit else f"{spec.name}_limit{limit}"
    if spec.fit_dir is not None:
        return os.path.join(spec.fit_dir, "attacks" if not limit else f"attacks_limit{limit}")
    return os.path.join(ATTACK_ROOT, sub)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ckpt_path(spec, kind: str) -> str:
    """A fitted bundle's served model is its classifier.onnx (attacked through its graph);
    it has no standard or surrogate checkpoint (a path that does not exist)."""
    if spec.fit_dir is not None:
        return os.path.join(default_bundle_dir(spec), "classifier.onnx") if kind == SERVED else \
            os.path.join(spec.fit_dir, f"no_{kind}_checkpoint.pt")
    return os.path.join(CKPT_DIR, f"{spec.name}_{kind}.pt")


def load_ckpt(path: str):
    """(model: Normalized in eval mode, checkpoint dict). Architecture from ck['arch'];
    an .onnx file is a fitted bundle's classifier, converted to PyTorch (fit/torch_graph.py)."""
    if path.endswith(".onnx"):
        from .fit.torch_graph import load_onnx_model
        return load_onnx_model(path)
    ck = torch.load(path, weights_only=False, map_location="cpu")
    if ck.get("arch") == "surrogate":
        net = SimpleCNN(ck["channels"], len(ck["labels"]))
    else:
        net = SmallResNet(ck["channels"], len(ck["labels"]), width=16, stem_stride=2)
    net.load_state_dict(ck["net"])
    net.eval()
    model = Normalized(net, ck["mean"], ck["std"]).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if TORCH_DEVICE != "cpu":
        model.accelerate(TORCH_DEVICE)
    return model, ck


def snapshot_served(spec, out_dir: str) -> tuple[str, str]:
    """Copy the live served checkpoint into out_dir (read once, so a concurrent overwrite by
    the training job cannot tear it). Returns (snapshot path, sha256)."""
    src = ckpt_path(spec, SERVED)
    onnx_file = src.endswith(".onnx")
    for _ in range(5):
        with open(src, "rb") as f:
            data = f.read()
        try:  # make sure the bytes are a complete checkpoint
            import io
            if onnx_file:
                import onnx
                onnx.load_model_from_string(data)
            else:
                torch.load(io.BytesIO(data), weights_only=False, map_location="cpu")
            break
        except Exception:  # training job was writing it: retry
            time.sleep(2)
    else:
        raise SystemExit(f"could not read a complete checkpoint from {src}")
    dst = os.path.join(out_dir, "served_snapshot.onnx" if onnx_file else "served_snapshot.pt")
    with open(dst + ".tmp", "wb") as f:
        f.write(data)
    sha = sha256_file(dst + ".tmp")
    os.replace(dst + ".tmp", dst)
    return dst, sha


def load_manifest(adir: str) -> dict:
    path = os.path.join(adir, "manifest.json")
    if not os.path.exists(path):
        raise SystemExit(f"no attack manifest at {path}: run `python -m medsentry_training.attacks` first")
    with open(path) as f:
        return json.load(f)


def merge_report(out_dir: str, key: str, section: dict) -> None:
    """Sets report.json[key] in out_dir, keeping every other section."""
    path = os.path.join(out_dir, "report.json")
    rep = {}
    if os.path.exists(path):
        with open(path) as f:
            rep = json.load(f)
    rep[key] = section
    write_json(path, rep)


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def make_split(spec, limit: int | None):
    """AdvTrain / AdvTest: the official test set split 50/50 stratified (seed 1), whole groups
    to a side where datasets.groups gives them (patients; identical files, which the chest
    bundles' committed splits, made before, put on both sides: experiments/split_copies.py). With
    --limit N (quick checks) or the dataset's adv_per_half (a cap that keeps attack time
    within a few hours on 2 cores), a stratified subset of N images of each half (seed 1)."""
    x, y, files = datasets.load_split(spec, "test")
    adv_test, adv_train = datasets.grouped_split(y, datasets.groups(spec, files), 0.5, SPLIT_SEED)  # (rest, held)
    # grouped_split returns (rest, held); call the held half AdvTrain.
    limit = limit or spec.adv_per_half
    if limit:
        rng = np.random.default_rng(SPLIT_SEED)

        def sub(idx):
            picked = []
            for c in np.unique(y[idx]):
                ic = idx[y[idx] == c].copy()
                rng.shuffle(ic)
                picked.extend(ic[: max(1, int(round(limit * len(ic) / len(idx))))])
            return np.sort(np.array(picked))[:limit]
        adv_train, adv_test = sub(adv_train), sub(adv_test)
    return {"train": adv_train.astype(np.int64), "test": adv_test.astype(np.int64)}, x, y, files


def stage_args(doc: str, argv, extra=None):
    """The options every stage after `attacks` takes (--dataset, --limit, --out; `extra` adds
    more to the parser): returns (args, spec, out_dir), out_dir defaulting to the bundle."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    datasets.add_dataset_arg(ap)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", default=None, help="bundle folder (default models/<bundle>/)")
    if extra:
        extra(ap)
    args = ap.parse_args(argv)
    spec = datasets.resolve(args.dataset)
    return args, spec, os.path.abspath(args.out) if args.out else default_bundle_dir(spec)


@dataclass
class StageData:
    """What the stages after `attacks` start from (load_stage)."""
    adir: str  # the attack folder
    man: dict  # its manifest
    model: Normalized  # the attacked snapshot of the served classifier
    ck: dict  # ... and its checkpoint dict
    x: np.ndarray  # the official test set
    y: np.ndarray
    files: list
    split: dict  # "train" / "test": AdvTrain / AdvTest indices into x
    recs: list[AttackRecord]  # this snapshot's attack records


def load_stage(spec, limit: int | None) -> StageData:
    """The attack folder and its manifest, the attacked snapshot of the served classifier,
    the official test set, the AdvTrain/AdvTest indices and this snapshot's attack records."""
    adir = attack_dir(spec, limit)
    man = load_manifest(adir)
    model, ck = load_ckpt(os.path.join(adir, man["snapshot"]))
    x, y, files = datasets.load_split(spec, "test")
    split = {h: np.array(man["split"][h], dtype=np.int64) for h in ["train", "test"]}
    recs = load_attacks(adir, shas=man["shas"])
    return StageData(adir=adir, man=man, model=model, ck=ck, x=x, y=y, files=files, split=split, recs=recs)


@contextlib.contextmanager
def timed(log: dict, name: str):
    t0 = time.time()
    print(f"[start] {name}", flush=True)
    yield
    dt = time.time() - t0
    log[name] = round(dt, 2)
    print(f"[time] {name}: {dt:.1f}s", flush=True)


def forward_batches(model: Normalized, x: np.ndarray, batch: int = 256):
    """(logits, features) as float64 numpy from the served net's single forward pass. An
    empty x runs as one empty batch, so the widths are the net's (7 logits for dermoscopy)."""
    ls, fs = [], []
    with torch.no_grad():
        for i in range(0, max(len(x), 1), batch):
            lo, fe = model.features_exact(torch.from_numpy(np.ascontiguousarray(x[i:i + batch], dtype=np.float32)))
            ls.append(lo.double().numpy()); fs.append(fe.double().numpy())
    return np.concatenate(ls), np.concatenate(fs)


def load_attacks(adir: str, target: str | None = None, shas: dict | None = None,
                 attacks: tuple | None = None) -> list[AttackRecord]:
    """All attack records in adir (records.load_all). With `shas` (the manifest's),
    records made against other checkpoint versions are left out; with `attacks`, all but
    those attacks' records."""
    return records.load_all(adir, target, shas, attacks)


def auroc(neg: np.ndarray, pos: np.ndarray) -> float | None:
    """AUROC of scores (higher = positive), ties counted half (scikit-learn's roc_auc_score)."""
    if len(neg) == 0 or len(pos) == 0:
        return None
    s = np.concatenate([neg, pos]).astype(np.float64)
    y = np.concatenate([np.zeros(len(neg)), np.ones(len(pos))])
    return float(roc_auc_score(y, s))


def roc_curve(neg: np.ndarray, pos: np.ndarray):
    thr = np.unique(np.concatenate([neg, pos]))[::-1]
    fpr = np.array([0.0] + [(neg >= t).mean() for t in thr])
    tpr = np.array([0.0] + [(pos >= t).mean() for t in thr])
    return fpr, tpr


def copy_if_exists(src: str, dst: str) -> None:
    if os.path.exists(src):
        shutil.copyfile(src, dst)
