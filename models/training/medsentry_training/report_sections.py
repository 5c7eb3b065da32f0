"""The sections of REPORT.md that render one report.json section each (feature squeezing,
campaign monitor, fused detector and its cascade, adaptive attacks on the verdict, out of
distribution), and the number formats every part of the report shares."""
from __future__ import annotations


def pct(v):
    return "–" if v is None else f"{100 * v:.1f}"


def f3(v):
    return "–" if v is None else f"{v:.3f}"


def smooth_clause(fd) -> str:
    """The fused section's words for the smooth PGD-20 family, when the combiner saw it: its
    budgets from the AdvTest rows, its grid from `smooth` (absent in the first report with
    it, 2026-12-03, whose grid was 4x coarser)."""
    budgets = [r["budget"].removeprefix("linf_") for r in fd["rows"] if r["attack"] == "pgd20_smooth"]
    if not budgets:
        return ""
    factor = (fd.get("smooth") or {}).get("factor", 4)
    return (f", and smooth PGD-20 (pgd20_smooth: the perturbation on a {factor}x coarser grid, "
            f"{' and '.join(budgets)}/255) made by this stage")


def c_clause(fd) -> str:
    """The fused section's words for the combiner's regularisation, when the stage recorded
    its out-of-fold misses per C (fused.choose_c, since 2026-12-03)."""
    reg = fd.get("regularisation") or {}
    if "advtrain_oof_missed" not in reg:
        return ""
    missed = ", ".join(f"{c}: {m}" for c, m in reg["advtrain_oof_missed"].items())
    return (f" Regularisation C = {reg['c']}: the smallest C whose out-of-fold AdvTrain examples missed at the two "
            f"thresholds are within {reg['tie_examples']} of the fewest (missed per C, of "
            f"{len(fd['thresholds']) * fd['advtrain']['adversarial']}: {missed}).")


def squeeze_section(fs, a):
    if not fs:
        return
    a("\n## Feature squeezing (training-free detector)\n")
    a(f"`{fs['command']}`: bit depth {fs['config']['bit_depth']}, {fs['config']['median_size']}x"
      f"{fs['config']['median_size']} median; score = largest softmax L1 distance. Thresholds (clean AdvTrain) "
      f"{f3(fs['thresholds']['fpr_0.01'])} (1 %) and {f3(fs['thresholds']['fpr_0.05'])} (5 %); false-positive rate "
      f"on clean AdvTest {pct(fs['clean_advtest_fpr']['fpr_0.01'])} % and {pct(fs['clean_advtest_fpr']['fpr_0.05'])} %. "
      "Same positives as the detection table.\n")
    a("| attack | budget | n pos / attacked | AUROC | TPR@1% | TPR@5% |")
    a("|---|---|---|---|---|---|")
    for row in fs["rows"]:
        a(f"| {row['attack']} | {row['budget']} | {row['n_pos']} / {row['n_attacked']} | {f3(row.get('auroc'))} | "
          f"{pct(row.get('tpr_fpr_0.01'))} | {pct(row.get('tpr_fpr_0.05'))} |")


