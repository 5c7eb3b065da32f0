"""Stage: export AdvTest for `medsentry eval` (the sidecar's own evaluation) and the small
fixture its CI test rebuilds from the shared data.

    python -m medsentry_training.export_eval --dataset chest_xray [--limit N] [--out DIR]

Writes (default DIR = models/training/work/eval/<bundle>/, ignored by git):
  clean/advtest.npy            every clean AdvTest image, [N, C, H, W] float32 in [0, 1]
  <attack>__<budget>/x.npy     the detection table's positives of that row (successful
                               adversarial AdvTest examples, see evaluate.positives)
  manifest.json                per set: attack, budget, n and the Python report's AUROC per
                               detector (report.json, evaluate stage), for the comparison.
Then `medsentry eval --model <bundle> --data DIR` must reproduce each AUROC within 0.005.

Also writes tests/fixtures/eval/<bundle>.json: the AdvTest file names of the clean set and
of the positives of one UAP row whose perturbation is committed under tests/fixtures/campaign
(x_adv = clip(x + uap, 0, 1) is checked here), with the Python AUROCs on exactly those sets,
so that a CI test rebuilds the inputs from ../shared/data and runs `medsentry eval`. The
fixture's AUROCs are of the inputs as the sidecar reads them (rounded to the bundle's
`quantize_bits`); the manifest's come from report.json's evaluate stage, on the records as
they are. `--refresh-fixture` recomputes the fixture's AUROCs from its own file lists and
the committed UAP, without the attack records.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from . import advcommon as C
from . import bundle_toml, contract, datasets, squeeze
from .detectors import load_detectors, score_all
from .evaluate import detected_rows, positives
from .preprocess import quantize

FIXTURE_ROW = ("uap_to0", "l2_z4")


def served_keys() -> dict:
    """The sidecar's names of the served detectors detectors.score_all scores -> the
    pipeline's keys (feature squeezing is scored on its own; residual statistics and fused
    are not in report.json's detection rows)."""
    return {d.name: d.key for d in contract.detectors() if d.kind in ("mahalanobis", "logistic")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="chest_xray", choices=sorted(datasets.SPECS))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--refresh-fixture", action="store_true", help="only recompute the fixture's AUROCs (see above)")
    args = ap.parse_args(argv)
    spec = datasets.SPECS[args.dataset]
    bundle_dir = C.default_bundle_dir(spec)
    if args.refresh_fixture:
        return refresh_fixture(spec, bundle_dir)
    out = os.path.abspath(args.out) if args.out else os.path.join(datasets.WORK, "eval", spec.name)
    st = C.load_stage(spec, args.limit)
    with open(os.path.join(bundle_dir, "report.json")) as f:
        report = json.load(f)
    rows = {(r["attack"], r["budget"]): r for r in report["adversarial_evaluation"]["detection"]["rows"]}
    squeeze_rows = {(r["attack"], r["budget"]): r for r in report.get("feature_squeezing", {}).get("rows", [])}
    te = st.split["test"]
    os.makedirs(os.path.join(out, "clean"), exist_ok=True)
    np.save(os.path.join(out, "clean", "advtest.npy"), st.x[te].astype(np.float32))
    manifest = {"dataset": spec.name, "clean": {"n": int(len(te))}, "sets": {},
                "generated_by": "python -m medsentry_training.export_eval --dataset " + args.dataset}
    dets = served_keys()
    loaded = load_detectors(bundle_dir)
    for r in detected_rows(st.recs):
        _, m = positives(r)
        row = rows.get((r.attack, r.budget))
        if not m.any() or row is None:
            continue
        name = f"{r.attack}__{r.budget}"
        os.makedirs(os.path.join(out, name), exist_ok=True)
        np.save(os.path.join(out, name, "x.npy"), r.x_adv[m].astype(np.float32))
        manifest["sets"][name] = {"attack": r.attack, "budget": r.budget, "n": int(m.sum()),
                                  "python_auroc": {d: row[py]["auroc"] for d, py in dets.items() if py in row}}
        sq = squeeze_rows.get((r.attack, r.budget), {})
        if sq.get("auroc") is not None:
            manifest["sets"][name]["python_auroc"][contract.name_of("feature_squeezing")] = sq["auroc"]
        if (r.attack, r.budget) == FIXTURE_ROW:
            write_fixture(spec, st, r, m, {d: loaded[py] for d, py in dets.items()})
    C.write_json(os.path.join(out, "manifest.json"), manifest)
    print(f"[done] {len(manifest['sets'])} sets + {len(te)} clean images in {out}", flush=True)


