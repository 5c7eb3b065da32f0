"""Attack records: the attack stage's npz files (attacks.py, Stage.save), loaded in one
place into AttackRecord.

One file per (target model, attack, budget): per-example arrays (x_adv float32 N,C,H,W;
index into the official test set; split 0 AdvTrain / 1 AdvTest; label; pred_clean;
pred_adv; target_class, -1 = untargeted; success), optional arrays (uap: a UAP file's
perturbation; apgd_success: aa_lite's APGD-CE alone) and a JSON `meta` string
(target_model, attack, budget, shas and the attack's settings).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

ARRAYS = ("x_adv", "index", "split", "label", "pred_clean", "pred_adv", "target_class", "success")
OPTIONAL_ARRAYS = ("uap", "apgd_success")


@dataclass(frozen=True, eq=False)
class AttackRecord:
    file: str  # the npz's file name
    target_model: str  # "hardened" (the served model), "standard"
    attack: str  # fgsm, bim, pgd20, cw, square, aa_lite, transfer, uap, uap_to<c>, uap_random, onepixel, lbfgs
    budget: str  # linf_4, l2_c1, l2_z4, ...
    shas: dict  # sha256 of the checkpoints it was made against
    x_adv: np.ndarray
    index: np.ndarray
    split: np.ndarray
    label: np.ndarray
    pred_clean: np.ndarray
    pred_adv: np.ndarray
    target_class: np.ndarray
    success: np.ndarray
    uap: np.ndarray | None = None
    apgd_success: np.ndarray | None = None
    meta: dict = field(default_factory=dict)  # the rest of meta: seconds, n, xi, subset_per_half, ...
    extra: dict = field(default_factory=dict)  # arrays of another name (none today)

    @classmethod
    def load(cls, path: str) -> "AttackRecord":
        with np.load(path, allow_pickle=False) as z:
            return cls._from(os.path.basename(path), z, json.loads(str(z["meta"])))

    @classmethod
    def _from(cls, name: str, z, meta: dict) -> "AttackRecord":
        arrays = {k: z[k] for k in z.files if k != "meta"}
        missing = [k for k in ARRAYS if k not in arrays]
        if missing:
            raise ValueError(f"{name}: not an attack record (no {', '.join(missing)})")
        meta = dict(meta)
        head = {k: meta.pop(k) for k in ("target_model", "attack", "budget", "shas")}
        known = ARRAYS + OPTIONAL_ARRAYS
        return cls(file=name, **head, **{k: arrays.get(k) for k in known}, meta=meta,
                   extra={k: v for k, v in arrays.items() if k not in known})


def load_all(adir: str, target: str | None = None, shas: dict | None = None,
             attacks: tuple | None = None) -> list[AttackRecord]:
    """Every attack record in adir, by file name. With `target`, only those against that
    model; with `attacks`, only those attacks'; with `shas` (the manifest's), records made
    against other checkpoint versions are left out. The arrays of a record left out are
    not read."""
    recs = []
    for name in sorted(os.listdir(adir)):
        if not name.endswith(".npz"):
            continue
        with np.load(os.path.join(adir, name), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if target and meta["target_model"] != target:
                continue
            if attacks is not None and meta["attack"] not in attacks:
                continue
            if shas is not None and any(shas.get(k) != v for k, v in meta["shas"].items()):
                print(f"[stale] {name}: made against another checkpoint version; ignored", flush=True)
                continue
            recs.append(AttackRecord._from(name, z, meta))
    return recs
