"""Small real classifiers for the `fit` tests: a CNN trained for a few steps on real chest
X-rays, exported by torch in two layouts a hospital might hand over:

  nchw_logits   NCHW float input, (x - mean) / std outside the graph, logits out;
  nhwc_softmax  NHWC input scaled to [-1, 1] outside the graph, softmax probabilities out.

Both wrap the same weights, so a bundle fitted from either must answer the same.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from medsentry_training import datasets, preprocess

SIZE = 32
MEAN, STD = 0.48, 0.24


class TinyCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc(self.body(x))


class NhwcSoftmax(nn.Module):
    """Takes NHWC in [-1, 1]; the same network inside."""

    def __init__(self, net: TinyCnn):
        super().__init__()
        self.net = net

    def forward(self, x):
        x01 = (x.permute(0, 3, 1, 2) + 1) / 2
        return torch.softmax(self.net((x01 - MEAN) / STD), dim=1)


def chest_files(per_class: int, split: str = "train") -> list:
    root = os.path.join(datasets.SHARED_DATA, "chest_xray_kermany", "images", split)
    out = []
    for c in ("NORMAL", "PNEUMONIA"):
        names = sorted(os.listdir(os.path.join(root, c)))[:per_class]
        out += [(os.path.join(root, c, n), c) for n in names]
    return out


def train_tiny(steps: int = 60, seed: int = 0) -> TinyCnn:
    torch.manual_seed(seed)
    files = chest_files(60)
    x = torch.from_numpy(np.stack([preprocess.load_image(p, "gray", SIZE, SIZE) for p, _ in files]))
    y = torch.tensor([0 if c == "NORMAL" else 1 for _, c in files])
    net = TinyCnn()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net((x - MEAN) / STD), y).backward()
        opt.step()
    return net.eval()


def export(net: TinyCnn, path: str, layout: str) -> None:
    if layout == "nchw_logits":
        module, dummy, names = net, torch.zeros(1, 1, SIZE, SIZE), (["image"], ["scores"])
    else:
        module, dummy, names = NhwcSoftmax(net).eval(), torch.zeros(1, SIZE, SIZE, 1), (["input_1"], ["probs"])
    torch.onnx.export(module, dummy, path, input_names=names[0], output_names=names[1],
                      dynamic_axes={names[0][0]: {0: "n"}, names[1][0]: {0: "n"}}, opset_version=17, dynamo=False)
