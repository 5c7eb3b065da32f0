"""The fused stage's additions to advtest_sample.json (the Rust parity test's inputs): the
fused and residual scores of every item, whether the cascade skips feature squeezing for
it, and a few successful C&W examples the fused verdict flags ADVERSARIAL.
"""
from __future__ import annotations

import numpy as np

from . import contract, detectors, residual, sample


def add_to_sample(out_dir: str, clf, dets, resid_model, model, threshold: float, cw: list, cascade, per_kind: int = 3) -> None:
    """The fused score of each advtest_sample.json item, for the Rust parity test, and up to
    `per_kind` successful C&W AdvTest examples that the fused detector flags ADVERSARIAL
    (a quarter of the way from the threshold to 1, as tests/common picks its flagged
    input), so that the tests have a flagged input under the fused verdict; each item's
    `cascade_skip` says whether the cascade skips feature squeezing for it."""
    cheap, skip_below, cheap_cols = cascade
    smp = sample.Sample(out_dir)
    smp.drop("cw")
    from .fused import Inputs, base_scores, fused_score  # the stage imports this module

    pixels = smp.pixels()
    inp = Inputs(clf, pixels)
    served = clf.served(pixels)
    if not np.array_equal(served, pixels):
        # A bundle that rounds inputs (quantize_bits): the items become what the sidecar
        # reads, and every value the earlier stages stored is recomputed from them.
        smp.set_field("pixels", [sample.fmt32(p) for p in served])
        smp.set_field("logits", inp.logits.tolist())
        smp.set_field("features", inp.feats.tolist())
        for key, v in detectors.score_all(dets, inp.logits, inp.feats).items():
            smp.add_scores(contract.name_of_key(key), v)
        smp.add_scores(contract.name_of_key("squeeze"), inp.squeeze)
    base = base_scores(dets, resid_model, inp)
    X = inp.matrix()
    s, skip = fused_score(model, X), fused_score(cheap, X[:, cheap_cols]) < skip_below
    smp.add_scores(contract.name_of("fused"), s)
    smp.add_scores(contract.name_of("residual_statistics"), base[2])
    smp.set_field("cascade_skip", [bool(k) for k in skip])
    if cw:
        xc = np.stack([c[0] for c in cw])
        ci = Inputs(clf, xc)
        base = detectors.score_all(dets, ci.logits, ci.feats)
        base["residual"] = residual.score(resid_model, ci.residual_features)
        X = ci.matrix()
        fs, skip = fused_score(model, X), fused_score(cheap, X[:, cheap_cols]) < skip_below
        # One example for a full-size input (a 224 px item is about 1.5 MB of JSON).
        per_kind = per_kind if xc[0].size <= 3 * 64 * 64 else 1
        for j in [j for j in np.argsort(-fs) if fs[j] > threshold + 0.25 * (1 - threshold)][:per_kind]:
            _, index, label, file = cw[j]
            it = sample.item("cw", "cw", "l2_c1", index, file, label, clf.served(xc[j]), ci.logits[j], ci.feats[j],
                             {**{k: v[j] for k, v in base.items()}, "squeeze": ci.squeeze[j], "fused": fs[j]})
            it["cascade_skip"] = bool(skip[j])
            smp.append(it)
    smp.write()
