"""advtest_sample.json: the one writer of the file the Rust parity tests read
(tests/detector_parity.rs, tests/cascade.rs).

`detectors` creates it (clean, PGD-4/255 and UAP AdvTest items with the Mahalanobis and
learned-logistic scores), `squeeze` adds feature squeezing's score, `fused` the residual
statistics and fused scores, each item's `cascade_skip` and a few flagged C&W items. Score
keys are the contract's detector names (models/detector_kinds.toml, contract.py); the
unserved reference detector keeps its pipeline key ("logreg_all").
"""
from __future__ import annotations

import json
import os

import numpy as np

from . import contract
from .advcommon import write_json

FILE = "advtest_sample.json"
ABOUT = ("Written by medsentry_training.detectors: AdvTest examples (model-space [0,1] pixels, shape "
         "[C,H,W] row-major, float32 values), the served classifier's logits/features on them "
         "(PyTorch, same snapshot as the detectors) and each detector's score computed in float64 by "
         "Python. Rust should reproduce the scores within 1e-4 (ONNX features differ from PyTorch "
         "by ~1e-6).")


def fmt32(a) -> list:
    """float32 values as the shortest decimal that round-trips to the same float32."""
    return [float(np.format_float_positional(np.float32(v), unique=True, trim="-")) for v in np.ravel(a)]


def item(kind: str, attack: str, budget: str, index: int, file: str, label: int, pixels, logits, features,
         scores: dict) -> dict:
    """One item; `scores` by pipeline key (mahalanobis, logreg, squeeze, ...), written under
    the contract's names."""
    return {"kind": kind, "attack": attack, "budget": budget, "index": int(index), "file": file, "label": int(label),
            "pixels": fmt32(pixels), "logits": np.asarray(logits).tolist(), "features": np.asarray(features).tolist(),
            "scores": {contract.name_of_key(k): float(v) for k, v in scores.items()}}


def create(out_dir: str, shape, items: list) -> str:
    """A new advtest_sample.json (items from `item`); returns its path."""
    path = os.path.join(out_dir, FILE)
    write_json(path, {"about": ABOUT, "shape": [int(s) for s in shape], "items": items})
    return path


class Sample:
    """An existing advtest_sample.json, changed in memory and written once by `write`."""

    def __init__(self, out_dir: str):
        self.path = os.path.join(out_dir, FILE)
        with open(self.path) as f:
            self.doc = json.load(f)

    @property
    def items(self) -> list:
        return self.doc["items"]

    def pixels(self) -> np.ndarray:
        """The items' images, (N, C, H, W) float32."""
        return np.array([it["pixels"] for it in self.items], dtype=np.float32).reshape(-1, *self.doc["shape"][-3:])

    def add_scores(self, name: str, values) -> None:
        """Each item's score of the detector `name` (a contract name)."""
        for it, v in zip(self.items, values, strict=True):
            it["scores"][name] = float(v)

    def set_field(self, field: str, values) -> None:
        for it, v in zip(self.items, values, strict=True):
            it[field] = v

    def drop(self, kind: str) -> None:
        self.doc["items"] = [it for it in self.items if it["kind"] != kind]

    def append(self, it: dict) -> None:
        self.items.append(it)

    def write(self) -> None:
        write_json(self.path, self.doc)

