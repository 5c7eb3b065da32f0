"""Experiment (not a stage): does a one-hidden-layer combiner (combiner_heads.py's `mlp`)
hold up against the adaptive attacker as well as the served linear one?

On chest a combiner with 32 ReLU units (alpha 1) caught more of every small-budget and
smooth row on AdvTest than the served logistic regression (combiner_heads.py). A combiner
that bends around the seen examples may also be easier to walk around. Here both are
attacked by adaptive_fused's white-box attacks (8/255, 40 steps, its three lambdas; the
whole verdict differentiable, the MLP too) on the first N clean-correct AdvTest images, and
each attack is re-scored exactly by the combiner it was aimed at. The MLP is fitted on all
of AdvTrain (the fused stage's attack caches) and thresholded at the 1 and 5 % quantiles of
its out-of-fold clean AdvTrain scores, as the served combiner is.

    cd models/training && .venv/bin/python experiments/mlp_adaptive.py DATASET [N] [KIND ...]

Measured 2026-12-04 on chest (one core, about 3 minutes per kind and combiner for 265
images). Fooled and not ADVERSARIAL, linear (served) -> MLP; fooled by either alike:
  all 265 clean-correct AdvTest images: fused-aware 17.4 -> 26.0 % (fooled 50.9 %),
      fused-aware-lowpass 22.6 -> 20.8 % (fooled 24.5 %)
  the first 96 (mostly NORMAL, the file order): fused-aware 36.5 -> 49.0 %,
      fused-aware-lowpass-8 27.1 -> 26.0 %
The MLP gains on the non-adaptive rows and loses 8.6 points on the worst adaptive kind,
which is the figure the issue's 25 % target reads: not served. (The served linear
combiner's fused-aware row here, 17.4 %, is under its REPORT.md's 23.4 % from the GPU;
adaptive runs vary by device, README "Adaptive".)
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from combiner_heads import Mlp, Xa, Xc, evaluate_oof, s  # noqa: E402
from common import adaptive_pass  # noqa: E402
from medsentry_training import adaptive_fused as A, advcommon as C, detectors  # noqa: E402

n = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2].isdigit() else 96
kinds = [k for k in sys.argv[2:] if not k.isdigit()] or ["fused-aware", "fused-aware-lowpass-8"]
out_dir = C.default_bundle_dir(s.spec)
net, _ = C.load_ckpt(C.ckpt_path(s.spec, "hardened"))
net.eval()

oc, _ = evaluate_oof(lambda: Mlp(1.0))
mlp = Mlp(1.0).fit(Xc, Xa, None)
thresholds = {f"fpr_{p}": float(1 / (1 + np.exp(-detectors.threshold_at(oc, p)))) for p in (0.01, 0.05)}


class TorchMlp(A.TorchFused):
    """The served pipeline's differentiable verdict with the MLP as its combiner."""

    def __init__(self):
        super().__init__(out_dir)
        t = lambda v: torch.tensor(np.asarray(v), dtype=torch.float32)  # noqa: E731
        self.mean, self.scale = t(mlp.sc.mean_), t(mlp.sc.scale_)
        self.w1, self.b1 = t(mlp.m.coefs_[0]), t(mlp.m.intercepts_[0])
        self.w2, self.b2 = t(mlp.m.coefs_[1][:, 0]), t(mlp.m.intercepts_[1][0])
        self.fused = dict(self.fused, thresholds=thresholds)

    def combiner_logit(self, inputs):
        return torch.relu(((inputs - self.mean) / self.scale) @ self.w1 + self.b1) @ self.w2 + self.b2


def mlp_probability(X):
    return 1 / (1 + np.exp(-mlp.score(X)))


x_te, y_te = s.x[s.te], s.y[s.te]
ok = np.flatnonzero(s.ct.pred == y_te)[:n]
print(f"{s.spec.name}: {len(ok)} clean-correct AdvTest images, 8/255, 40 steps; MLP thresholds {thresholds}", flush=True)
for name, tf, score in (("linear (served)", A.TorchFused(out_dir), None), ("mlp", TorchMlp(), mlp_probability)):
    for kind in kinds:
        fooled, passed1, passed5 = adaptive_pass(net, tf, s.clf, x_te[ok], y_te[ok], 8, 40, kind, score)
        print(f"{name} {kind}: fooled {100 * fooled.mean():.1f}%, fooled and not ADVERSARIAL {100 * passed1.mean():.1f}%, "
              f"answered CLEAN {100 * passed5.mean():.1f}%", flush=True)
