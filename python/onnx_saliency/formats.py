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

`keep_deployed_forward`: a model in a deployed format (`deployed_format`: float16/bfloat16
tensors or quantized ops) keeps a copy of its own forward pass, as loaded, and the explainer
computes the logits it returns with it (`deployed_forward` merges it into the explainer graph).
Canonicalisation folds the weights' DequantizeLinear and the backward reads intermediate
tensors, so ONNX Runtime optimises the canonical forward differently from the bare model (it
fuses QDQ convolutions into integer ones, DynamicQuantizeLinear→ConvInteger→Mul chains and
drops float16 Cast pairs only where nothing else reads the tensors); the copy, read by the
logits output alone, is optimised exactly as the bare model, so its logits are the deployed
model's, bit for bit. The backward keeps reading the canonical forward.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import onnx
from onnx import helper, numpy_helper, shape_inference

from .graph import NARROW_FLOATS, attr_text, attrs_of, rename_tensors
from .runtime import Weights, is_placeholder

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
    auto_pad = attr_text(node, "auto_pad", "NOTSET")
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


# -- the deployed forward pass -------------------------------------------------------------------

DEPLOYED = "deployed/"   # the prefix of the deployed forward's names in the explainer graph
# quantized ops of the default and com.microsoft domains (any QLinear* op besides these)
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                           "MatMulInteger", "ConvInteger", "QGemm", "DynamicQuantizeMatMul",
                           "MatMulIntegerToFloat", "QAttention", "DynamicQuantizeLSTM"})


def deployed_format(model: onnx.ModelProto) -> str | None:
    """"quantized" when a node of the main graph is a quantized op (QUANTIZED_OPS or any
    QLinear* op), "float16" when a tensor is float16 or bfloat16 (an initializer, a Constant's
    value, a typed graph input, output or value_info, a Cast's target type); else None (a
    float32 model, whose canonical forward gives its own logits)."""
    graph = model.graph
    if any(n.op_type in QUANTIZED_OPS or n.op_type.startswith("QLinear") for n in graph.node):
        return "quantized"
    narrow = any(t.data_type in NARROW_FLOATS for t in graph.initializer) or any(
        v.type.tensor_type.elem_type in NARROW_FLOATS
        for v in [*graph.input, *graph.output, *graph.value_info])
    for node in graph.node:
        for a in node.attribute:
            cast = node.op_type == "Cast" and a.name == "to" and a.i in NARROW_FLOATS
            narrow = narrow or cast or (a.HasField("t") and a.t.data_type in NARROW_FLOATS)
    return "float16" if narrow else None


def keep_deployed_forward(state: Canonicalization) -> None:
    """Where asked (`state.keep_deployed`) and the model is in a deployed format: a copy of the
    model as loaded, in `state.deployed` (after choose_output: its forward to the explained
    logits; after convert_opset: at the opset the explainer graph has; before any rewrite of
    its nodes). Its Constant nodes become initializers, as ONNX Runtime does when it loads a
    model; large initializers stay placeholders (held once, with the canonical model's)."""
    from .canonical import Canonicalization, constants_to_initializers

    if not state.keep_deployed or deployed_format(state.model) is None:
        return
    twin = onnx.ModelProto()
    twin.CopyFrom(state.model)
    constants_to_initializers(Canonicalization(twin))
    state.deployed = twin


def image_feed(model: onnx.ModelProto, input_name: str) -> str:
    """The tensor a canonical model's own nodes read in place of its image input: the float16
    Cast's output (`float32_image_input`), else the NHWC Transpose's (`channels_first_input`),
    else the input itself."""
    made = {o for n in model.graph.node for o in n.output}
    for suffix in ("float16", "bfloat16", "nhwc"):
        if f"{input_name}/{suffix}" in made:
            return f"{input_name}/{suffix}"
    return input_name


def deployed_forward(twin: onnx.ModelProto, image: str, logits: str, weights: Weights,
                     dynamic: bool
                     ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], Weights]:
    """The deployed forward (`keep_deployed_forward`'s copy) as nodes and initializers of an
    explainer graph: (nodes, initializers, {placeholder: array}). Every name goes under
    DEPLOYED but the explained logits, written to `logits`. The copy reads `image`
    (`image_feed`: for a float16 input, the same Cast to float16 the canonical forward reads)
    through Max(x, x). Nothing is shared with the canonical forward, so that no tensor of the
    copy has a reader outside it (below); its placeholders, renamed, read the same arrays
    (`weights`: held once in memory). `dynamic`: the explainer runs at any batch; a model fixed
    to a batch then has its constant Reshape shapes that start with that batch start with 0
    (copy the dim), as canonical.make_batch_dynamic does.

    What ONNX Runtime would otherwise do (measured on the float16 EfficientNet-Lite0 and text
    classifier, 2e-6 and 8.5e-4 off): its common-subexpression elimination merges nodes of the
    copy with equal canonical ones (the same op on the image and on a weight of one name), and
    its float16 Cast insertion gives a weight read by both forwards one float32 copy, whose
    two readers then keep the Conv fusions that need a single reader from happening. Max(x, x)
    is an exact identity that ONNX Runtime neither removes nor finds in the canonical graph."""
    graph = twin.graph
    inits = {t.name for t in graph.initializer}
    (inp,) = [i for i in graph.input if i.name not in inits]
    (out,) = graph.output
    dim0 = inp.type.tensor_type.shape.dim[:1]
    fixed = dim0[0].dim_value if dim0 and dim0[0].HasField("dim_value") else 0
    old_batch = fixed if fixed > 0 and dynamic else None
    shapes = {n.input[1] for n in graph.node if n.op_type == "Reshape" and len(n.input) > 1}
    apart = DEPLOYED + inp.name
    nodes = [helper.make_node("Max", [image, image], [apart], name=apart)]
    rename = {inp.name: apart, out.name: logits}
    tensors, aliases = [], {}
    for t in graph.initializer:
        value = None
        if old_batch is not None and t.name in shapes and not is_placeholder(t):
            shape = numpy_helper.to_array(t)
            if shape.ndim == 1 and shape.size > 1 and shape[0] == old_batch:
                value = shape.copy()
                value[0] = 0
        rename[t.name] = DEPLOYED + t.name
        if value is not None:
            tensors.append(numpy_helper.from_array(value, rename[t.name]))
            continue
        copy = onnx.TensorProto()
        copy.CopyFrom(t)
        copy.name = rename[t.name]
        if is_placeholder(t):
            aliases[copy.name] = weights[t.name]
        tensors.append(copy)
    for node in graph.node:
        for o in filter(None, node.output):
            rename.setdefault(o, DEPLOYED + o)
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = DEPLOYED + node.name
        rename_tensors(copy, rename)
        nodes.append(copy)
    return nodes, tensors, aliases


__all__ = ["deployed_format", "deployed_forward", "float32_image_input", "image_feed",
           "keep_deployed_forward", "type_quantized_ops"]