def campaign_section(c, a):
    if not c:
        return
    cfg, cal = c["config"], c["calibration"]
    o = c.get("ordered")
    a("\n## Campaign monitor\n")
    ordered_cal = ("" if not o else ", of 20000 random windows of the official training set and of every window of the "
                   f"training set ({o['training_images']} images) streamed in file order and grouped by patient ("
                   + ", ".join(f"{k} {f3(v)}" for k, v in o["training_set_max"].items()) + ")")
    a(f"`{c['command']}`. Shared perturbation: mean pairwise correlation of Laplacian residuals over the last "
      f"{cfg['residual_window']} inputs; threshold {cfg['residual_threshold']} = {cal['residual_margin']} x the largest of "
      f"{cal['clean_advtrain_windows']} random clean AdvTrain windows ({f3(cal['clean_advtrain_window_max'])}; mean "
      f"{f3(cal['clean_advtrain_window_mean'])}){ordered_cal}. Class-mix drift (a population signal, not part of the "
      f"campaign alarm): chi-square of the last {cfg['class_mix_window']} predictions "
      f"against {cfg['reference_class_mix']} (predicted mix on the clean official test set); threshold "
      f"{cfg['class_mix_threshold']} (upper {cal['class_mix_tail']} quantile).\n")
    fa = c["clean_advtest_false_alarm"]
    a(f"Clean AdvTest streams ({fa['stream_len']} requests drawn with replacement, sliding windows; a request already "
      f"in the residual window is not added again, as in the sidecar): residual alarm on "
      f"{pct(fa['residual'])} % of windows, class-mix alarm on {pct(fa['class_mix'])} %.\n")
    if o:
        a("Clean official test set streamed in order (every window once full): " + "; ".join(
            f"{k.replace('_', ' ')}: largest window {f3(v['max'])}, alarm on {pct(v['alarm_rate'])} % of {v['windows']} windows"
            for k, v in o["clean_test"].items()) + ".\n")
    if c.get("fixture_streams"):
        a("UAP fixtures (tests/fixtures/campaign) on every AdvTest image, shuffled and in file order, at the current "
          "threshold: " + "; ".join(f"{x['uap']} x{x['scale']}: alarm on {pct(x['alarm_rate'])} % of windows (smallest "
                                   f"{f3(x['min_window_score'])})" for x in c["fixture_streams"]) + ".\n")
    old = c.get("uap_streams_threshold")
    if old is not None and old != cfg["residual_threshold"]:
        a(f"The table below was measured at the earlier residual threshold {old}; it is re-measured at "
          f"{cfg['residual_threshold']} when the campaign stage runs with the attack records.\n")
    a("| UAP stream (every request perturbed) | budget | n | predictions changed % | fools % of clean-correct | mean window score | residual alarm % | class-mix alarm % | predicted mix |")
    a("|---|---|---|---|---|---|---|---|---|")
    for row in c["uap_streams"]:
        a(f"| {row['attack']} | {row['budget']} | {row['n']} | {pct(row.get('changed_prediction_rate'))} | "
          f"{pct(row.get('fooled_rate'))} | "
          f"{f3(row['mean_window_score'])} | {pct(row['residual_alarm_rate'])} | "
          f"{pct(row['class_mix_alarm_rate'])} | {', '.join(f'{v:.2f}' for v in row['predicted_mix'])} |")



def fused_section(fd, a):
    if not fd:
        return
    a("\n## Fused detector (sets the verdict)\n")
    if fd.get("quantize_bits"):
        a(f"Every input below, clean or adversarial, was rounded to the bundle's {fd['quantize_bits']}-bit grid at the "
          "model's size before it was scored (bundle.toml `quantize_bits`), as the sidecar rounds every input; an "
          "attack counts as successful only if it still fools the model after that rounding.\n")
    thr = fd["thresholds"]
    if "widths" in fd:  # the raw-signal combiner
        over = (", ".join(f"{n} ({w} values)" if w > 1 else n for n, w in zip(fd["inputs"], fd["widths"]))
                + f" of one input: {sum(fd['widths'])} standardised values, weights in detector_fused.json")
        base = "feature squeezing's thresholds from clean AdvTrain"
    else:
        over = f"{', '.join(fd['inputs'])} (weights {', '.join(f'{w:.2f}' for w in fd['weights'])} on standardised inputs)"
        base = "base scores out-of-fold"
    a(f"`{fd['command']}`. Logistic regression over {over}, fitted on AdvTrain "
      f"({fd['advtrain']['clean']} clean, {fd['advtrain']['adversarial']} successful examples: FGSM/BIM/PGD-20/C&W made by "
      f"{fd.get('attacks_made_by', 'this stage')}" + smooth_clause(fd)
      + f"; {base}); thresholds {f3(thr['fpr_0.01'])} (ADVERSARIAL) and {f3(thr['fpr_0.05'])} "
      f"(SUSPICIOUS) from its out-of-fold scores of clean AdvTrain. Clean AdvTest over them: fused "
      f"{pct(fd['clean_advtest']['fpr_0.01']['fused'])} % / {pct(fd['clean_advtest']['fpr_0.05']['fused'])} %; the union of "
      f"the served detectors, which set the verdict before: {pct(fd['clean_advtest']['fpr_0.01']['union'])} % / "
      f"{pct(fd['clean_advtest']['fpr_0.05']['union'])} %." + c_clause(fd) + "\n")
    a("| attack | budget | seen by the combiner | n pos | fused AUROC | fused TPR@1% | fused TPR@5% | union TPR@1% | union TPR@5% |")
    a("|---|---|---|---|---|---|---|---|---|")
    for r in fd["rows"]:
        a(f"| {r['attack']} | {r['budget']} | {'yes' if r['seen'] else 'no'} | {r['n_pos']} | {f3(r['auroc'])} | "
          f"{pct(r['tpr_fpr_0.01'])} | {pct(r['tpr_fpr_0.05'])} | {pct(r['union_tpr_fpr_0.01'])} | {pct(r['union_tpr_fpr_0.05'])} |")
    unseen = {"square": "Square Linf, 500 queries (black box)", "transfer": "PGD-20 crafted on the separately trained "
              "SimpleCNN surrogate, counted where it fools the served model", "uap": "the committed UAP fixtures",
              "deepfool": "DeepFool L2, 50 steps, overshoot 0.02", "lbfgs": "box-constrained L-BFGS, first 60 images"}
    have = [f"{k}: {v}" for k, v in unseen.items() if any(r["attack"].startswith(k) and not r["seen"] for r in fd["rows"])]
    if have:
        a("\nRows the combiner never saw: " + "; ".join(have) + ".")
    a("\nNon-adaptive PGD-20: AdvTest images fooled and answered CLEAN (below the SUSPICIOUS threshold), fused vs union: "
      + ", ".join(f"{b} {pct(v['fused'])} % vs {pct(v['union'])} %" for b, v in fd["pgd20_fooled_and_clean"].items()) + ".\n")
    cascade_section(fd, a)


