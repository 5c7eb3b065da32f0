"""Small ResNet-style classifiers that train from scratch on 2 CPU cores.

forward() returns (logits, features): the penultimate features are a graph output so that
the sidecar's detectors need no second forward pass.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem (stride 2) + 3 stages of 2 blocks (widths w, 2w, 4w) + global pool + linear."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, stem_stride: int = 2):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        layers, cin = [], width
        for i, cout in enumerate([width, 2 * width, 4 * width]):
            stride = 1 if i == 0 else 2
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)
        self.feature_dim = cin

    def forward(self, x):
        feats = F.adaptive_avg_pool2d(self.body(self.stem(x)), 1).flatten(1)
        return self.fc(feats), feats


class SimpleCNN(nn.Module):
    """A plain VGG-style CNN: the surrogate of another architecture for transfer attacks."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32):
        super().__init__()
        chans = [in_channels, width, 2 * width, 4 * width]
        blocks = []
        for a, b in zip(chans, chans[1:]):
            blocks += [nn.Conv2d(a, b, 3, 1, 1), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2)]
        self.body = nn.Sequential(*blocks)
        self.fc = nn.Linear(chans[-1], num_classes)
        self.feature_dim = chans[-1]

    def forward(self, x):
        feats = F.adaptive_avg_pool2d(self.body(x), 1).flatten(1)
        return self.fc(feats), feats


class Normalized(nn.Module):
    """Wraps a net so it takes [0, 1] pixels (what attacks perturb) and returns logits only."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return self.features(x)[0]

    def features(self, x):
        fast = self.__dict__.get("_fast")
        if fast is None or x.shape[0] < self._fast_min_batch:
            return self.features_exact(x)
        logits, feats = fast(((x - self.mean) / self.std).to(self._fast_device))
        return logits.to(x.device), feats.to(x.device)

    def features_exact(self, x):
        """features() on the net itself (CPU), never the accelerator's copy: what the
        detectors are fitted on and the Rust side recomputes to parity."""
        return self.net((x - self.mean) / self.std)

    def accelerate(self, device: str, min_batch: int = 16) -> "Normalized":
        """Run forward() and features() on a copy of the net on `device` (say "cuda") for
        batches of at least min_batch. Inputs and outputs stay on the caller's device and
        autograd flows through the copies, so attack code written for the CPU runs
        unchanged; the copy is not a registered submodule, so parameters(), state_dict()
        and the device torchattacks reads from the parameters still see the CPU net.
        Small batches (per-image searches) stay on the CPU, where launch latency is lower.
        TF32 is switched off so that the copy computes in float32 like the CPU."""
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        fast = copy.deepcopy(self.net).to(device).eval()
        for p in fast.parameters():
            p.requires_grad_(False)
        object.__setattr__(self, "_fast", fast)
        object.__setattr__(self, "_fast_device", torch.device(device))
        object.__setattr__(self, "_fast_min_batch", min_batch)
        return self
