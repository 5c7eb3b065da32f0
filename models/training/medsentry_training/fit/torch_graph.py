"""The fitted classifier.onnx as a PyTorch module, so that gradient attacks run white-box
through the user's own graph (onnx2torch), wrapped like the pipeline's own models
(`nets.Normalized`): it takes [0, 1] NCHW pixels, applies the bundle's mean/std and layout,
and returns (logits, features).

A graph that answers probabilities gets logits = log(p) (softmax(log p) = p, so the
sidecar's probabilities and every logit-based detector score see the same numbers: the
Rust side does the same, src/engine). `check_against_onnxruntime` holds the conversion to
ONNX Runtime's outputs on real images.
"""
from __future__ import annotations

import re

import numpy as np
import onnx
import torch
from torch import nn

from ..nets import Normalized
from .graph import FEATURES_OUTPUT, GraphError, InputSpec, spec_of, to_graph_input

# Smallest probability taken before the log: keeps log(p) finite for a saturated softmax
# (the same constant as the Rust side's).
MIN_PROBABILITY = 1e-30


def inline_constant_identities(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where `Identity(initializer)` nodes (the torch exporter writes them for shared
    or deduplicated weights) become initializers: onnx2torch reads conv weights and biases
    only from initializers. Same function; used for the conversion only, never served."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {i.name: i for i in g.initializer}
    keep = []
    for n in g.node:
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] != FEATURES_OUTPUT:
            t = onnx.TensorProto()
            t.CopyFrom(inits[n.input[0]])
            t.name = n.output[0]
            g.initializer.append(t)
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    return out


class OnnxNet(nn.Module):
    """The converted graph: normalised NCHW input -> (logits, features)."""

    def __init__(self, graph_module: nn.Module, spec: InputSpec, output_index: int, features_index: int):
        super().__init__()
        self.graph = graph_module
        self.layout, self.scores = spec.layout, spec.scores
        self.output_index, self.features_index = output_index, features_index
        self.feature_dim = spec.feature_dim

    def forward(self, x):
        if self.layout == "nhwc":
            x = x.permute(0, 2, 3, 1)
        outs = self.graph(x)
        scores, feats = outs[self.output_index], outs[self.features_index]
        if self.scores == "probabilities":
            scores = torch.log(scores.clamp_min(MIN_PROBABILITY))
        return scores, feats


def convert(model: onnx.ModelProto) -> tuple[nn.Module, InputSpec]:
    """(Normalized module in eval mode with frozen parameters, its InputSpec) for a graph
    written by `fit`; GraphError naming the operator when onnx2torch cannot convert it."""
    from onnx2torch import convert as o2t
    spec = spec_of(model)
    try:
        gm = o2t(inline_constant_identities(model))
    except NotImplementedError as e:  # onnx2torch: "Converter is not implemented (OperationDescription(...))"
        m = re.search(r"operation_type='([^']*)', version=(\d+)", str(e))
        what = f"operator {m.group(1)} (opset {m.group(2)})" if m else str(e)
        raise GraphError(f"onnx2torch cannot convert {what}, so the graph cannot be attacked white-box; "
                         "re-export the model without it (e.g. a decomposed activation)") from None
    except Exception as e:  # noqa: BLE001 - anything else onnx2torch raises names the node
        raise GraphError(f"onnx2torch failed on the graph: {type(e).__name__}: {e}") from None
    names = [o.name for o in model.graph.output]
    net = OnnxNet(gm, spec, names.index(spec.output), names.index(FEATURES_OUTPUT))
    model_t = Normalized(net, spec.mean, spec.std).eval()
    for p in model_t.parameters():
        p.requires_grad_(False)
    return model_t, spec


def load_onnx_model(path: str):
    """advcommon.load_ckpt for an .onnx file: (model, checkpoint-like dict)."""
    model, spec = convert(onnx.load(path))
    ck = {"arch": "onnx", "channels": spec.channels, "labels": list(range(spec.classes)), "mean": spec.mean,
          "std": spec.std, "epoch": None, "harden": None}
    return model, ck


def check_against_onnxruntime(onnx_bytes: bytes, model: nn.Module, spec: InputSpec, x01: np.ndarray) -> float:
    """Max |ONNX Runtime - PyTorch twin| over logits and features of x01."""
    import onnxruntime as ort
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    scores, feats = sess.run([spec.output, FEATURES_OUTPUT], {spec.input: to_graph_input(x01, spec)})
    if spec.scores == "probabilities":
        scores = np.log(np.maximum(scores, MIN_PROBABILITY))
    with torch.no_grad():
        tl, tf = model.features(torch.from_numpy(x01))
    return max(float(np.abs(scores - tl.numpy()).max()), float(np.abs(feats - tf.numpy()).max()))