def cascade_section(fd, a):
    """The cascade's measured effect (fused stage), when the stage fitted one."""
    c = fd.get("cascade")
    if not c:
        return
    thr = fd["clean_advtest"]
    a("\n### Cascade (`cascade = true` in the policy)\n")
    a(f"A cheap combiner without feature squeezing answers CLEAN, skipping squeezing's two extra forward passes, "
      f"when its score is under {f3(c['skip_below'])} (the 1 % quantile of its out-of-fold score over what the full "
      f"verdict flags on AdvTrain). AdvTest: {pct(c['advtest_clean_skipped'])} % of clean images skip squeezing "
      f"({1 + 2 * (1 - c['advtest_clean_skipped']):.2f} forward rows per clean input instead of 3; AdvTrain "
      f"{pct(c['advtrain_clean_skipped'])} %); clean flagged at 1 % / 5 %: {pct(thr['fpr_0.01']['cascade'])} % / "
      f"{pct(thr['fpr_0.05']['cascade'])} % (full verdict {pct(thr['fpr_0.01']['fused'])} % / {pct(thr['fpr_0.05']['fused'])} %).\n")
    a("| attack | budget | n pos | TPR@1% full | TPR@1% cascade | TPR@5% full | TPR@5% cascade | skipped % |")
    a("|---|---|---|---|---|---|---|---|")
    for r in fd["rows"]:
        if r.get("cascade_skipped") is None:
            continue
        a(f"| {r['attack']} | {r['budget']} | {r['n_pos']} | {pct(r['tpr_fpr_0.01'])} | {pct(r['cascade_tpr_fpr_0.01'])} | "
          f"{pct(r['tpr_fpr_0.05'])} | {pct(r['cascade_tpr_fpr_0.05'])} | {pct(r['cascade_skipped'])} |")


def lowpass_grids(af) -> str:
    """How much coarser the low-pass attacks' grids are: "4 times (*fused-aware-lowpass-8*: 8 times)"."""
    factors = af.get("lowpass_factors") or ({"fused-aware-lowpass": af["lowpass_factor"]} if af.get("lowpass_factor") else {})
    run = {r["attack"] for r in af["rows"]}
    parts = [f"{f} times" if k == "fused-aware-lowpass" else f"*{k}*: {f} times"
             for k, f in factors.items() if k in run]
    return (parts[0] + (f" ({'; '.join(parts[1:])})" if parts[1:] else "")) if parts else "several times"


