"""The user's ONNX graph: what it takes, what it answers, and the one output `fit` adds.

Checks that the graph is an image classifier the sidecar can serve (one 4-D float input,
NCHW or NHWC, a static or stated spatial size; one 2-D class output of logits or
probabilities), finds its penultimate features (the input of the Gemm or MatMul that feeds
the class output) and returns a copy of the graph with those features as one more output,
`medsentry_features`. The original outputs must stay bit-identical under ONNX Runtime:
`check_outputs_unchanged` compares them on real inputs and refuses the graph otherwise.
The input spec travels inside the graph as metadata (`medsentry.input`), so a copy of the
file is enough to rebuild the PyTorch twin (torch_graph.py).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

FEATURES_OUTPUT = "medsentry_features"
METADATA_KEY = "medsentry.input"
PASS_THROUGH = {"Softmax", "LogSoftmax", "Identity", "Flatten", "Reshape", "Squeeze", "Dropout", "Cast"}


class GraphError(SystemExit):
    """A graph `fit` cannot serve; the message names the cause."""


@dataclass
class InputSpec:
    """How the model's input is made from a [0, 1] image: bundle.toml [input] and [outputs]."""
    input: str          # name of the graph input
    output: str         # name of the class output
    layout: str         # "nchw" or "nhwc"
    channels: int
    height: int
    width: int
    color: str          # "gray" or "rgb"
    mean: list
    std: list
    scores: str         # "logits" or "probabilities"
    classes: int
    features: str = FEATURES_OUTPUT
    feature_dim: int = 0
    dynamic_batch: bool = True


def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def inspect(model: onnx.ModelProto, *, layout=None, size=None, color=None, mean=None, std=None, scores=None,
            output=None) -> InputSpec:
    """The InputSpec of `model` from its graph and the user's statements; GraphError when the
    graph is not a classifier the sidecar can serve or contradicts what the user said."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1:
        raise GraphError(f"the graph has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                         "an image classifier for the sidecar takes exactly one image tensor")
    inp = inputs[0]
    if inp.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise GraphError(f"input {inp.name!r} is {TensorProto.DataType.Name(inp.type.tensor_type.elem_type)}, not float32")
    dims = _dims(inp)
    if len(dims) != 4:
        raise GraphError(f"input {inp.name!r} has {len(dims)} dimensions {dims}; an image classifier takes a 4-D "
                         "tensor (batch, channels, height, width or batch, height, width, channels)")
    if layout is None:
        nchw, nhwc = dims[1] in (1, 3), dims[3] in (1, 3)
        if nchw == nhwc:
            raise GraphError(f"cannot tell the layout of input {inp.name!r} {dims} from the graph: pass --layout nchw|nhwc")
        layout = "nchw" if nchw else "nhwc"
    c, h, w = (dims[1], dims[2], dims[3]) if layout == "nchw" else (dims[3], dims[1], dims[2])
    if c not in (1, 3):
        raise GraphError(f"input {inp.name!r} {dims} read as {layout.upper()} has {c} channels; 1 or 3 are served")
    for name, d in (("height", h), ("width", w)):
        if d is None and size is None:
            raise GraphError(f"the graph's input {name} is dynamic: pass --size")
        if d is not None and size is not None and d != size:
            raise GraphError(f"--size {size} contradicts the graph's input {name} {d}")
    h = h or size
    w = w or size
    if h != w:
        raise GraphError(f"the input is {h} x {w}; fit handles square inputs only")
    color = color or ("gray" if c == 1 else "rgb")
    if (color == "gray") != (c == 1):
        raise GraphError(f"--color {color} does not fit a {c}-channel input")
    mean = list(mean) if mean is not None else [0.0] * c
    std = list(std) if std is not None else [1.0] * c
    if len(mean) == 1 and c == 3:
        mean = mean * 3
    if len(std) == 1 and c == 3:
        std = std * 3
    if len(mean) != c or len(std) != c or any(s <= 0 for s in std):
        raise GraphError(f"mean {mean} / std {std} do not fit {c} channels (std must be > 0)")

    outs = [o for o in g.output]
    if output is None:
        if len(outs) != 1:
            raise GraphError(f"the graph has {len(outs)} outputs ({', '.join(o.name for o in outs)}): pass --output NAME")
        out = outs[0]
    else:
        match = [o for o in outs if o.name == output]
        if not match:
            raise GraphError(f"--output {output!r} is not an output of the graph ({', '.join(o.name for o in outs)})")
        out = match[0]
    odims = _dims(out)
    if len(odims) != 2:
        raise GraphError(f"output {out.name!r} has shape {odims}; a classifier answers (batch, classes)")
    producer = {o: n for n in g.node for o in n.output}
    if scores is None:
        node = producer.get(out.name)
        while node is not None and node.op_type in ("Identity", "Cast"):
            node = producer.get(node.input[0])
        scores = "probabilities" if node is not None and node.op_type == "Softmax" else "logits"
    return InputSpec(input=inp.name, output=out.name, layout=layout, channels=c, height=h, width=w, color=color,
                     mean=[float(m) for m in mean], std=[float(s) for s in std], scores=scores,
                     classes=odims[1] or 0, dynamic_batch=dims[0] is None)


def penultimate(model: onnx.ModelProto, output: str) -> str:
    """Name of the tensor that feeds the classifier's last linear layer (walking back from
    `output` through softmax, flatten, reshape, identity and dropout)."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name for i in g.initializer}
    name = output
    for _ in range(16):
        node = producer.get(name)
        if node is None:
            break
        if node.op_type == "Gemm":
            return node.input[0] if node.input[0] not in inits else node.input[1]
        if node.op_type == "Add":  # MatMul + bias
            prev = [producer.get(i) for i in node.input if i not in inits]
            mm = [p for p in prev if p is not None and p.op_type == "MatMul"]
            if mm:
                return next(i for i in mm[0].input if i not in inits)
        if node.op_type == "MatMul":
            return next(i for i in node.input if i not in inits)
        if node.op_type not in PASS_THROUGH:
            break
        name = node.input[0]
    raise GraphError(f"no Gemm or MatMul feeds output {output!r} (stopped at "
                     f"{producer[name].op_type if name in producer else 'the graph input'}): "
                     "the penultimate features cannot be found")


