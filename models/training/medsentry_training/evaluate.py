"""Stage: evaluation on AdvTest -> report.json, REPORT.md and ROC plots in --out.

    python -m medsentry_training.evaluate --dataset chest_xray [--limit N] [--out DIR]
                                          [--adaptive-steps 40] [--keep-adaptive]

Reads the attack stage's folder (and its hardened snapshot) and the detector JSON files in
--out (default models/<bundle>/). Writes, into --out:
  report.json   an `adversarial_evaluation` section (merged into an existing report.json,
                e.g. the export stage's, whose other keys are kept);
  REPORT.md     rendered by medsentry_training.report from report.json only;
  roc/roc_<family>.png  ROC curves per attack family and detector.

Contents: clean accuracy/AUC on the whole official test set (standard and hardened);
robust accuracy on AdvTest under FGSM, BIM, PGD-20, APGD-CE and APGD-CE + Square (the
AutoAttack stand-in) for both classifiers; the Hirano-style UAP table
(fooling rate on AdvTest = prediction changed from the clean prediction, random control in
brackets; targeted success = share of AdvTest images classified as the target);
detection AUROC / TPR at the 1 % and 5 % FPR thresholds (calibrated on clean AdvTrain)
per attack and budget, with positives = successful adversarial AdvTest examples of images
the classifier gets right when clean (for targeted attacks, only images whose true class is
not the target), negatives = all clean AdvTest images; the
unseen-attack table (logreg fitted on FGSM/BIM/PGD/C&W only, Mahalanobis fitted on clean
only); an adaptive attack that knows every served detector (medsentry_training.adaptive).
--keep-adaptive keeps report.json's adaptive section instead of re-running it (half an hour
at 224 px) when it was made against the same checkpoint and detector thresholds, e.g. after
new attack records (UAPs) only; otherwise it stops.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

from . import datasets
from . import adaptive
from . import advcommon as C
from .detectors import SEEN, load_detectors, score_all
from .export import evaluate as clean_eval

UNSEEN = ("square", "transfer", "uap", "onepixel", "lbfgs")


def family(attack: str) -> str:
    return "uap" if attack.startswith("uap") else attack


def robust_tables(recs, y):
    out = {}
    for target in ["hardened", "standard"]:
        rows = {}
        for r in recs:
            if r.target_model != target or family(r.attack) == "uap" or r.attack in ("transfer",):
                continue
            te = r.split == 1
            if not te.any() or not r.budget.startswith("linf_"):
                continue
            ok = (r.pred_clean[te] == r.label[te]) & (r.pred_adv[te] == r.label[te])
            rows.setdefault(r.budget, {})[r.attack] = float(ok.mean())
            out.setdefault("clean_advtest_accuracy", {})[target] = float((r.pred_clean[te] == r.label[te]).mean())
            if r.attack == "aa_lite" and r.apgd_success is not None:
                apgd_ok = (r.pred_clean[te] == r.label[te]) & ~r.apgd_success[te]
                rows[r.budget]["apgd_ce"] = float(apgd_ok.mean())
        out[target] = dict(sorted(rows.items(), key=lambda kv: int(kv[0].split("_")[1])))
    out.setdefault("clean_advtest_accuracy", {})
    tr = [r for r in recs if r.attack == "transfer"]
    out["transfer_to_hardened"] = {r.budget: float(((r.pred_clean == r.label) & (r.pred_adv == r.label)
                                                         )[r.split == 1].mean()) for r in tr}
    return out


def uap_table(recs, labels):
    rows = []
    by = {(r.target_model, r.attack, r.budget): r for r in recs if family(r.attack) == "uap"}
    for target in ["standard", "hardened"]:
        for norm in ["l2", "linf"]:
            for z in [2, 4]:
                b = f"{norm}_z{z}"
                rnd = by.get((target, "uap_random", b))
                row = {"model": target, "norm": norm, "zeta": z / 100}
                def te(r):
                    return r.split == 1
                if (target, "uap", b) in by:
                    r = by[(target, "uap", b)]
                    row["fooling_rate"] = float((r.pred_adv != r.pred_clean)[te(r)].mean())
                    row["xi"] = r.meta["xi"]
                    row["advtrain_fooling_rate"] = float((r.pred_adv != r.pred_clean)[r.split == 0].mean())
                if rnd is not None:
                    row["fooling_rate_random"] = float((rnd.pred_adv != rnd.pred_clean)[te(rnd)].mean())
                for c, lab in enumerate(labels):
                    if (target, f"uap_to{c}", b) in by:
                        r = by[(target, f"uap_to{c}", b)]
                        row[f"targeted_success_{lab}"] = float((r.pred_adv == c)[te(r)].mean())
                    if rnd is not None:
                        row[f"targeted_success_{lab}_random"] = float((rnd.pred_adv == c)[te(rnd)].mean())
                rows.append(row)
    return rows


def detected_rows(recs):
    """The attack records the detection table evaluates (against the served model)."""
    return [r for r in recs if r.target_model == C.SERVED and r.attack not in ("uap_random", "aa_lite")]


def positives(r):
    """(attacked, positive) masks of one attack record: AdvTest images the classifier gets
    right when clean, and of those the ones the attack made wrong."""
    attacked = (r.split == 1) & (r.pred_clean == r.label)
    if (r.target_class >= 0).any():
        # A targeted attack counts only on images whose true class is not the target:
        # the others are "classified as the target" without any attack working.
        attacked &= r.label != r.target_class
    return attacked, attacked & r.success


def detection_tables(recs, dets, model, x, split):
    te = split["test"]
    lo, fe = C.forward_batches(model, x[te])
    neg = score_all(dets, lo, fe)
    fpr_clean = {n: {k: float((s > dets[n]["thresholds"][k]).mean()) for k in dets[n]["thresholds"]}
                 for n, s in neg.items()}
    rows, pos_scores = [], {}
    for r in detected_rows(recs):
        attacked, m = positives(r)
        n_att = int(attacked.sum())
        row = {"attack": r.attack, "family": family(r.attack), "budget": r.budget, "n_pos": int(m.sum()),
               "n_attacked": n_att, "subset": bool(r.meta.get("subset_per_half"))}
        if m.any():
            l1, f1 = C.forward_batches(model, r.x_adv[m])
            ps = score_all(dets, l1, f1)
            pos_scores[(r.attack, r.budget)] = ps
            for n, s in ps.items():
                row[n] = {"auroc": C.auroc(neg[n], s),
                          **{f"tpr_{k}": float((s > v).mean()) for k, v in dets[n]["thresholds"].items()}}
        rows.append(row)
    order = ["fgsm", "bim", "pgd20", "cw", "square", "transfer", "uap", "onepixel", "lbfgs"]
    rows.sort(key=lambda r: (order.index(r["family"]) if r["family"] in order else 99, r["attack"], r["budget"]))
    return rows, neg, pos_scores, fpr_clean


def roc_plots(out_dir, neg, pos_scores, dets):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(os.path.join(out_dir, "roc"), exist_ok=True)
    fams = {}
    for (attack, budget), ps in pos_scores.items():
        fams.setdefault(family(attack), []).append((attack, budget, ps))
    written = []
    for fam, items in sorted(fams.items()):
        fig, axes = plt.subplots(1, len(dets), figsize=(4.2 * len(dets), 4), squeeze=False)
        for ax, name in zip(axes[0], sorted(dets)):
            for attack, budget, ps in sorted(items, key=lambda t: (t[0], t[1])):
                fpr, tpr = C.roc_curve(neg[name], ps[name])
                ax.plot(fpr, tpr, label=f"{attack} {budget} (n={len(ps[name])})")
            ax.plot([0, 1], [0, 1], "k:", lw=0.8)
            ax.axvline(0.01, color="grey", lw=0.6, ls="--")
            ax.set_title(f"{fam}: {name}"); ax.set_xlabel("FPR (clean AdvTest)"); ax.set_ylabel("TPR")
            ax.legend(fontsize=6, loc="lower right")
        fig.tight_layout()
        p = os.path.join(out_dir, "roc", f"roc_{fam}.png")
        fig.savefig(p, dpi=90); plt.close(fig)
        written.append(os.path.relpath(p, out_dir))
    return written


def run_adaptive(spec, out_dir, model, dets, x, y, split, recs, steps, times) -> dict:
    """The adaptive attack on every served detector from AdvTest's clean-correct images, and
    how often non-adaptive PGD-20 fools the model unflagged."""
    te = split["test"]
    pred = np.concatenate([C.forward_batches(model, x[te])[0].argmax(1)])
    base = te[pred == y[te]]
    sq_path = os.path.join(out_dir, "detector_squeeze.json")
    sq = None
    if os.path.exists(sq_path):
        with open(sq_path) as f:
            sq = json.load(f)
    served = adaptive.served(dets)
    budgets = datasets.fit_config(spec).get("adaptive_eps") or adaptive.EPS_255
    out = adaptive.run(model, served, sq, x, y, base, steps, times, budgets)
    out["non_adaptive_pgd20_fooled_and_undetected"] = adaptive.non_adaptive_pgd20(model, served, sq, recs)
    return out


def kept_adaptive(old: dict, rep: dict) -> dict:
    """The previous evaluation's adaptive section, when it attacked the same checkpoint and
    the same detector thresholds as this one."""
    if "adaptive" not in old:
        raise SystemExit("--keep-adaptive: report.json has no adaptive section to keep")
    same = (old.get("served", {}).get("checkpoint_sha256") == rep["served"]["checkpoint_sha256"]
            and old.get("detection", {}).get("thresholds") == rep["detection"]["thresholds"])
    if not same:
        raise SystemExit("--keep-adaptive: the checkpoint or the detector thresholds changed since the adaptive "
                         "attack ran; run without --keep-adaptive")
    return old["adaptive"]


def main(argv=None):
    def extra(ap):
        ap.add_argument("--adaptive-steps", type=int, default=40)
        ap.add_argument("--keep-adaptive", action="store_true", help="reuse report.json's adaptive section (same detectors)")
    args, spec, out_dir = C.stage_args(__doc__, argv, extra)
    times = {}
    t0 = time.time()
    with C.timed(times, "load"):
        st = C.load_stage(spec, args.limit)
        man, model, ck, x, y, split, recs = st.man, st.model, st.ck, st.x, st.y, st.split, st.recs
        # A fitted bundle (the hospital's own model) has no standard twin to compare with.
        std_path = C.ckpt_path(spec, "standard")
        std_model, std_ck = C.load_ckpt(std_path) if os.path.exists(std_path) else (None, None)
        dets = load_detectors(out_dir)
        if not dets:
            raise SystemExit(f"no detector_*.json in {out_dir}: run medsentry_training.detectors first")
        for n, d in dets.items():
            if d["checkpoint_sha256"] != man["shas"]["hardened"]:
                raise SystemExit(f"detector_{n}.json was fitted for another hardened checkpoint: rerun detectors")
    rep = {"command": "python -m medsentry_training.evaluate --dataset " + args.dataset +
                      (f" --limit {args.limit}" if args.limit else "") +
                      (f" --out {os.path.relpath(out_dir, os.path.join(datasets.REPO, 'models', 'training'))}" if args.out else ""),
           "pipeline_command": datasets.fit_config(spec).get("command") or
                               "python -m medsentry_training.run_all --dataset " + args.dataset +
                               (f" --limit {args.limit}" if args.limit else ""),
           "limit": args.limit, "quick_check": bool(args.limit), "labels": list(spec.labels),
           "served": {"classifier": "hardened", "checkpoint_sha256": man["shas"]["hardened"], "epoch": ck.get("epoch"),
                      "harden": ck.get("harden")},
           "split": {"seed": C.SPLIT_SEED, "n_advtrain": int(len(split["train"])), "n_advtest": int(len(split["test"])),
                     "adv_per_half": None if args.limit else spec.adv_per_half},
           "attack_config": {"square_queries": man.get("square_queries"), "small_n_per_half": man.get("small_n"),
                             "uap_mean_norms": man.get("uap_mean_norms")},
           "attack_seconds": man.get("attack_seconds")}
    with C.timed(times, "clean"):
        rep["clean_test"] = {"hardened": clean_eval(model.net, ck, x, y), "n": int(len(y))}
        if std_model is not None:
            rep["clean_test"]["standard"] = clean_eval(std_model.net, std_ck, x, y)
    with C.timed(times, "robust+uap tables"):
        rep["robust_accuracy_advtest"] = robust_tables(recs, y)
        rep["uap"] = uap_table(recs, spec.labels)
    with C.timed(times, "detection"):
        rows, neg, pos_scores, fpr_clean = detection_tables(recs, dets, model, x, split)
        rep["detection"] = {"rows": rows, "clean_advtest_fpr": fpr_clean,
                            "thresholds": {n: d["thresholds"] for n, d in dets.items()},
                            "positives": "successful adversarial AdvTest examples of images classified correctly "
                                         "when clean (targeted attacks: only images whose true class is not the target)", "negatives": "all clean AdvTest images"}
        rep["unseen"] = {"detectors": [n for n in ["mahalanobis", "logreg"] if n in dets], "seen_by_logreg": list(SEEN),
                         "rows": [r for r in rows if r["family"] in UNSEEN]}
    with C.timed(times, "roc plots"):
        rep["roc_plots"] = roc_plots(out_dir, neg, pos_scores, dets)
    path = os.path.join(out_dir, "report.json")
    full = {}
    if os.path.exists(path):
        with open(path) as f:
            full = json.load(f)
    if args.keep_adaptive:
        rep["adaptive"] = kept_adaptive(full.get("adversarial_evaluation", {}), rep)
        times.update({k: v for k, v in full["adversarial_evaluation"]["stage_seconds"].items() if k.startswith("adaptive")})
    else:
        with C.timed(times, "adaptive"):
            rep["adaptive"] = run_adaptive(spec, out_dir, model, dets, x, y, split, recs, args.adaptive_steps, times)
    rep["stage_seconds"] = times
    full["adversarial_evaluation"] = rep
    C.write_json(path, full)
    from .report import render
    render(out_dir)
    print(f"[done] evaluation in {time.time() - t0:.0f}s -> report.json, REPORT.md, roc/ in "
          f"{os.path.relpath(out_dir, datasets.REPO)}; times {json.dumps(times)}", flush=True)


if __name__ == "__main__":
    main()
