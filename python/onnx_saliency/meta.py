"""Meta-saliency (docs/methods.md §4), inside the explainer graph.

One plain SGD step on every parameter towards the explained class c, then the base method on the
stepped model, in ONE graph:

    g_z = softmax(z) − onehot(c)                    ∂CE(z, c)/∂z at the logits z
    dθ  = the backward walk of g_z to every parameter (Conv dW/dB, Gemm/MatMul dW/dC, BN dγ/dβ),
          run on g_z / max|g_z| with the scale folded into the step (no denormal floats)
    θ'  = θ − η dθ                                  runtime tensors; the model's weights untouched
    then a renamed copy of the forward graph reads θ' instead of θ, and the base method's walk
    runs over that copy, seeded on the copy's logits with the same class c.

BN statistics stay frozen (eval mode). The graph above is built for one image (static batch 1)
and `per_image` wraps it in a Scan over the batch: one step per image, as the method defines,
with nothing shared between the images of a batch.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .backward.rules import GRADIENT
from .backward.walk import backward
from .canonical import symbolic_batch
from .errors import ModelError
from .graph import GraphBuilder, GraphIndex

PREFIX = "meta/"
ONE = "one_image/"   # the per-image graph's names for the outer graph's inputs and outputs
PARAMETER_SLOTS = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1,), "BatchNormalization": (1, 2)}


def parameters(index: GraphIndex) -> list[str]:
    """Float initializers that are weights, biases or BN affine parameters."""
    found = []
    for node in index.nodes:
        for slot in PARAMETER_SLOTS.get(node.op_type, ()):
            if slot < len(node.input) and node.input[slot] in index.initializers \
                    and index.is_float(node.input[slot]) and node.input[slot] not in found:
                found.append(node.input[slot])
    return found


def sgd_step(b: GraphBuilder, index: GraphIndex, logits: str, onehot: str, lr: float
             ) -> dict[str, str]:
    """{parameter: its stepped value θ − η ∂CE/∂θ} (parameters the loss reaches)."""
    if (index.rank(logits) or 0) != 2:
        raise ModelError("meta=True needs [N, classes] logits (a classifier).")
    ce_grad = b.op("Sub", b.op("Softmax", logits, axis=1), onehot)
    # walk a unit-scaled signal: for a confident model softmax − onehot is ~1e-30 and the whole
    # walk would run on denormal floats (10-100x slower); the step is linear in the signal, so
    # the scale goes back into the step size
    peak = b.reduce("ReduceMax", b.op("Abs", ce_grad), [0, 1], keepdims=False)
    scale = b.op("Where", b.op("Greater", peak, b.const(np.float32(0))), peak, b.const(np.float32(1)))
    params = parameters(index)
    grads = backward(b, index, GRADIENT, {logits: b.op("Div", ce_grad, scale)}, params)
    step = b.op("Mul", scale, b.const(np.float32(lr)))
    # a step below 1e-20 moves no float32 weight (far under half an ulp) but would fill the
    # products with denormals: take it as 0
    step = b.op("Where", b.op("Less", step, b.const(np.float32(1e-20))), b.const(np.float32(0)), step)
    updated = {}
    for p, g in grads.items():
        if g is None:
            continue
        # on flat views: ONNX Runtime 1.32's Mul by a scalar is ~35x slower on shapes that end
        # in 1s ([K, C, 1, 1] of every 1x1 conv) than on the same data flattened
        flat = b.op("Sub", b.op("Reshape", p, b.ints([-1])),
                    b.op("Mul", b.op("Reshape", g, b.ints([-1])), step))
        updated[p] = b.op("Reshape", flat, b.ints(index.static_shape(p)))
    return updated


def stepped_copy(model: onnx.ModelProto, forward_nodes: list[onnx.NodeProto],
                 updated: dict[str, str]) -> dict[str, str]:
    """Append a renamed copy of `forward_nodes` reading the updated parameters; returns the map
    original tensor -> its copy (shapes copied into value_info)."""
    produced = {o for n in forward_nodes for o in n.output if o}
    rename = {t: PREFIX + t for t in produced}
    source = {**rename, **updated}
    for node in forward_nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = PREFIX + node.name
        for i, name in enumerate(node.input):
            copy.input[i] = source.get(name, name)
        for i, name in enumerate(node.output):
            copy.output[i] = rename.get(name, name)
        model.graph.node.append(copy)
    infos = {vi.name: vi for vi in [*model.graph.value_info, *model.graph.output]}
    for original, copied in rename.items():
        if original in infos:
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(infos[original])
            vi.name = copied
            model.graph.value_info.append(vi)
    inits = {t.name: t for t in model.graph.initializer}
    for param, new in updated.items():
        model.graph.value_info.append(helper.make_tensor_value_info(
            new, inits[param].data_type, list(inits[param].dims)))
    return rename


def per_image(model: onnx.ModelProto) -> onnx.ModelProto:
    """The batch-1 explainer `model` as the body of a Scan over dim 0 of every graph input:
    inputs [N, …] and outputs [N, …] as before, each image with its own SGD step. The weights
    move into the body (one copy, no outer-scope reads), the metadata stays outside."""
    graph = model.graph
    inputs, outputs = [i.name for i in graph.input], [o.name for o in graph.output]
    rename = {name: ONE + name for name in inputs + outputs}
    scan = helper.make_node("Scan", inputs, outputs, name="per_image", num_scan_inputs=len(inputs))
    attr = scan.attribute.add()      # filled in place: the weights are copied once
    attr.name, attr.type = "body", onnx.AttributeProto.GRAPH
    body = attr.g
    body.name = "one_image"
    axis0 = "one_image/axis0"
    body.initializer.append(onnx.numpy_helper.from_array(np.array([0], np.int64), axis0))
    for vi in graph.input:        # scan slices drop the batch dim; put it back
        sliced = onnx.ValueInfoProto()
        sliced.CopyFrom(vi)
        sliced.name = ONE + "slice/" + vi.name
        del sliced.type.tensor_type.shape.dim[:1]
        body.input.append(sliced)
        body.node.append(helper.make_node("Unsqueeze", [sliced.name, axis0], [rename[vi.name]],
                                          name=ONE + "unsqueeze/" + vi.name))
    for node in graph.node:
        copy = body.node.add()
        copy.CopyFrom(node)
        for i, name in enumerate(node.input):
            copy.input[i] = rename.get(name, name)
        for i, name in enumerate(node.output):
            copy.output[i] = rename.get(name, name)
    for vi in graph.output:
        body.node.append(helper.make_node("Squeeze", [rename[vi.name], axis0],
                                          [ONE + "slice/" + vi.name], name=ONE + "squeeze/" + vi.name))
        body.output.append(helper.make_tensor_value_info(ONE + "slice/" + vi.name,
                                                         vi.type.tensor_type.elem_type, None))
    body.initializer.extend(graph.initializer)
    wrapped = onnx.ModelProto()
    wrapped.ir_version = model.ir_version
    wrapped.opset_import.extend(model.opset_import)
    wrapped.metadata_props.extend(model.metadata_props)
    wrapped.producer_name = model.producer_name
    wrapped.graph.name = graph.name
    wrapped.graph.node.append(scan)
    wrapped.graph.input.extend(graph.input)
    wrapped.graph.output.extend(graph.output)
    for vi in [*wrapped.graph.input, *wrapped.graph.output]:
        symbolic_batch(vi)
    return wrapped
