"""Writes tests/fixtures/campaign/residual_parity.json, the numbers the Rust campaign monitor
must reproduce (tests/campaign.rs, `residuals_and_window_scores_match_the_pipeline`): the
pipeline's Laplacian residual (campaign.residuals) of the chest bundle's reference images
with its committed non-targeted UAP added, and the mean pairwise correlation
(campaign.window_score) of the first 2 .. 8 of them, as the monitor's window fills.

    cd models/training && .venv/bin/python tests/make_campaign_parity.py

numpy only; test_formulas.py checks that the committed file is what this writes.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from medsentry_training import campaign  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BUNDLE = "chest-xray-pneumonia"
OUT = os.path.join(REPO, "tests", "fixtures", "campaign", "residual_parity.json")


def build() -> dict:
    with open(os.path.join(REPO, "models", BUNDLE, "reference.json")) as f:
        ref = json.load(f)
    x = np.array([it["pixels"] for it in ref["items"]], dtype=np.float32).reshape(-1, 1, 64, 64)
    uap = np.load(os.path.join(REPO, "tests", "fixtures", "campaign", f"{BUNDLE}__uap__linf_z4.npy"))
    x = np.clip(x + uap, 0, 1).astype(np.float32)
    r = campaign.residuals(x, None)
    return {
        "about": "campaign.residuals of models/chest-xray-pneumonia/reference.json pixels + the committed uap__linf_z4 "
                 "(clipped to [0, 1], float32), and campaign.window_score of the first n; written by "
                 "models/training/tests/make_campaign_parity.py",
        "bundle": BUNDLE,
        "perturbation": "uap__linf_z4",
        "residuals": [[round(float(v), 8) for v in row] for row in r[:2]],
        "window_scores": {str(n): campaign.window_score(r[:n]) for n in range(2, len(r) + 1)},
    }


if __name__ == "__main__":
    with open(OUT, "w") as f:
        json.dump(build(), f)
        f.write("\n")
    print(f"wrote {OUT}")
