"""Does an image on both sides of the AdvTrain/AdvTest split move the verdict's figures?

    cd models/training/experiments && ../.venv/bin/python split_copies.py DATASET

The Kermany chest test set holds byte-identical files under two names
(../shared/data/chest_xray_kermany/SOURCE.md), and the 50/50 split by image put five such
pairs on both sides: the same image is in AdvTrain, which fits the fused detector, and in
AdvTest, which measures it (the pitfall ANCHORS.md names in Ma et al.'s code). The
pneumoniamnist-28 bundle reads the same files at 28 px and has the same five pairs. The
dermoscopy test set has none. Changing the split means making every attack and fit again,
so this measures what the copies do to the committed figures instead: the attacks of the
fused stage (fused_attacks.make_attacks with its settings, and smooth PGD-20) are made
again on the AdvTest copies alone, scored by the served fused detector (its
detector_fused.json, as adaptive_fused re-scores), and each row of report.json is given
again without them. PGD's random start and Square's queries draw differently on 5 images
than on the whole half, so those counts are close to, not equal to, the stage's.

Measured 2026-12-04 (one thread, about 1 minute each):
- chest-xray-pneumonia: none of the copies gives a successful attack at 1 or 2/255. Without
  them: FGSM / BIM / PGD-20 at 4/255 97.9 -> 97.8, 96.1 -> 95.9, 94.1 -> 93.9 %; at 8/255
  -0.0 to -0.1 points; C&W 89.2 % unchanged; Square 89.8 -> 89.5 %; smooth PGD-20 at 4 and
  8/255 18.8 -> 19.4 and 15.4 -> 15.9 % (the copies' smooth examples pass, so they rise).
- pneumoniamnist-28: only C&W has a successful example among the copies (flagged):
  60.8 -> 60.7 %.
No row moves by more than 0.6 points: the copies do not explain the figures. The pipeline's
split now keeps identical files and patients on one side (datasets.copy_groups); the
committed bundles keep their split until they are regenerated, so this script still finds
the five there.
"""
import collections
import hashlib
import json
import sys

import numpy as np
import torch

from common import halves  # first: puts medsentry_training on sys.path
from medsentry_training import advcommon as C, datasets  # noqa: E402
from medsentry_training.adaptive_fused import TorchFused, served_linear  # noqa: E402
from medsentry_training.fused import Inputs, fused_score, successful  # noqa: E402
from medsentry_training.fused_attacks import make_attacks, smooth_pgd  # noqa: E402
from medsentry_training.ood import Classifier  # noqa: E402
from medsentry_training.report_sections import pct  # noqa: E402


def copies_in_advtrain(x: np.ndarray, tr: np.ndarray, te: np.ndarray) -> np.ndarray:
    """The AdvTest indices whose pixels are identical to an AdvTrain image's."""
    digest = [hashlib.sha1(np.ascontiguousarray(img).tobytes()).hexdigest() for img in x]
    by_digest = collections.defaultdict(set)
    for i in tr:
        by_digest[digest[i]].add(int(i))
    return np.array([i for i in te if by_digest.get(digest[i])], dtype=np.int64)


def main(argv):
    spec = datasets.resolve(argv[1])
    bundle = C.default_bundle_dir(spec)
    x, y, tr, te = halves(spec, bundle)
    files = datasets.load_split(spec, "test")[2]
    dup = copies_in_advtrain(x, tr, te)
    print(f"{len(dup)} AdvTest images with a copy in AdvTrain: {', '.join(str(files[i]) for i in dup)}")
    if not len(dup):
        return
    torch.set_num_threads(1)
    clf, tf = Classifier(bundle), TorchFused(bundle)
    fz, thr = served_linear(tf.fused), tf.fused["thresholds"]["fpr_0.01"]
    net, _ = C.load_ckpt(C.ckpt_path(spec, "hardened"))
    xs, ys = clf.served(x[dup]), y[dup]
    clean_pred = Inputs(clf, xs, tf.scales, tf.cooccurrence_t).pred
    made = make_attacks(net, xs, ys, unseen=True)
    made += [("pgd20_smooth", f"linf_{e}", smooth_pgd(net, xs, ys, e / 255)) for e in (4, 8)]
    with open(f"{bundle}/report.json") as f:
        rows = {(r["attack"], r["budget"]): r for r in json.load(f)["fused_detector"]["rows"]}
    for family, budget, xa in made:
        inp = Inputs(clf, xa, tf.scales, tf.cooccurrence_t)
        ok = successful(inp, ys, clean_pred)
        k, flagged = int(ok.sum()), int((ok & (fused_score(fz, inp.matrix(tf.fused["inputs"])) > thr)).sum())
        row = rows.get((family, budget))
        if row is None or k == 0 or row["n_pos"] <= k:
            print(f"{family:13s} {budget:7s} successful among the copies: {k}")
            continue
        n, tpr = row["n_pos"], row["tpr_fpr_0.01"]
        print(f"{family:13s} {budget:7s} TPR {pct(tpr)} % of {n}; copies {k} successful, {flagged} flagged; "
              f"without them {pct((round(tpr * n) - flagged) / (n - k))} % of {n - k}")


if __name__ == "__main__":
    main(sys.argv)
