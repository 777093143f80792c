"""TSGB: target-selective gradient backprop (METHODS.md §5), as rules of the backward walk.

Conv (TSGB-Conv): ĝ_a = sign(a) ⊙ ConvTranspose(S / (D + ε), ones) per group, S = Σ_k ĝ_z ⊙ z,
    D = box-sum of Σ_c |a| (fused op RectifiedConvTranspose, or its portable twin). The weights
    enter only through z; conservation Σ a ⊙ ĝ_a = Σ ĝ_z ⊙ z (bias share included).
BatchNormalization (ratio rule): ĝ_x = ĝ_y ⊙ y / (x + 1e-10), relevance passes unchanged.
Fully-connected (TSGB-FC) on the last FC layer (option fc="all": every FC layer), z = W a + b:
    β_j = γ z⁺_j / |z⁻_j|, ĝ_a = W⁺ᵀ ĝ_z + W⁻ᵀ (β ⊙ ĝ_z), z± = W± a (bias excluded).
Everything else keeps the plain gradient. Options (ctx.options): gamma (1.0), fc ("last"|"all").

Conv→ReLU shortcut (exact): with ĝ_z = ĝ_y ⊙ 1[z>0], S = Σ ĝ_z ⊙ z = Σ ĝ_y ⊙ y, so where a conv's
only consumer is a ReLU (and the conv output is not itself tapped) the ReLU passes ĝ_y unmasked
and the conv rule reads y for z: no mask nodes, and ONNX Runtime keeps Conv+ReLU fused.
"""

from __future__ import annotations

import numpy as np

from ... import fused
from ...graph import attrs_of
from ..context import RuleContext, conv_params
from . import activations, linear

EPS = 1e-10


def _relu_after(ctx: RuleContext, conv_out: str):
    """The ReLU node that is the only consumer of a conv output (not tapped), else None."""
    users = ctx.index.consumers.get(conv_out, [])
    if len(users) == 1 and users[0].op_type == "Relu" and conv_out not in ctx.options["_wrt"] \
            and conv_out not in ctx.index.graph_outputs:
        return users[0]
    return None


def relu(ctx: RuleContext, node, grads):
    producer = ctx.index.producer.get(node.input[0])
    if producer is not None and producer.op_type == "Conv" and _relu_after(ctx, node.input[0]):
        return [grads[0]]                       # the conv rule accounts for the mask
    return activations.relu_gradient(ctx, node, grads)


def conv(ctx: RuleContext, node, grads):
    result = [None] * len(node.input)
    if ctx.wants(node, 1) or ctx.wants(node, 2):
        raise ctx.unsupported(node, "has weights computed from the image; only constant "
                              "weights are supported")
    if not ctx.wants(node, 0):
        return result
    kernel, geo, group = conv_params(ctx, node)
    if len(kernel) != 2:
        raise ctx.unsupported(node, "is not a 2-D convolution; TSGB-Conv covers 2-D convolutions")
    relu_node = _relu_after(ctx, node.output[0])
    z = relu_node.output[0] if relu_node is not None else node.output[0]
    result[0] = fused.rectified_conv_transpose(
        ctx, grads[0], z, node.input[0], kernel, geo["strides"], geo["pads"],
        geo["dilations"], group, EPS)
    return result


def batch_norm(ctx: RuleContext, node, grads):
    if any(ctx.wants(node, i) for i in range(1, 5)):
        raise ctx.unsupported(node, "has parameters computed from the image")
    b, x, y = ctx.b, node.input[0], node.output[0]
    ratio = b.op("Div", y, b.op("Add", x, b.const(np.float32(EPS))))
    return [b.op("Mul", grads[0], ratio)] + [None] * (len(node.input) - 1)


def _is_fc(ctx: RuleContext, node) -> bool:
    if node.op_type == "Gemm":
        return True
    w = ctx.index.const(node.input[1]) if node.op_type == "MatMul" else None
    return w is not None and w.ndim == 2


def selected_fc_nodes(ctx: RuleContext) -> set[str]:
    """Names of the FC nodes that get TSGB-FC: the last ones on every path, or all."""
    if "_selected_fc_nodes" in ctx.options:
        return ctx.options["_selected_fc_nodes"]
    fcs = [n for n in ctx.index.nodes if n.op_type in ("Gemm", "MatMul") and _is_fc(ctx, n)]
    if ctx.options.get("fc", "last") == "all":
        chosen = {n.name for n in fcs}
    else:
        fc_below: dict[str, bool] = {}   # tensor -> an FC node consumes it, directly or later
        chosen = set()
        fc_names = {n.name for n in fcs}
        for n in reversed(ctx.index.nodes):
            below = any(fc_below.get(o, False) for o in n.output)
            if n.name in fc_names and not below:
                chosen.add(n.name)
            for i in n.input:
                fc_below[i] = fc_below.get(i, False) or below or n.name in fc_names
    ctx.options["_selected_fc_nodes"] = chosen
    return chosen


def _weight_matrix(ctx: RuleContext, node) -> np.ndarray | None:
    """W [K, N] with z = W a (+ bias) for a TSGB-FC node, α folded in; None if not constant."""
    w = ctx.index.const(node.input[1])
    if w is None:
        return None
    if node.op_type == "MatMul":
        return w.T
    a = attrs_of(node)
    if a.get("transA", 0):
        return None
    w = w if a.get("transB", 0) else w.T
    return w * a.get("alpha", 1.0)


def fully_connected(ctx: RuleContext, node, grads):
    plain = linear.RULES[node.op_type]
    if node.name not in selected_fc_nodes(ctx) or not ctx.wants(node, 0):
        return plain(ctx, node, grads)
    w = _weight_matrix(ctx, node)
    if w is None or ctx.wants(node, 1):
        raise ctx.unsupported(node, "needs constant weights (and transA = 0) for TSGB-FC")
    b, a, g = ctx.b, node.input[0], grads[0]
    gamma = float(ctx.options.get("gamma", 1.0))
    w = w.astype(np.float32)
    w_pos, w_neg = np.maximum(w, 0), np.minimum(w, 0)
    z_pos = b.op("MatMul", a, b.const(np.ascontiguousarray(w_pos.T)))
    z_neg = b.op("MatMul", a, b.const(np.ascontiguousarray(w_neg.T)))
    beta = b.op("Div", b.op("Mul", z_pos, b.const(np.float32(gamma))),
                b.op("Add", b.op("Abs", z_neg), b.const(np.float32(EPS))))
    g_a = b.op("Add", b.op("MatMul", g, b.const(w_pos)),
               b.op("MatMul", b.op("Mul", g, beta), b.const(w_neg)))
    return [g_a] + [None] * (len(node.input) - 1)


RULES = {"Conv": conv, "BatchNormalization": batch_norm, "Gemm": fully_connected,
         "MatMul": fully_connected, "Relu": relu}