def add_features(model: onnx.ModelProto, spec: InputSpec, feature_dim: int) -> onnx.ModelProto:
    """A copy of `model` with the penultimate features as output FEATURES_OUTPUT and the input
    spec as metadata; every original node, initializer and output kept as it was."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    src = penultimate(model, spec.output)
    out.graph.node.append(helper.make_node("Identity", [src], [FEATURES_OUTPUT], name="medsentry_features_identity"))
    out.graph.output.append(helper.make_tensor_value_info(FEATURES_OUTPUT, TensorProto.FLOAT, ["batch", feature_dim]))
    spec.feature_dim = feature_dim
    meta = {p.key: p.value for p in out.metadata_props}
    meta[METADATA_KEY] = json.dumps(asdict(spec))
    del out.metadata_props[:]
    for k, v in meta.items():
        out.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(out)
    return out


def spec_of(model: onnx.ModelProto) -> InputSpec:
    for p in model.metadata_props:
        if p.key == METADATA_KEY:
            return InputSpec(**json.loads(p.value))
    raise GraphError("the graph carries no medsentry.input metadata: it was not written by `fit`")


def to_graph_input(x01: np.ndarray, spec: InputSpec) -> np.ndarray:
    """[0, 1] images (N, C, H, W) -> the graph's input tensor (normalised, in its layout)."""
    mean = np.array(spec.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.array(spec.std, np.float32).reshape(1, -1, 1, 1)
    x = ((x01 - mean) / std).astype(np.float32)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if spec.layout == "nhwc" else x


def feature_dim(model: onnx.ModelProto, spec: InputSpec, x01: np.ndarray) -> int:
    """Runs the graph with the penultimate tensor exposed once to learn its width."""
    import onnxruntime as ort
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    src = penultimate(model, spec.output)
    probe.graph.output.append(helper.make_empty_tensor_value_info(src))
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - the sidecar runs ONNX Runtime: a graph it cannot load is refused
        raise GraphError(f"ONNX Runtime {ort.__version__} cannot load the graph: {str(e).splitlines()[0][-300:]}") from None
    (f,) = sess.run([src], {spec.input: to_graph_input(x01[:2], spec)})
    if f.ndim != 2:
        raise GraphError(f"the penultimate tensor {src!r} has shape {list(f.shape)}, not (batch, features)")
    return int(f.shape[1])


def check_outputs_unchanged(original: bytes, augmented: bytes, spec: InputSpec, x01: np.ndarray) -> int:
    """Runs both graphs on x01 and returns how many output values were compared; GraphError
    unless every original output is bit-identical in the augmented graph."""
    import onnxruntime as ort
    a = ort.InferenceSession(original, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(augmented, providers=["CPUExecutionProvider"])
    names = [o.name for o in a.get_outputs()]
    feed = {spec.input: to_graph_input(x01, spec)}
    ra, rb = a.run(names, feed), b.run(names, feed)
    for n, u, v in zip(names, ra, rb):
        if u.shape != v.shape or not np.array_equal(u, v):
            raise GraphError(f"output {n!r} changed when the feature output was added "
                             f"(max difference {np.abs(u.astype(np.float64) - v).max():.3g})")
    return int(sum(u.size for u in ra))