def write_fixture(spec, st, r, m, dets):
    uap_path = os.path.join(datasets.REPO, "tests", "fixtures", "campaign", f"{spec.name}__{r.attack}__{r.budget}.npy")
    uap = np.load(uap_path)
    idx = np.asarray(r.index)[m]
    rebuilt = np.clip(st.x[idx] + uap[None], 0, 1)
    diff = float(np.abs(rebuilt - r.x_adv[m]).max())
    if diff > 1e-6:
        raise SystemExit(f"{r.attack} {r.budget}: x_adv differs from clip(x + uap) by {diff}")
    te = st.split["test"]
    fixture = {"about": "AdvTest clean images and the positives of one UAP row, rebuilt in the Rust test from "
                        "../shared/data plus the committed UAP; Python's detector AUROC on exactly these sets.",
               "dataset_source": spec.name, "uap": os.path.relpath(uap_path, datasets.REPO), "set": f"{r.attack}__{r.budget}",
               "clean_files": [str(st.files[i]) for i in te], "positive_files": [str(st.files[i]) for i in idx],
               "python_auroc": fixture_aurocs(st.model, dets, st.x[te], rebuilt, bundle_toml.quantize_bits(C.default_bundle_dir(spec))),
               "rebuild_max_abs_diff": diff,
               "generated_by": "python -m medsentry_training.export_eval"}
    write_fixture_file(spec, fixture)


def fixture_aurocs(model, dets: dict, clean: np.ndarray, adv: np.ndarray, bits: int | None) -> dict:
    """Each served detector's AUROC (and feature squeezing's) of `adv` against `clean`, both
    rounded to the bundle's grid first, as the sidecar reads them."""
    clean, adv = quantize(clean, bits), quantize(adv, bits)
    neg = score_all(dets, *C.forward_batches(model, clean))
    pos = score_all(dets, *C.forward_batches(model, adv))
    return {**{d: C.auroc(neg[d], pos[d]) for d in dets},
            contract.name_of("feature_squeezing"): C.auroc(squeeze.scores(model, clean), squeeze.scores(model, adv))}


def refresh_fixture(spec, bundle_dir: str) -> None:
    """The committed fixture's AUROCs recomputed from its file lists and UAP (no records)."""
    path = os.path.join(datasets.REPO, "tests", "fixtures", "eval", f"{spec.name}.json")
    with open(path) as f:
        fixture = json.load(f)
    x, _, files = datasets.load_split(spec, "test")
    at = {str(name): i for i, name in enumerate(files)}
    clean = x[[at[f] for f in fixture["clean_files"]]]
    adv = np.clip(x[[at[f] for f in fixture["positive_files"]]] + np.load(os.path.join(datasets.REPO, fixture["uap"]))[None], 0, 1)
    model, _ = C.load_ckpt(C.ckpt_path(spec, "hardened"))
    loaded = load_detectors(bundle_dir)
    dets = {name: loaded[key] for name, key in served_keys().items()}
    fixture["python_auroc"] = fixture_aurocs(model, dets, clean, adv.astype(np.float32), bundle_toml.quantize_bits(bundle_dir))
    write_fixture_file(spec, fixture)


def write_fixture_file(spec, fixture: dict) -> None:
    path = os.path.join(datasets.REPO, "tests", "fixtures", "eval", f"{spec.name}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(fixture, f, indent=1)
    print(f"[fixture] {os.path.relpath(path, datasets.REPO)}: {len(fixture['clean_files'])} clean, "
          f"{len(fixture['positive_files'])} positives, AUROC {fixture['python_auroc']}", flush=True)


if __name__ == "__main__":
    main()
