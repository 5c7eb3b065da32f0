"""Render REPORT.md from report.json's `adversarial_evaluation`, `feature_squeezing`,
`campaign` and `out_of_distribution` sections (nothing else is read, so every figure in REPORT.md is in report.json).

    python -m medsentry_training.report [--out DIR]      (default models/<bundle>/)
"""
from __future__ import annotations

import argparse
import json
import math
import os

from . import datasets
from .report_sections import (adaptive_fused_section, campaign_section, f3, fused_section, ood_section, pct,
                              squeeze_section)
from .report_targets import served_model, targets_section
from .detectors import SERVED_DETECTORS


# Why a set's clean accuracy sits where it does: facts about the data and the training
# choices (figures are filled in from report.json, never written here).
DATASET_NOTES = {
    "dermoscopy": (
        "Why the accuracy is far below the anchor: DermaMNIST's test set is a random part of HAM10000, drawn "
        "from the same pool as its training set; this bundle is tested on the official ISIC 2018 Task 3 test "
        "set, images the challenge kept apart from HAM10000. On the validation split (a random part of the training images, so like "
        "DermaMNIST's test set) the selected epochs reached balanced accuracy {val_std} (standard) and "
        "{val_hard} (hardened). ../shared/data caps the training nevi at 1,500 of 4,323, so nevi are 47 % of "
        "training images but 60 % of the test set, and the class-weighted loss with selection on balanced "
        "accuracy (the ISIC 2018 challenge's metric) trades plain accuracy for the rare classes. The network "
        "is a 0.7 M-parameter ResNet trained from scratch on 90 % of the 3,161 training images at 64 x 64 px."),
    "oct": (
        "The only OCT images in ../shared/data are the OCT2017 v2 test folder (1,000 images), so this bundle "
        "trains on 70 % of its patients and tests on the other 30 % (no patient on both sides; validation and "
        "AdvTrain/AdvTest are split by patient too). It is not comparable with OCTMNIST, which trains on "
        "97,477 images and tests on the v3 test set."),
}



def val_score(c):
    v = (c or {}).get("val") or {}
    return f3(v.get("val_bal_acc"))


def models(full) -> list:
    """The classifiers the report compares: standard and hardened, or for a bundle fitted
    from the user's graph (`fit`) only that graph."""
    return [k for k in ("standard", "hardened") if k in full["adversarial_evaluation"]["clean_test"]]


def shown(k: str, full) -> str:
    return "served (the user's graph)" if "fit" in full and k == "hardened" else k


def transfer_sentence(transfer: dict) -> str:
    """The transfer attack's robust accuracy, or nothing where no surrogate was attacked (a
    bundle fitted on a user's graph has none)."""
    if not transfer:
        return ""
    return (" Transfer (PGD-20 on the SimpleCNN surrogate) robust accuracy of the hardened model: "
            + ", ".join(f"{k.split('_')[1]}/255: {pct(v)}"
                        for k, v in sorted(transfer.items(), key=lambda kv: int(kv[0].split('_')[1]))) + ".")


