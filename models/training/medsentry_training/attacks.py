"""Stage: adversarial examples against the served (hardened) classifier and, for the
robustness comparison, the standard one. All attacks work in [0, 1] pixel space through
`nets.Normalized`.

    python -m medsentry_training.attacks --dataset chest_xray [--limit N] [--small-n 40]
                                         [--only fgsm,pgd20,...] [--force]

Split: the official test set is split 50/50 stratified with seed 1 (whole patients and sets of
identical files to one side, datasets.groups) into AdvTrain (detector
fitting, UAP crafting) and AdvTest (evaluation), each capped at the dataset's adv_per_half
(stratified) where it sets one; the index lists are in `split.json` and `manifest.json`. `--limit N` keeps a stratified N images of each half
(quick checks only: the figures are not real).

Attacks (target H = hardened/served, S = standard), both halves unless said otherwise:
  fgsm, bim (10 steps, alpha eps/4), pgd20 (alpha 2.5 eps/20, random start)  H and S, eps 1,2,4,8/255
  cw        torchattacks CW-L2, c=1, kappa=0, 100 steps, lr 0.01           H
  square    torchattacks Square Linf 8/255, 500 queries (margin loss)      H
  aa_lite   AdvTest only, H and S, eps 1,2,4,8/255: APGD-CE (100 steps) and, on images
            it leaves correct, Square Linf (500 queries): the AutoAttack stand-in for
            2-class models (torchattacks' AutoAttack needs >= 3-4 classes), kept the same
            for more classes so that the tables compare
  transfer  PGD-20 crafted on the SimpleCNN surrogate, eps 1,2,4,8/255, evaluated on H
  uap       Hirano & Takemoto's iterative UAP, crafted on AdvTrain against H and S:
            non-targeted and targeted to each class, Linf and L2, zeta 2 % and 4 % of the
            mean image norm of AdvTrain; per-image minimal perturbations from DeepFool
            (nearest boundary, or towards the target class; overshoot 0.02), projection onto the zeta ball after each image,
            up to 5 passes or until the AdvTrain fooling/success rate reaches 0.9
  uap_random  random controls with the same norm (Linf: uniform +-xi sign noise;
            L2: Gaussian direction scaled to xi), evaluated on H and S
  onepixel  torchattacks OnePixel (1 px, 10 steps, popsize 10): SMALL SUBSET (--small-n
            per half), H
  lbfgs     box-constrained L-BFGS (Szegedy): torch.optim.LBFGS on c*||d||_2^2 +
            CE(f(clip(x+d)), t), t = the other class / the strongest wrong clean logit, 5-step search over c (10 L-BFGS iterations each), clipped to [0, 1]:
            SMALL SUBSET (--small-n per half), H

Output (models/training/work/attacks/<bundle>[_limitN]/, gitignored): one compressed npz
per (target, attack, budget) with per-example arrays x_adv (float32 N,C,H,W), index (into
the official test set, sorted file order of datasets.load_split), split (0 AdvTrain,
1 AdvTest), label, pred_clean, pred_adv, target_class (-1 = untargeted), success
(untargeted: pred_adv != label; targeted: pred_adv == target) and a JSON `meta` string;
UAP files also hold the perturbation `uap`. Files are skipped when present and made for
the same checkpoints (sha256), so the stage resumes.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

import numpy as np
import torch
import torchattacks

from . import datasets
from . import advcommon as C
from .own_attacks import batched, hirano_uap, lbfgs_attack, predict, random_control

SQUARE_QUERIES = 500
SMALL_N = 30


# ----------------------------------------------------------------------------- stage
class Stage:
    def __init__(self, spec, limit, small_n, force, only, served_only=False):
        self.spec, self.limit, self.small_n, self.force, self.only = spec, limit, small_n, force, only
        self.served_only = served_only
        self.adir = C.attack_dir(spec, limit)
        os.makedirs(self.adir, exist_ok=True)
        self.times: dict = {}
        self.summary: dict = {}
        split, x, y, files = C.make_split(spec, limit)
        self.split, self.x, self.y, self.files = split, x, y, files
        snap, sha = C.snapshot_served(spec, self.adir)
        self.snapshot = os.path.basename(snap)
        self.models, self.shas = {}, {"hardened": sha}
        self.models["hardened"], ck = C.load_ckpt(snap)
        self.served_epoch = ck.get("epoch")
        for kind in ["standard", "surrogate"]:
            p = C.ckpt_path(spec, kind)
            if os.path.exists(p):
                self.models[kind], _ = C.load_ckpt(p)
                self.shas[kind] = C.sha256_file(p)
        print(f"[models] served=hardened epoch {self.served_epoch} sha {sha[:12]}; have {sorted(self.models)}", flush=True)

    def targets(self):
        """The served model, and the standard one where there is one (a fitted bundle has
        only the served classifier); only the served one with --served-only."""
        return [t for t in ("hardened", "standard") if t in self.models and not (self.served_only and t != "hardened")]

    def want(self, attack):
        return self.only is None or attack in self.only

    def path(self, target, attack, budget):
        return os.path.join(self.adir, f"{target}__{attack}__{budget}.npz")

    def fresh(self, path, shas):
        """True when the file exists, was made for these checkpoints and on this split (a
        file from another AdvTrain/AdvTest split, e.g. before a cap changed, is redone)."""
        if self.force or not os.path.exists(path):
            return False
        try:
            z = np.load(path, allow_pickle=False)
            meta = json.loads(str(z["meta"]))
            index, half = z["index"], z["split"]
        except Exception:
            return False
        return meta.get("shas") == shas and self.on_this_split(index, half)

    def on_this_split(self, index: np.ndarray, half: np.ndarray) -> bool:
        """Whether a record's images (index, half: 0 AdvTrain, 1 AdvTest) lie on this split."""
        return bool(all(np.isin(index[half == h], self.split[name]).all() for h, name in ((0, "train"), (1, "test"))))

    def on_another_split(self) -> list:
        """The records in the folder made on another AdvTrain/AdvTest split (e.g. before the
        split grouped identical files and patients)."""
        stale = []
        for name in sorted(os.listdir(self.adir)):
            if name.endswith(".npz") and not name.endswith(".tmp.npz"):
                try:
                    z = np.load(os.path.join(self.adir, name), allow_pickle=False)
                    index, half = z["index"], z["split"]
                except Exception:
                    continue
                if not self.on_this_split(index, half):
                    stale.append(name)
        return stale

    def claim(self, path) -> bool:
        """Takes path's lock file so that two attack processes started on the same folder
        (to use both cores) split the files instead of computing one twice. False when a
        live process holds it; a lock left by a dead process is taken over."""
        lock = path + ".lock"
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                return True
            except FileExistsError:
                try:
                    with open(lock) as f:
                        pid = int(f.read() or 0)
                    if pid == os.getpid():
                        return True
                    os.kill(pid, 0)
                    return False  # alive: its file
                except (ProcessLookupError, ValueError, FileNotFoundError):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(lock)
        return False

    def skip(self, path, shas) -> bool:
        if self.fresh(path, shas):
            print(f"[skip] {os.path.basename(path)} (present, same checkpoints)", flush=True)
            return True
        if not self.claim(path):
            print(f"[skip] {os.path.basename(path)} (another attack process is making it)", flush=True)
            return True
        return False

    def halves(self, which):
        idx = np.concatenate([self.split[h] for h in which])
        sp = np.concatenate([np.full(len(self.split[h]), 0 if h == "train" else 1, np.uint8) for h in which])
        return idx, sp

    def save(self, target, attack, budget, idx, sp, x_adv, pred_clean, target_class, extra_meta, shas,
             seconds, extra_arrays=None):
        y = self.y[idx]
        pred_adv = predict(self.models[target], x_adv)
        tc = np.full(len(idx), -1, np.int64) if target_class is None else np.full(len(idx), target_class, np.int64)
        success = (pred_adv == tc) if target_class is not None else (pred_adv != y)
        meta = {"target_model": target, "attack": attack, "budget": budget, "shas": shas,
                "seconds": round(seconds, 2), "n": int(len(idx)), **extra_meta}
        arrays = dict(x_adv=x_adv.numpy().astype(np.float32), index=idx, split=sp, label=y,
                      pred_clean=pred_clean, pred_adv=pred_adv, target_class=tc, success=success,
                      meta=np.array(json.dumps(meta)))
        if extra_arrays:
            arrays.update(extra_arrays)
        path = self.path(target, attack, budget)
        np.savez_compressed(path + ".tmp.npz", **arrays)
        os.replace(path + ".tmp.npz", path)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + ".lock")
        ok = (pred_clean == y)
        rate = float(success[ok].mean()) if ok.any() else float("nan")
        self.summary[os.path.basename(path)] = {"success_rate_on_clean_correct": rate, "n": int(len(idx)),
                                                 "seconds": round(seconds, 2)}
        self.times[f"{target}/{attack}/{budget}"] = round(seconds, 2)
        print(f"[attack] {target:9s} {attack:10s} {budget:14s} n={len(idx):4d} success(clean-correct)={rate:.3f} "
              f"{seconds:.1f}s ({1000 * seconds / max(1, len(idx)):.0f} ms/img)", flush=True)

    def run_per_image(self, target, attack, budget, make, which=("train", "test"), subset=None, extra_meta=None,
                      source=None):
        shas = {target: self.shas[target]}
        if source:
            shas[source] = self.shas[source]
        path = self.path(target, attack, budget)
        if self.skip(path, shas):
            return
        idx, sp = self.halves(which)
        if subset:
            keep = np.concatenate([np.flatnonzero(sp == s)[:subset] for s in np.unique(sp)])
            idx, sp = idx[keep], sp[keep]
        xt, yt = torch.from_numpy(self.x[idx]), torch.from_numpy(self.y[idx])
        torch.manual_seed(0); np.random.seed(0)
        t0 = time.time()
        x_adv = make(xt, yt).detach().clamp(0, 1)
        self.save(target, attack, budget, idx, sp, x_adv, predict(self.models[target], xt), None,
                  dict(extra_meta or {}, **({"subset_per_half": subset} if subset else {}),
                       **({"source_model": source} if source else {})), shas, time.time() - t0)

    # -- attack families
    def linf_family(self):
        for target in self.targets():
            m = self.models[target]
            for e in C.EPS_LIST:
                eps, b = e / 255, f"linf_{e}"
                if self.want("fgsm"):
                    self.run_per_image(target, "fgsm", b, lambda x, y: batched(torchattacks.FGSM(m, eps=eps), x, y))
                if self.want("bim"):
                    self.run_per_image(target, "bim", b, lambda x, y: batched(
                        torchattacks.BIM(m, eps=eps, alpha=eps / 4, steps=10), x, y), extra_meta={"steps": 10})
                if self.want("pgd20"):
                    self.run_per_image(target, "pgd20", b, lambda x, y: batched(
                        torchattacks.PGD(m, eps=eps, alpha=2.5 * eps / 20, steps=20, random_start=True), x, y),
                        extra_meta={"steps": 20})

    def cw_square(self):
        m = self.models["hardened"]
        if self.want("cw"):
            self.run_per_image("hardened", "cw", "l2_c1", lambda x, y: batched(
                torchattacks.CW(m, c=1, kappa=0, steps=100, lr=0.01), x, y),
                extra_meta={"steps": 100, "c": 1, "kappa": 0, "lr": 0.01})
        if self.want("square"):
            self.run_per_image("hardened", "square", "linf_8", lambda x, y: batched(
                torchattacks.Square(m, norm="Linf", eps=8 / 255, n_queries=SQUARE_QUERIES, seed=0), x, y),
                extra_meta={"queries": SQUARE_QUERIES})

    def aa_lite(self):
        if not self.want("aa_lite"):
            return
        for target in self.targets():
            m = self.models[target]
            for e in C.EPS_LIST:
                eps = e / 255
                comp = {}

                def make(x, y, eps=eps, m=m):
                    a = batched(torchattacks.APGD(m, norm="Linf", eps=eps, steps=100, loss="ce", seed=0), x, y)
                    still = predict(m, a) == y.numpy()
                    comp["apgd_success"] = ~still
                    if still.any():
                        ii = np.flatnonzero(still)
                        s = batched(torchattacks.Square(m, norm="Linf", eps=eps, n_queries=SQUARE_QUERIES, seed=0),
                                    x[ii], y[ii])
                        a[ii] = s
                    return a
                path = self.path(target, "aa_lite", f"linf_{e}")
                if self.skip(path, {target: self.shas[target]}):
                    continue
                self.run_per_image(target, "aa_lite", f"linf_{e}", make, which=("test",),
                                   extra_meta={"apgd_steps": 100, "square_queries": SQUARE_QUERIES})
                # add the APGD-only component
                z = dict(np.load(path, allow_pickle=False))
                z["apgd_success"] = comp["apgd_success"]
                np.savez_compressed(path + ".tmp.npz", **z)
                os.replace(path + ".tmp.npz", path)

    def transfer(self):
        if not self.want("transfer"):
            return
        if "surrogate" not in self.models:
            print("[warn] no surrogate checkpoint: transfer attacks skipped (run train --kind surrogate)", flush=True)
            return
        s = self.models["surrogate"]
        for e in C.EPS_LIST:
            eps = e / 255
            self.run_per_image("hardened", "transfer", f"linf_{e}", lambda x, y: batched(
                torchattacks.PGD(s, eps=eps, alpha=2.5 * eps / 20, steps=20, random_start=True), x, y),
                source="surrogate", extra_meta={"crafted_on": "SimpleCNN surrogate, PGD-20"})

    def small(self):
        m = self.models["hardened"]
        if self.want("onepixel"):
            self.run_per_image("hardened", "onepixel", "px_1", lambda x, y: torchattacks.OnePixel(
                m, pixels=1, steps=10, popsize=10)(x, y), subset=self.small_n,
                extra_meta={"pixels": 1, "steps": 10, "popsize": 10})
        if self.want("lbfgs"):
            self.run_per_image("hardened", "lbfgs", "l2_min", lambda x, y: lbfgs_attack(m, x, y),
                               subset=self.small_n, extra_meta={"search_steps": 5, "lbfgs_max_iter": 10})

    def uaps(self):
        if not (self.want("uap") or self.want("uap_random")):
            return
        xtr = torch.from_numpy(self.x[self.split["train"]])
        norms = {"linf": float(xtr.flatten(1).abs().max(1).values.mean()), "l2": float(xtr.flatten(1).norm(dim=1).mean())}
        idx, sp = self.halves(("train", "test"))
        xall = torch.from_numpy(self.x[idx])
        self.uap_norms = norms
        for norm in ["linf", "l2"]:
            for zeta in [2, 4]:
                xi = zeta / 100 * norms[norm]
                b = f"{norm}_z{zeta}"
                if self.want("uap_random"):
                    for target in self.targets():
                        shas = {target: self.shas[target]}
                        path = self.path(target, "uap_random", b)
                        if self.skip(path, shas):
                            continue
                        t0 = time.time()
                        v = random_control(xall[:1].shape, norm, xi, seed=1000 + zeta)
                        xa = (xall + v).clamp(0, 1)
                        self.save(target, "uap_random", b, idx, sp, xa, predict(self.models[target], xall), None,
                                  {"norm": norm, "zeta": zeta / 100, "xi": xi}, shas, time.time() - t0,
                                  {"uap": v.numpy()})
                if not self.want("uap"):
                    continue
                for target in self.targets():
                    m = self.models[target]
                    for tc in [None, *range(len(self.spec.labels))]:
                        name = "uap" if tc is None else f"uap_to{tc}"
                        shas = {target: self.shas[target]}
                        path = self.path(target, name, b)
                        if self.skip(path, shas):
                            continue
                        print(f"[uap] {target} {name} {b} xi={xi:.4f}", flush=True)
                        t0 = time.time()
                        v, info = hirano_uap(m, xtr, norm, xi, tc, seed=zeta)
                        xa = (xall + v).clamp(0, 1)
                        self.save(target, name, b, idx, sp, xa, predict(m, xall), tc,
                                  {"norm": norm, "zeta": zeta / 100, "xi": xi, "crafted_on": "AdvTrain",
                                   "target_label": None if tc is None else self.spec.labels[tc], **info},
                                  shas, time.time() - t0, {"uap": v.numpy()})

    def write_manifest(self):
        old = {}
        mp = os.path.join(self.adir, "manifest.json")
        if os.path.exists(mp):
            with open(mp) as f:
                old = json.load(f)
        split = {h: {"index": self.split[h].tolist(), "file": [self.files[i] for i in self.split[h]],
                     "label": self.y[self.split[h]].tolist()} for h in ["train", "test"]}
        C.write_json(os.path.join(self.adir, "split.json"), {
            "about": "AdvTrain/AdvTest: official test set split 50/50 stratified, seed 1, whole groups "
                     "(patients, identical files) to a side (datasets.grouped_split(y, datasets.groups(...), 0.5, 1): "
                     "held half = AdvTrain). index = position in the test set sorted by file name.",
            "limit": self.limit, "AdvTrain": split["train"],
            "AdvTest": split["test"]})
        times = dict(old.get("attack_seconds", {}))
        times.update(self.times)
        # Two attack processes on one folder each rewrite the manifest; a file's own meta
        # keeps its time, so whatever one of them overwrote is recovered from it.
        for name in sorted(os.listdir(self.adir)):
            if name.endswith(".npz") and not name.endswith(".tmp.npz"):
                target, attack, budget = name[:-4].split("__")
                if f"{target}/{attack}/{budget}" not in times:
                    with contextlib.suppress(Exception):
                        meta = json.loads(str(np.load(os.path.join(self.adir, name), allow_pickle=False)["meta"]))
                        times[f"{target}/{attack}/{budget}"] = meta["seconds"]
        summ = dict(old.get("summary", {}))
        summ.update(self.summary)
        C.write_json(mp, {"dataset": self.spec.name, "limit": self.limit, "small_n": self.small_n,
                          "served": "hardened", "served_epoch": self.served_epoch, "shas": self.shas,
                          "snapshot": self.snapshot, "split_seed": C.SPLIT_SEED,
                          "split": {h: self.split[h].tolist() for h in ["train", "test"]},
                          "uap_mean_norms": getattr(self, "uap_norms", old.get("uap_mean_norms")),
                          "square_queries": SQUARE_QUERIES, "attack_seconds": times, "summary": summ})


