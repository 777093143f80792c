"""Canonical passes for deployed number formats: float16 models and quantized (QOperator) ones.

`float32_image_input`: a model whose image input is float16 (onnxconverter-common's
`convert_float_to_float16` without keep_io_types) takes float32 images in the explainer: the
input keeps its name but becomes float32, and a Cast to float16 feeds the original consumers, so
the forward still runs in float16 (logits identical to the model's own for images that float16
holds exactly, e.g. the float16 values the user would have fed) and the user passes float32
arrays as for any model. The backward runs in float32 (graph.GraphBuilder widens).

`type_quantized_ops`: ONNX shape inference knows no com.microsoft op, so the outputs of the
QOperator ops ONNX Runtime's quantizer writes (QLinearAdd, QLinearMul, QLinearSigmoid,
QLinearLeakyRelu, QLinearGlobalAveragePool, QLinearAveragePool, QLinearConcat, and its
QuantizeLinear/DequantizeLinear, QGemm) and everything after them would carry no type or shape. This
pass gives them theirs (from the ops' definitions in ONNX Runtime's contrib schema) and infers
the standard ops after them again, until nothing more is learnt.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import onnx
from onnx import helper, shape_inference

from .graph import attrs_of

if TYPE_CHECKING:
    from .canonical import Canonicalization

MS = "com.microsoft"


def float32_image_input(state: Canonicalization) -> None:
    """A float16 (or bfloat16) [N,C,H,W] image input becomes float32 with a Cast to its old
    type in front of its consumers (named `<input>/float16`); other models are left as
    they are."""
    model = state.model
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    narrow = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type not in narrow:
        return
    inp = inputs[0]
    kind = inp.type.tensor_type.elem_type
    inner = f"{inp.name}/{'float16' if kind == onnx.TensorProto.FLOAT16 else 'bfloat16'}"
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == inp.name:
                node.input[i] = inner
    for out in model.graph.output:
        if out.name == inp.name:   # the image itself an output: nothing to explain in it
            return
    inp.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    model.graph.node.insert(0, helper.make_node("Cast", [inp.name], [inner],
                                                name=f"osal/{inner}", to=kind))


# -- com.microsoft types and shapes -----------------------------------------------------------

def _broadcast(a, b):
    if a is None or b is None:
        return None
    out = []
    for i in range(max(len(a), len(b))):
        da = a[len(a) - 1 - i] if i < len(a) else 1
        db = b[len(b) - 1 - i] if i < len(b) else 1
        if da == 1:
            out.append(db)
        elif db == 1 or da == db:
            out.append(da)
        else:
            out.append(da if isinstance(da, str) else db if isinstance(db, str) else None)
    return out[::-1]


def _pool_shape(node, x):
    a = attrs_of(node)
    kernel = list(a["kernel_shape"])
    n = len(kernel)
    last = bool(a.get("channels_last", 0))
    spatial = list(x[1:1 + n]) if last else list(x[2:2 + n])
    strides = list(a.get("strides", [1] * n))
    pads = list(a.get("pads", [0] * 2 * n))
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    ceil = bool(a.get("ceil_mode", 0))
    out = []
    for j, size in enumerate(spatial):
        if not isinstance(size, int):
            out.append(None)
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(-(-size // strides[j]))
        else:
            p = 0 if auto_pad == "VALID" else pads[j] + pads[j + n]
            span = (size + p - kernel[j]) / strides[j]
            out.append(int(math.ceil(span) if ceil else math.floor(span)) + 1)
    return [x[0], *out, x[-1]] if last else [x[0], x[1], *out]


def _ms_output(node, known):
    """(elem type, shape or None) of output 0 of a com.microsoft quantized node whose inputs
    are known ({name: (type, shape)}), or None when it cannot be told."""
    def of(i):
        return known.get(node.input[i]) if i < len(node.input) and node.input[i] else None

    op, x = node.op_type, of(0)
    if op in ("QuantizeLinear", "DequantizeLinear"):
        if x is None:
            return None
        if op == "DequantizeLinear":
            scale = of(1)
            return (scale[0] if scale else onnx.TensorProto.FLOAT), x[1]
        zp = of(2)
        return (zp[0] if zp else onnx.TensorProto.UINT8), x[1]
    if op in ("QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax"):
        return None if x is None else (x[0], x[1])
    if op in ("QLinearAdd", "QLinearMul"):
        b = of(3)
        if x is None or b is None:
            return None
        return x[0], _broadcast(x[1], b[1])
    if op == "QLinearGlobalAveragePool":
        if x is None or x[1] is None:
            return None if x is None else (x[0], None)
        shape = list(x[1])
        if attrs_of(node).get("channels_last", 0):
            return x[0], [shape[0], *([1] * (len(shape) - 2)), shape[-1]]
        return x[0], [shape[0], shape[1], *([1] * (len(shape) - 2))]
    if op == "QLinearAveragePool":
        if x is None or x[1] is None:
            return None if x is None else (x[0], None)
        return x[0], _pool_shape(node, list(x[1]))
    if op == "QGemm":
        b = of(3)
        if x is None or b is None or x[1] is None or b[1] is None:
            return None
        a = attrs_of(node)
        m = x[1][1] if a.get("transA", 0) else x[1][0]
        n = b[1][0] if a.get("transB", 0) else b[1][1]
        zp = of(8)
        kind = (zp[0] if zp else onnx.TensorProto.UINT8) if of(7) else onnx.TensorProto.FLOAT
        return kind, [m, n]
    if op == "QLinearConcat":
        parts = [of(i) for i in range(2, len(node.input), 3)]
        if any(p is None for p in parts):
            return None
        shapes = [p[1] for p in parts]
        if any(s is None for s in shapes):
            return parts[0][0], None
        axis = attrs_of(node)["axis"]
        rank = len(shapes[0])
        axis = axis + rank if axis < 0 else axis
        out = list(shapes[0])
        sizes = [s[axis] for s in shapes]
        out[axis] = sum(sizes) if all(isinstance(d, int) for d in sizes) else None
        return parts[0][0], out
    return None


def _value(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, None if shape is None else
                                         [d if d is not None else None for d in shape])


def _known(graph: onnx.GraphProto) -> dict:
    known = {}
    for v in [*graph.input, *graph.value_info, *graph.output]:
        tt = v.type.tensor_type
        if v.type.HasField("tensor_type") and tt.elem_type:
            shape = None
            if tt.HasField("shape"):
                shape = [d.dim_value if d.HasField("dim_value") else
                         (d.dim_param or None) for d in tt.shape.dim]
            known[v.name] = (tt.elem_type, shape)
    for t in graph.initializer:
        known[t.name] = (t.data_type, list(t.dims))
    return known


def type_quantized_ops(state: Canonicalization) -> None:
    """Types and shapes for the outputs of com.microsoft quantized ops, and shape inference
    again after them (see the module docstring); value_info of tensors no node makes (left by
    constant folding) is dropped first."""
    from .canonical import skeleton

    model = state.model
    _drop_stale_value_info(model.graph)
    if not any(n.domain == MS for n in model.graph.node):
        return
    for _ in range(len(model.graph.node) + 1):
        known = _known(model.graph)
        learnt = []
        for node in model.graph.node:
            if node.domain != MS or not node.output or \
                    (known.get(node.output[0]) or (0, None))[1] is not None:
                continue
            found = _ms_output(node, known)
            if found is not None and found != known.get(node.output[0]):
                learnt.append(_value(node.output[0], *found))
                known[node.output[0]] = found
        if not learnt:
            break
        names = {v.name for v in learnt}
        keep = [v for v in model.graph.value_info if v.name not in names]
        del model.graph.value_info[:]
        model.graph.value_info.extend(keep)
        probe = skeleton(model)
        probe.graph.value_info.extend(learnt)
        inferred = shape_inference.infer_shapes(probe, strict_mode=False, data_prop=True)
        outputs = {o.name for o in model.graph.output}
        del model.graph.value_info[:]
        model.graph.value_info.extend(v for v in inferred.graph.value_info
                                      if v.name not in outputs)


def _drop_stale_value_info(graph: onnx.GraphProto) -> None:
    """value_info only for tensors a node makes: a quantizer's value_info for tensors that
    constant folding turned into initializers or dropped survives shape inference."""
    made = {o for n in graph.node for o in n.output}
    keep = [v for v in graph.value_info if v.name in made]
    if len(keep) < len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(keep)


__all__ = ["float32_image_input", "type_quantized_ops"]