def failures_section(full, a):
    """Where the defense fails, derived from the tables below (nothing here is new data)."""
    r = full["adversarial_evaluation"]
    a("## Where the defense fails\n")
    c = r["clean_test"]
    if "standard" in c:
        a(f"- **Clean accuracy.** Hardened (served) {f3(c['hardened']['accuracy'])} (balanced "
          f"{f3(c['hardened']['balanced_accuracy'])}) against standard {f3(c['standard']['accuracy'])} (balanced "
          f"{f3(c['standard']['balanced_accuracy'])}) on the official test set; reference: {full.get('medmnist_anchor', '–')}.")
    else:
        a(f"- **Clean accuracy.** The served graph (not adversarially trained here): {f3(c['hardened']['accuracy'])} "
          f"(balanced {f3(c['hardened']['balanced_accuracy'])}) on the {c['n']} labelled images given to fit.")
    rob = r["robust_accuracy_advtest"]
    base = rob.get("clean_advtest_accuracy", {}).get("hardened")
    # The strongest attack the run has: aa_lite (APGD-CE + Square), else PGD-20 (a fit may
    # run fewer attacks for CPU time).
    strongest = next((k for k in ("aa_lite", "pgd20") if any(v.get(k) is not None for v in rob.get("hardened", {}).values())), None)
    if base and strongest:
        lost = [(b, v[strongest]) for b, v in rob.get("hardened", {}).items() if v.get(strongest) is not None
                and v[strongest] < base / 2]
        first = ", ".join(f"{b.split('_')[1]}/255 ({pct(v)} % correct)" for b, v in lost)
        name = "APGD-CE + Square" if strongest == "aa_lite" else "PGD-20"
        a(f"- **Robustness.** {name} leaves the {shown('hardened', full)} model less than half of its clean AdvTest accuracy "
          f"({pct(base)} %) at: {first or 'no budget up to 8/255'}.")
    fs_rows = {(x["attack"], x["budget"]): x for x in (full.get("feature_squeezing") or {}).get("rows", [])}
    weak = {}  # attack -> [(budget, best single-detector TPR, n)]
    for row in r["detection"]["rows"]:
        if row["n_pos"] < 5:
            continue
        tprs = [row[d]["tpr_fpr_0.01"] for d in SERVED_DETECTORS if d in row]
        fs = fs_rows.get((row["attack"], row["budget"]), {}).get("tpr_fpr_0.01")
        if fs is not None:
            tprs.append(fs)
        if tprs and max(tprs) < 0.5:
            weak.setdefault(row["attack"], []).append((row["budget"], max(tprs), row["n_pos"]))
    singles = ("No single detector alone flags half of the successful adversarial examples at its 1 % threshold "
               "(rows with at least 5 positives; best detector's TPR in brackets): " +
               ("; ".join(f"{att} " + ", ".join(f"{b} ({pct(t)} %, n={n})" for b, t, n in rows) for att, rows in weak.items())
                or "none") + ".")
    fd = full.get("fused_detector") or {}
    if fd.get("rows"):
        # The verdict is the fused detector's: its misses lead, the single detectors are what it is built from.
        missed = [x for x in fd["rows"] if x["n_pos"] >= 5 and x["tpr_fpr_0.01"] < 0.5]
        head = ("The verdict (fused detector at its 1 % threshold) is ADVERSARIAL on fewer than half of the successful "
                "examples of: " + "; ".join(f"{x['attack']} {x['budget']} ({pct(x['tpr_fpr_0.01'])} %, n={x['n_pos']})"
                                            for x in missed) + "." if missed else
                "The verdict (fused detector at its 1 % threshold) is ADVERSARIAL on at least half of the successful "
                "examples of every row with at least 5 of them.")
        a(f"- **Detection.** {head} {singles}")
    else:
        a(f"- **Detection.** {singles}")
    fpr = r["detection"]["clean_advtest_fpr"]
    fs_fpr = (full.get("feature_squeezing") or {}).get("clean_advtest_fpr", {}).get("fpr_0.01")
    a("- **False alarms.** Clean AdvTest images above the 1 % thresholds: " +
      ", ".join(f"{d} {pct(fpr[d]['fpr_0.01'])} %" for d in SERVED_DETECTORS if d in fpr) +
      (f", feature squeezing {pct(fs_fpr)} %" if fs_fpr is not None else "") + ".")
    ad = r["adaptive"]
    sm = ad["smallest_eps_255_with_50pct"]
    union = (f"PGD that knows {', '.join(ad['detectors'])} fools the model without any of them flagging on half of "
             f"the images at " + (f"{sm}/255." if sm is not None else
                                  f"no budget up to {ad['rows'][-1]['eps_255']}/255 (largest: "
                                  f"{pct(max(x['fooled_and_undetected'] for x in ad['rows']))} %)."))
    af = full.get("adaptive_fused") or {}
    if af.get("rows"):
        top = max(x["eps_255"] for x in af["rows"])
        worst = max((x for x in af["rows"] if x["eps_255"] == top), key=lambda x: x["fooled_not_adversarial"])
        ceil = af.get("robust_accuracy_pgd20_ceiling", {}).get(f"linf_{top}")
        a(f"- **Adaptive attacker.** Against the verdict, {worst['attack']} at {top}/255 fools the model and is not "
          f"answered ADVERSARIAL on {pct(worst['fooled_not_adversarial'])} % of the AdvTest images it starts from "
          f"(section *Adaptive attacks on the fused verdict*" +
          (f"; the {served_model(full)}'s PGD-20 robust accuracy there is {pct(ceil)} %" if ceil is not None else "") +
          f"). Against the single detectors: {union}")
    else:
        a(f"- **Adaptive attacker.** {union}")
    camp = full.get("campaign")
    if camp:
        quiet = [x for x in camp["uap_streams"] if x["attack"] != "uap_random" and x["residual_alarm_rate"] < 0.5]
        at = camp.get("uap_streams_threshold", camp["config"]["residual_threshold"])
        a(f"- **Campaign monitor.** UAP streams that do not raise the campaign (shared-perturbation) alarm on half of "
          f"the windows at residual threshold {at}: " + ("; ".join(f"{x['attack']} {x['budget']}" for x in quiet) or "none") + ".")
    ood = full.get("out_of_distribution")
    if ood:
        clean, others = ood["rows"][0], ood["rows"][1:]
        key = "with_colour_rule_rate" if "with_colour_rule_rate" in clean else "ood_rate"
        missed = [f"{o['set']} {pct(o[key])} %" for o in others if o[key] < 0.95]
        miss = ""
        if clean[key] > 0.01:
            # By how much and why: the threshold never sees a test image, so a set that differs from
            # the training images lands above the calibrated rate.
            over = round(clean[key] * clean["n"]) - math.floor(0.01 * clean["n"])
            miss = (f"; missed by {over} of {clean['n']} images: the threshold is set on the out-of-fold scores of "
                    f"the {ood.get('training_images', 'training')} training images alone at {pct(ood.get('calibrated_fpr', 0.005))} %, and "
                    f"the official test set, never used to set it, lands at {clean[key] / ood.get('calibrated_fpr', 0.005):.1f} times that rate"
                    + ("; the images are named under *Out of distribution*" if ood.get("clean_test_over_threshold") else ""))
        a(f"- **Out of distribution.** Clean official test images called OUT_OF_DISTRIBUTION: {pct(clean[key])} % "
          f"(target <= 1 %{miss}); other data sets below 95 % by image "
          f"statistics{' and colour' if key != 'ood_rate' else ' alone'}: {', '.join(missed) or 'none'}.")
    a("")


