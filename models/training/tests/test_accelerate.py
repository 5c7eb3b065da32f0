"""Normalized.accelerate (MEDSENTRY_TORCH_DEVICE): the attack code stays on the CPU while a
copy of the net computes large batches elsewhere. Checked here with the copy on the CPU
itself (the routing, the gradients and what torchattacks sees are device-independent); the
CUDA run is the pipeline's own on a GPU machine.
"""
from __future__ import annotations

import torch
import torchattacks

from medsentry_training.nets import Normalized, SmallResNet


def _pair():
    torch.manual_seed(0)
    net = SmallResNet(1, 2, width=8).eval()
    plain = Normalized(net, [0.5], [0.25]).eval()
    fast = Normalized(net, [0.5], [0.25]).eval().accelerate("cpu", min_batch=4)
    return plain, fast


def test_large_batches_use_the_copy_small_ones_the_net():
    plain, fast = _pair()
    calls = []
    fast._fast.register_forward_hook(lambda *_: calls.append(1))
    x = torch.rand(4, 1, 16, 16)
    fast(x[:3])
    assert calls == []
    fast(x)
    assert calls == [1]


def test_logits_features_and_input_gradients_match_the_plain_model():
    plain, fast = _pair()
    x = torch.rand(6, 1, 16, 16)
    grads = []
    for m in (plain, fast):
        xi = x.clone().requires_grad_(True)
        logits, feats = m.features(xi)
        (logits[:, 1].sum() + feats.square().sum()).backward()
        grads.append((logits.detach(), feats.detach(), xi.grad))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_the_copy_is_invisible_to_parameters_state_dict_and_torchattacks():
    plain, fast = _pair()
    assert len(list(fast.parameters())) == len(list(plain.parameters()))
    assert fast.state_dict().keys() == plain.state_dict().keys()
    atk = torchattacks.PGD(fast, eps=4 / 255, alpha=1 / 255, steps=3, random_start=False)
    assert atk.device == torch.device("cpu")
    x, y = torch.rand(5, 1, 16, 16), torch.tensor([0, 1, 0, 1, 0])
    torch.manual_seed(1)
    a = torchattacks.PGD(plain, eps=4 / 255, alpha=1 / 255, steps=3, random_start=False)(x, y)
    torch.manual_seed(1)
    b = atk(x, y)
    assert torch.allclose(a, b, atol=1e-6)
