"""The bundle contract's detectors, read from models/detector_kinds.toml (the file the
sidecar reads too): which detectors the pipeline serves, by what name, of what kind, in
which file, in bundle.toml's order.

The pipeline keeps its own short keys inside (a detector's file stem: "logreg" for
detector_logreg.json); everything it writes for the sidecar (bundle.toml's [[detectors]],
advtest_sample.json's scores) uses the contract's `name`.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from functools import lru_cache

PATH = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "detector_kinds.toml"))


@dataclass(frozen=True)
class Detector:
    name: str  # bundle.toml, disable_detectors, a fused detector's inputs, advtest_sample.json scores
    kind: str  # the scoring rule the sidecar runs
    file: str  # its fitted parameters, in the bundle directory
    optional: bool  # a bundle may lack it (fitted by a later stage)

    @property
    def key(self) -> str:
        """The pipeline's key for it: the file's stem after `detector_` (detector_logreg.json -> logreg)."""
        return self.file[len("detector_"):-len(".json")]


def read(path: str = PATH) -> tuple[Detector, ...]:
    with open(path, "rb") as f:
        rows = tomllib.load(f)["detector"]
    out = tuple(Detector(r["name"], r["kind"], r["file"], bool(r["optional"])) for r in rows)
    for d in out:
        if not (d.file.startswith("detector_") and d.file.endswith(".json")):
            raise ValueError(f"{path}: {d.name}'s file {d.file!r} is not detector_<key>.json")
    for field in ("name", "kind", "file"):
        values = [getattr(d, field) for d in out]
        if len(set(values)) != len(values):
            raise ValueError(f"{path}: two detectors share a {field}")
    return out


@lru_cache(maxsize=1)
def detectors() -> tuple[Detector, ...]:
    """The served detectors, in the contract's (and bundle.toml's) order."""
    return read()


def by_kind(kind: str) -> Detector:
    for d in detectors():
        if d.kind == kind:
            return d
    raise KeyError(f"no detector of kind {kind!r} in {PATH}")


def name_of(kind: str) -> str:
    return by_kind(kind).name


def name_of_key(key: str) -> str:
    """The contract name of a pipeline key ("logreg" -> "learned-logistic"); a key the
    contract does not serve (the reference "logreg_all") is returned as it is."""
    for d in detectors():
        if d.key == key:
            return d.name
    return key