def render(out_dir: str) -> str:
    with open(os.path.join(out_dir, "report.json")) as f:
        full = json.load(f)
    r = full["adversarial_evaluation"]
    L = []
    a = L.append
    a("# Adversarial evaluation: attacks, detectors, robustness\n")
    if r.get("quick_check"):
        a(f"> **QUICK CHECK (--limit {r['limit']} images per half): these figures are NOT results.**\n")
    a(f"Regenerate: `cd models/training && .venv/bin/python -m {r['command'].split('python -m ')[1]}` "
      f"(whole pipeline: `{r['pipeline_command']}`). All figures below come from `report.json` "
      f"(`adversarial_evaluation`).\n")
    s = r["served"]
    if "fit" in full:
        a(f"Served classifier: the user's ONNX graph as given (sha256 `{full['fit']['onnx_sha256'][:16]}…`), with its "
          f"penultimate features added as an output ({full['fit']['original_outputs_bit_identical_values']} original output "
          f"values checked bit-identical) and attacked white-box through its PyTorch conversion (within "
          f"{full['fit']['onnx_torch_max_abs_diff']:.1e} of ONNX Runtime). Not adversarially trained by this pipeline; "
          f"the labelled images given to fit stand for the official test set below. AdvTrain")
    else:
        a(f"Served classifier: hardened, epoch {s['epoch']}, checkpoint sha256 `{s['checkpoint_sha256'][:16]}…`, "
          f"hardening {json.dumps(s.get('harden'))}. AdvTrain {r['split']['n_advtrain']} / AdvTest "
      f"{r['split']['n_advtest']} images (official test set split 50/50 stratified, seed {r['split']['seed']}"
      + (f"; each half a stratified {r['split']['adv_per_half']} of its images, to fit the attacks on 2 cores"
         if r['split'].get('adv_per_half') else "") + ").\n")

    failures_section(full, a)
    targets_section(full, a)
    a("## Clean test set (official, all images)\n")
    a("| classifier | n | accuracy | balanced acc | AUC | sensitivity | specificity |")
    a("|---|---|---|---|---|---|---|")
    for k in models(full):
        c = r["clean_test"][k]
        a(f"| {shown(k, full)} | {r['clean_test']['n']} | {f3(c['accuracy'])} | {f3(c['balanced_accuracy'])} | {f3(c.get('auc'))} | "
          f"{f3(c.get('sensitivity'))} | {f3(c.get('specificity'))} |")
    if "recall_per_class" in r["clean_test"]["hardened"]:
        a(f"\nAUC = {r['clean_test']['hardened'].get('auc_kind')} (as MedMNIST reports it); sensitivity and "
          "specificity are 2-class figures. Recall per class:\n")
        names = r.get("labels") or [str(i) for i in range(len(r["clean_test"]["hardened"]["recall_per_class"]))]
        a("| classifier | " + " | ".join(names) + " |")
        a("|---|" + "---|" * len(names))
        for k in models(full):
            a(f"| {shown(k, full)} | " + " | ".join(f3(v) for v in r["clean_test"][k]["recall_per_class"]) + " |")

    note = DATASET_NOTES.get(full.get("dataset"))
    if note:
        a("\n" + note.format(val_std=val_score(full.get("clean_test", {}).get("standard")),
                             val_hard=val_score(full.get("clean_test", {}).get("hardened"))))
    a("\n## Robust accuracy on AdvTest (%, Linf; an image counts when correct clean and under attack)\n")
    rob = r["robust_accuracy_advtest"]
    cols = ["fgsm", "bim", "pgd20", "apgd_ce", "aa_lite"]
    ms = models(full)
    a("| budget | " + " | ".join(f"{shown(m, full)} {c}" for m in ms for c in cols) + " |")
    a("|---|" + "---|" * (len(ms) * len(cols)))
    budgets = sorted({b for m in ms for b in rob.get(m, {})}, key=lambda b: int(b.split("_")[1]))
    for b in budgets:
        a(f"| {b.split('_')[1]}/255 | " + " | ".join(pct(rob.get(m, {}).get(b, {}).get(c)) for m in ms
                                                  for c in cols) + " |")
    clean_acc = rob.get("clean_advtest_accuracy", {})
    if clean_acc:
        a("\nClean accuracy on AdvTest (the 100 % of this table): " +
          ", ".join(f"{shown(m, full)} {pct(clean_acc.get(m))}" for m in ms) + ".")
    a("\naa_lite = APGD-CE (100 steps), then Square (Linf) on the images it leaves correct: the AutoAttack "
      "stand-in (torchattacks' AutoAttack needs more than 2 classes; the multi-class bundles use the same "
      "pair so that the tables compare)." + transfer_sentence(rob.get("transfer_to_hardened") or {}) + "\n")

    a("## Universal adversarial perturbations (Hirano & Takemoto), AdvTest, %\n")
    if not any(u.get("fooling_rate") is not None for u in r["uap"]):
        a("Not run for this bundle (its attack stage ran `--only` other attacks).\n")
    a("Non-targeted: fooling rate R_f (prediction changed from the clean prediction), random control of the same "
      "norm in brackets. Targeted: share of AdvTest images classified as the target, random control in brackets. "
      "UAPs crafted on AdvTrain.\n")
    labels = [k[len("targeted_success_"):] for k in (r["uap"][0] if r["uap"] else {})
              if k.startswith("targeted_success_") and not k.endswith("_random")]
    uaps = [u for u in r["uap"] if u.get("fooling_rate") is not None]
    a("| model | norm | zeta | xi | R_f | " + " | ".join(f"to {l}" for l in labels) + " |")
    a("|---|---|---|---|---|" + "---|" * len(labels))
    for u in uaps:
        a(f"| {u['model']} | {u['norm']} | {100 * u['zeta']:.0f}% | {f3(u.get('xi'))} | {pct(u.get('fooling_rate'))} "
          f"({pct(u.get('fooling_rate_random'))}) | " + " | ".join(
              f"{pct(u.get(f'targeted_success_{l}'))} ({pct(u.get(f'targeted_success_{l}_random'))})" for l in labels) + " |")

    d = r["detection"]
    dets = sorted(d["thresholds"])
    a("\n## Detection on AdvTest\n")
    a(f"Positives: {d['positives']}; negatives: {d['negatives']}. Thresholds calibrated on clean AdvTrain; "
      "their false-positive rate on clean AdvTest: " + "; ".join(
          f"{n} {pct(v.get('fpr_0.01'))} % at the 1 % threshold, {pct(v.get('fpr_0.05'))} % at 5 %"
          for n, v in d["clean_advtest_fpr"].items()) + ". logreg = fitted on FGSM/BIM/PGD-20/C&W; logreg_all = on every "
      "attack family of AdvTrain. `(subset)` = one-pixel and L-BFGS ran on a small subset only.\n")

    def det_table(rows):
        a("| attack | budget | n pos / attacked | " + " | ".join(f"{n} AUROC | {n} TPR@1% | {n} TPR@5%" for n in dets) + " |")
        a("|---|---|---|" + "---|---|---|" * len(dets))
        for row in rows:
            cells = []
            for n in dets:
                m = row.get(n, {})
                cells += [f3(m.get("auroc")), pct(m.get("tpr_fpr_0.01")), pct(m.get("tpr_fpr_0.05"))]
            a(f"| {row['attack']}{' (subset)' if row['subset'] else ''} | {row['budget']} | {row['n_pos']} / "
              f"{row['n_attacked']} | " + " | ".join(cells) + " |")
    det_table(d["rows"])

    a("\n## Attacks the learned detector never saw\n")
    a(f"logreg was fitted on {', '.join(r['unseen']['seen_by_logreg'])} only; Mahalanobis only on clean features. "
      "Same columns as above (logreg_all saw these families and is shown for reference).\n")
    det_table(r["unseen"]["rows"])

    ad = r["adaptive"]
    a("\n## Adaptive attack that knows the detectors\n")
    a(f"PGD-{ad['steps']} on {ad['loss']}; lambdas {ad['lambdas']}; detectors {', '.join(ad['detectors'])}; "
      f"base: {ad['base']}. Success = misclassified AND below every detector's 1 % FPR threshold.\n")
    a("| Linf budget | fooled & undetected (adaptive) | non-adaptive PGD-20 |")
    a("|---|---|---|")
    for row in ad["rows"]:
        a(f"| {row['eps_255']}/255 | {pct(row['fooled_and_undetected'])} (n={row['n']}) | "
          f"{pct(ad['non_adaptive_pgd20_fooled_and_undetected'].get(row['eps']))} |")
    sm = ad["smallest_eps_255_with_50pct"]
    tried = ad.get("budgets_255")
    a(f"\nSmallest budget with >= 50 % fooled and undetected: "
      f"{'none up to ' + str(ad['rows'][-1]['eps_255']) + '/255' if sm is None else str(sm) + '/255'}"
      + (f" (budgets tried: {', '.join(f'{e}/255' for e in tried)}, the fit command's --adaptive-eps)"
         if tried and tried[0] != 1 else "") + ".\n")

    squeeze_section(full.get("feature_squeezing"), a)
    campaign_section(full.get("campaign"), a)
    ood_section(full.get("out_of_distribution"), a)
    fused_section(full.get("fused_detector"), a)
    adaptive_fused_section(full.get("adaptive_fused"), a, full.get("fused_detector"), shown("hardened", full))

    a("## ROC plots\n")
    for p in r.get("roc_plots", []):
        a(f"- `{p}`")
    a("\n## Wall time (s)\n")
    a("Attacks: " + ", ".join(f"{k} {v}" for k, v in (r.get("attack_seconds") or {}).items()) + ".\n")
    a("Evaluation: " + ", ".join(f"{k} {v}" for k, v in r["stage_seconds"].items()) + ".\n")
    text = "\n".join(L) + "\n"
    with open(os.path.join(out_dir, "REPORT.md"), "w") as f:
        f.write(text)
    return text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    datasets.add_dataset_arg(ap)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from .advcommon import default_bundle_dir
    out = os.path.abspath(args.out) if args.out else default_bundle_dir(datasets.resolve(args.dataset))
    render(out)
    print(f"[done] REPORT.md in {out}")


if __name__ == "__main__":
    main()
