"""Excitation backprop (docs/methods.md §1): a probabilistic winner-take-all signal p.

At every linear op f with non-negative weights W⁺ = max(W, 0), bias ignored:
    p_in = x ⊙ f*(W⁺, p_out ⊘ f(x, W⁺))         (f* = the transpose: ConvTranspose / W⁺ᵀ)
Conv and Gemm/MatMul use W⁺; average pools use the op itself; residual Add splits p in proportion
to the addends' positive parts (p_u = u⁺ ⊙ p / Σ u⁺; the addends are signed pre-activations); a
BatchNormalization left in the graph is the per-channel scale s: p passes where s > 0. ReLU and
other monotone activations pass p unchanged; MaxPool routes p to the argmax; shape ops route it.
Where f(x, W⁺) = 0 the ratio is taken as 0. Options: EBPOptions(negated): the fully-connected
nodes named there use max(−W, 0) (c-EBP's contrastive pass negates the classifier).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..context import RuleContext
from ..table import GRADIENT, RuleTable
from . import elementwise, linear


@dataclass(frozen=True)
class EBPOptions:
    """negated: names of the fully-connected nodes whose weights enter negated, max(−W, 0)."""

    negated: frozenset[str] = frozenset()


EBP = RuleTable("ebp", over=GRADIENT)


def _ratio(ctx: RuleContext, p: str, z: str) -> str:
    """p / z where z > 0, else 0."""
    b = ctx.b
    positive = b.op("Greater", z, b.const(np.float32(0)))
    safe = b.op("Where", positive, z, b.const(np.float32(1)))
    return b.op("Where", positive, b.op("Div", p, safe), b.const(np.float32(0)))


def _with_weight(node, weight: str, out: str) -> onnx.NodeProto:
    """A copy of `node` reading `weight` instead of its own, without bias, writing `out`."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    del copy.input[:]
    copy.input.extend([node.input[0], weight])
    del copy.output[:]
    copy.output.append(out)
    return copy


def _positive_weight(ctx: RuleContext, node, negate: bool = False) -> str:
    w = ctx.index.const(node.input[1])
    if w is None:
        raise ctx.unsupported(node, "needs constant weights for excitation backprop")
    return ctx.b.const(np.maximum(-w if negate else w, 0).astype(np.float32))


def _linear(ctx: RuleContext, node, grads, backward_rule):
    """p_in = x ⊙ f*(W⁺, p / f(x, W⁺)) for Conv/Gemm/MatMul."""
    result = [None] * len(node.input)
    if not ctx.wants(node, 0):
        return result
    b, x = ctx.b, node.input[0]
    negate = node.op_type in ("Gemm", "MatMul") and node.name in ctx.options.negated
    w_pos = _positive_weight(ctx, node, negate)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm":
        attrs.pop("beta", None)
    z_pos = b.op(node.op_type, x, w_pos, **attrs)
    fake = _with_weight(node, w_pos, node.output[0])   # same output shape as the real node
    back = backward_rule(ctx, fake, [_ratio(ctx, grads[0], z_pos)])[0]
    result[0] = b.op("Mul", x, back)
    return result


@EBP.rule("Conv")
def conv(ctx, node, grads):
    return _linear(ctx, node, grads, GRADIENT["Conv"])


@EBP.rule("Gemm", "MatMul")
def fully_connected(ctx, node, grads):
    if node.op_type == "MatMul" and (ctx.index.const(node.input[1]) is None
                                     or ctx.index.const(node.input[1]).ndim != 2):
        return linear.matmul(ctx, node, grads)
    return _linear(ctx, node, grads, GRADIENT[node.op_type])


@EBP.rule("AveragePool", "GlobalAveragePool")
def pool_proportional(ctx, node, grads):
    """Average pools: p_in = x ⊙ f*(p / f(x)) (the op's weights are already positive)."""
    if not ctx.wants(node, 0):
        return [None] * len(node.input)
    b, x, y = ctx.b, node.input[0], node.output[0]
    back = GRADIENT[node.op_type](ctx, node, [_ratio(ctx, grads[0], y)])[0]
    return [b.op("Mul", x, back)] + [None] * (len(node.input) - 1)


@EBP.rule("Add", "Sum")
def add(ctx, node, grads):
    """Residual sum of activations: p_u = u⁺ ⊙ p / Σ_i u_i⁺ (the addends are pre-activation and
    may be negative; their positive parts keep p a probability: p ≥ 0 and Σ p conserved wherever
    the sum is positive). A constant addend is a bias (ignored: the signal passes whole)."""
    if any(ctx.index.const(i) is not None for i in node.input):
        return elementwise.add(ctx, node, grads)
    b = ctx.b
    positive = [b.op("Relu", i) for i in node.input]
    ratio = _ratio(ctx, grads[0], b.sum(positive))
    return [b.op("Mul", positive[i], ctx.unbroadcast(ratio, node.input[i], node.output[0]))
            if ctx.wants(node, i) else None for i in range(len(node.input))]


@EBP.rule("BatchNormalization")
def batch_norm(ctx, node, grads):
    scale, var = ctx.index.const(node.input[1]), ctx.index.const(node.input[4])
    if scale is None or var is None:
        raise ctx.unsupported(node, "needs constant parameters for excitation backprop")
    rank = ctx.index.rank(node.input[0]) or 4
    keep = (scale > 0).astype(np.float32).reshape([1, -1] + [1] * (rank - 2))
    return [ctx.b.op("Mul", grads[0], ctx.b.const(keep))] + [None] * 4


@EBP.rule("Relu", "LeakyRelu", "PRelu", "Clip")
def monotone(ctx, node, grads):
    """Monotone activations pass p unchanged."""
    return elementwise.passthrough(ctx, node, grads)