def adaptive_fused_section(af, a, fused=None, served="hardened"):
    if not af:
        return
    a("\n## Adaptive attacks on the fused verdict\n")
    a(", then ".join(f"`{c}`" for c in af.get("commands") or [af["command"]]) + f". White-box PGD (Linf, {af['steps']} steps, lambda {', '.join(str(v) for v in af['lambdas'])}) on "
      "the images the served classifier gets right: *fused-aware* subtracts lambda * relu(logit(fused) - logit(t5) + 0.1) "
      "from the cross-entropy, the whole fused score made differentiable (feature squeezing through BPDA, the residual "
      "histogram soft in the backward pass only); *feature-hiding* (HFC-style) pulls the penultimate features to the "
      "clean mean of the class the attack reaches, without knowing the detectors; *fused-aware-lowpass* is fused-aware "
      "with the perturbation made smooth (PGD on a grid " + lowpass_grids(af) + " coarser, bilinearly upsampled), which "
      "the residual statistics, reading Laplacians, hardly see. Every counted image is re-scored "
      "exactly. An image answered OUT_OF_DISTRIBUTION is counted as passed here, so these are upper bounds.\n")
    if fused and "fused_thresholds" in af and af["fused_thresholds"] != fused.get("thresholds"):
        a("**Stale:** these figures were measured against an earlier fused detector (its thresholds are not the served "
          "ones); re-run `adaptive_fused` for the served verdict.\n")
    a("| attack | budget | n | fooled % | fooled, not ADVERSARIAL % | fooled and answered CLEAN % | "
      f"{served} PGD-20 robust accuracy % (ceiling) |")
    a("|---|---|---|---|---|---|---|")
    ceil = af.get("robust_accuracy_pgd20_ceiling", {})
    for r in af["rows"]:
        budget = "linf_" + str(r["eps_255"])
        a(f"| {r['attack']} | {r['eps_255']}/255 | {r['n']} | {pct(r['fooled'])} | {pct(r['fooled_not_adversarial'])} | "
          f"{pct(r['fooled_and_clean'])} | {pct(ceil.get(budget))} |")
    plain = ((fused or {}).get("pgd20_fooled_and_clean") or {}).get("linf_8", {}).get("fused")
    if plain is not None:
        a(f"\nThese attacks are not optimal: the detector term holds them back at large budgets, and plain PGD-20 at "
          f"8/255 (non-adaptive, section above) is fooled and answered CLEAN on {pct(plain)} % of AdvTest. Against an "
          "attacker who knows the bundle the verdict therefore lets through at least the larger of the two figures.")
    a("")


def ood_section(o, a):
    if not o:
        return
    a("\n## Out of distribution\n")
    acc = ", ".join(f"{k} {v}" for k, v in o["accepts"].items())
    a(f"`{o['command']}`. An input is OUT_OF_DISTRIBUTION (not an attack verdict; the policy's `out_of_distribution` "
      f"action applies) when its DICOM header or colour contradicts [accepts] ({acc}), or when the squared Mahalanobis "
      f"distance of its image statistics and penultimate features ({o['vector']}; Ledoit-Wolf Gaussian on the "
      f"{o['training_images']} training images) exceeds {f3(o['threshold'])}, the out-of-fold "
      f"{100 * (1 - o['calibrated_fpr']):.1f}th percentile of the training images. The first rate below is of the "
      f"image-statistics score alone; the header rule comes on top in the sidecar"
      + (", and the colour rule is in the second" if "with_colour_rule_rate" in o["rows"][0] else
         " (and the colour rule, where [accepts] sets one)") + ".\n")
    tc = o.get("training_chroma")
    if tc:
        a(f"Mean chroma of the training files: {tc['min']:.3f} to {tc['max']:.3f} (median {tc['median']:.3f}); "
          f"{tc['contradicting_accepts']} contradict [accepts].\n")
    colour = "with_colour_rule_rate" in o["rows"][0]
    a("| images | n | out of distribution % |" + (" with the colour rule % |" if colour else "") + " median score |")
    a("|---|---|---|" + ("---|" if colour else "") + "---|")
    for r in o["rows"]:
        a(f"| {r['set']} | {r['n']} | {pct(r['ood_rate'])} |" + (f" {pct(r['with_colour_rule_rate'])} |" if colour else "")
          + f" {r['median_score']:.1f} |")
    listed = o.get("clean_test_over_threshold")
    if listed:
        a(f"\nClean official test images over the threshold, highest first (to look at: what the score calls unfamiliar "
          f"in the set it should accept; the training images' out-of-fold median score is {o['out_of_fold_median']:.1f}): "
          + ", ".join(f"`{x['file']}` (class {x['label']}, {x['score']:.1f})" for x in listed) + ".")
    a("\nSuccessful PGD-20 examples against the served classifier (AdvTest) answered OUT_OF_DISTRIBUTION instead of being "
      "left to the adversarial detectors: " + ", ".join(
          f"{r['budget']} {pct(r['ood_rate'])} (n={r['n_successful']})" for r in o.get("pgd20_successful", [])) + ".\n")