def main(argv=None):
    global SQUARE_QUERIES
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    datasets.add_dataset_arg(ap)
    ap.add_argument("--limit", type=int, default=None, help="images per half (quick check)")
    ap.add_argument("--small-n", type=int, default=SMALL_N, help="images per half for one-pixel and L-BFGS")
    ap.add_argument("--only", default=None, help="comma list of attack names")
    ap.add_argument("--force", action="store_true", help="redo files that are present")
    ap.add_argument("--eps", default=None, help="Linf budgets in 1/255, comma list (default 1,2,4,8)")
    ap.add_argument("--served-only", action="store_true",
                    help="attack only the served (hardened) model: what the fused stage's --from-records reads")
    ap.add_argument("--square-queries", type=int, default=SQUARE_QUERIES, help="Square query budget (quick checks: fewer)")
    args = ap.parse_args(argv)
    SQUARE_QUERIES = args.square_queries
    if args.eps:
        C.EPS_LIST[:] = [int(e) for e in args.eps.split(",")]
    t0 = time.time()
    only = set(args.only.split(",")) if args.only else None
    st = Stage(datasets.resolve(args.dataset), args.limit, args.small_n, args.force, only, args.served_only)
    print(f"[split] AdvTrain {len(st.split['train'])} AdvTest {len(st.split['test'])} -> {os.path.relpath(st.adir, datasets.REPO)}", flush=True)
    stale = st.on_another_split()
    if only is not None and stale:
        # A partial run would leave these on the old split beside new ones on this split,
        # and the stages after it read each record's own split.
        raise SystemExit(f"attacks: {len(stale)} records in {st.adir} were made on another AdvTrain/AdvTest split "
                         f"(e.g. {stale[0]}); run without --only so that every record is redone on this split")
    steps = [("linf (fgsm/bim/pgd20)", st.linf_family), ("cw+square", st.cw_square), ("transfer", st.transfer),
             ("uap", st.uaps), ("onepixel+lbfgs (subset)", st.small), ("aa_lite (AdvTest)", st.aa_lite)]
    wall = {}
    for name, fn in steps:
        with C.timed(wall, name):
            fn()
        st.write_manifest()
    print(f"[done] attacks in {time.time() - t0:.0f}s; step times {json.dumps(wall)}", flush=True)


if __name__ == "__main__":
    main()
