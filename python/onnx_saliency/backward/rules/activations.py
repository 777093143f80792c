"""Pointwise nonlinearities, and the ReLU rules that tell the gradient family apart.

Relu   gradient: g·1[x>0]; guided backprop: max(g,0)·1[x>0]; deconvnet: max(g,0).
LeakyRelu: g·(1[x>0] + α·1[x≤0]). PRelu: g·(1[x>0] + slope·1[x≤0]).
Clip: g·1[min<x<max]. Sigmoid: g·y(1−y). Tanh: g(1−y²).

ReLU-like units (`relu_like`): Relu, LeakyRelu, PRelu and Clip with min 0 (ReLU6 = Clip(0, 6) =
min(Relu(x), 6)). Guided backprop rectifies the signal at each of them and keeps the unit's true
local derivative: f'(x)·max(g,0) (ReLU6: 1[0<x<6]·max(g,0); leaky: (1[x>0] + α·1[x≤0])·max(g,0),
the leaky branch being a real forward path). Deconvnet replaces the rectifier's backward by
max(g,0) and ignores the forward sign; a Clip's upper bound is a min(·, M), not a rectifier, so
it keeps its true gradient (ReLU6: 1[x<6]·max(g,0)). Other units (SiLU, GELU, HardSwish, Clip
with another min) take their true gradient in every method of the family.
HardSigmoid: g·α·1[0<αx+β<1]. HardSwish: g·(0 if x<−3, 1 if x>3, else (2x+3)/6).
Softmax: y⊙(g − Σ g⊙y). LogSoftmax: g − exp(y)·Σ g.

Tables: the true gradients in GRADIENT; GUIDED_BACKPROP and DECONVNET over it, changing the
ReLU-like units only (a walk that meets none warns: its map is the gradient's).
"""

from __future__ import annotations

import numpy as np
import onnx

from ...graph import attrs_of
from ..context import RuleContext, channel_scale
from ..table import GRADIENT, RuleTable


def _mask(ctx: RuleContext, cond: str, g: str) -> str:
    return ctx.b.op("Where", cond, g, ctx.b.const(0.0))


def _positive(ctx: RuleContext, x: str) -> str:
    return ctx.b.op("Greater", x, ctx.b.const(0.0))


# 2^127: times any positive normal float32 (≥ 2^-126) it is ≥ 2, so a clip to [·, 1] gives exactly 1
_MASK_GAIN = np.float32(2.0 ** 127)


def unit_step(ctx: RuleContext, y: str, channels: int | None, lo: float) -> str:
    """1[y > 0] (lo = 0) or sign(y) (lo = −1) of a float32 tensor, exact for every normal float
    (the sessions flush denormals; the ReLU mask and TSGB's sign(a) share it, identical nodes
    are emitted once). lo = 0: HardSigmoid(y; α = 2^127, β = 0) = min(max(2^127·y, 0), 1), one
    elementwise op that ONNX Runtime keeps in its blocked layout (ResNet-50, batch 8: 1.5 ms a
    mask against 2.4 ms for the depthwise Conv below). lo = −1: Clip(2^127·y, −1, 1) as a 1×1
    depthwise Conv with a fused Clip (`channels` known)."""
    if lo == 0.0:
        return ctx.b.op("HardSigmoid", y, alpha=float(_MASK_GAIN), beta=0.0)
    scaled = channel_scale(ctx, y, channels, _MASK_GAIN)
    return ctx.b.op("Clip", scaled, ctx.b.const(lo), ctx.b.const(1.0))


def _relu_mask(ctx: RuleContext, node) -> str:
    """1[x > 0] as floats, read off the output y (y > 0 ⟺ x > 0; reading y leaves the conv
    output one consumer, so ONNX Runtime fuses Conv+ReLU in the forward).

    float32: unit_step (y = 0 → 0, y ≥ 2^-126 → 1), which ONNX Runtime keeps, with the Mul by
    g, in its blocked layout beside the backward convs; other types: Cast(Greater(y, 0)), which
    would pull each mask through a reorder to NCHW and back."""
    y = node.output[0]
    if ctx.index.types.get(y) == onnx.TensorProto.FLOAT:
        return unit_step(ctx, y, ctx.float_channels(y), 0.0)
    positive = ctx.b.op("Greater", y, ctx.b.const(0.0))
    return ctx.b.op("Cast", positive, to=ctx.index.types.get(y, 1))


@GRADIENT.rule("Relu")
def relu_gradient(ctx, node, grads):
    return [ctx.b.op("Mul", grads[0], _relu_mask(ctx, node))]


@GRADIENT.rule("LeakyRelu")
def leaky_relu(ctx, node, grads):
    alpha = attrs_of(node).get("alpha", 0.01)
    b = ctx.b
    slope = b.op("Where", _positive(ctx, node.input[0]), b.const(1.0), b.const(alpha))
    return [b.op("Mul", grads[0], slope)]


@GRADIENT.rule("PRelu")
def prelu(ctx, node, grads):
    b = ctx.b
    if ctx.wants(node, 1):
        raise ctx.unsupported(node, "has a slope computed from the image")
    scaled = b.op("Mul", grads[0], node.input[1])
    return [b.op("Where", _positive(ctx, node.input[0]), grads[0], scaled), None]


@GRADIENT.rule("Clip")
def clip(ctx, node, grads):
    b, x = ctx.b, node.input[0]
    keep = None
    if len(node.input) > 1 and node.input[1]:
        keep = b.op("Greater", x, node.input[1])
    if len(node.input) > 2 and node.input[2]:
        below = b.op("Less", x, node.input[2])
        keep = below if keep is None else b.op("And", keep, below)
    g = grads[0] if keep is None else _mask(ctx, keep, grads[0])
    return [g] + [None] * (len(node.input) - 1)


@GRADIENT.rule("Sigmoid")
def sigmoid(ctx, node, grads):
    b, y = ctx.b, node.output[0]
    return [b.op("Mul", grads[0], b.op("Mul", y, b.op("Sub", b.const(1.0), y)))]


@GRADIENT.rule("Tanh")
def tanh(ctx, node, grads):
    b, y = ctx.b, node.output[0]
    return [b.op("Mul", grads[0], b.op("Sub", b.const(1.0), b.op("Mul", y, y)))]


@GRADIENT.rule("HardSigmoid")
def hard_sigmoid(ctx, node, grads):
    a = attrs_of(node)
    alpha, beta = a.get("alpha", 0.2), a.get("beta", 0.5)
    b, x = ctx.b, node.input[0]
    lin = b.op("Add", b.op("Mul", x, b.const(alpha)), b.const(beta))
    inside = b.op("And", b.op("Greater", lin, b.const(0.0)), b.op("Less", lin, b.const(1.0)))
    return [_mask(ctx, inside, b.op("Mul", grads[0], b.const(alpha)))]


@GRADIENT.rule("HardSwish")
def hard_swish(ctx, node, grads):
    b, x = ctx.b, node.input[0]
    mid = b.op("Add", b.op("Mul", x, b.const(1.0 / 3.0)), b.const(0.5))
    slope = b.op("Where", b.op("Less", x, b.const(-3.0)), b.const(0.0),
                 b.op("Where", b.op("Greater", x, b.const(3.0)), b.const(1.0), mid))
    return [b.op("Mul", grads[0], slope)]


def _axis(node, default: int) -> int:
    return attrs_of(node).get("axis", default)


@GRADIENT.rule("Softmax")
def softmax(ctx, node, grads):
    b, y, g = ctx.b, node.output[0], grads[0]
    dot = b.reduce("ReduceSum", b.op("Mul", g, y), [_axis(node, -1)], keepdims=True)
    return [b.op("Mul", y, b.op("Sub", g, dot))]


@GRADIENT.rule("LogSoftmax")
def log_softmax(ctx, node, grads):
    b, y, g = ctx.b, node.output[0], grads[0]
    total = b.reduce("ReduceSum", g, [_axis(node, -1)], keepdims=True)
    return [b.op("Sub", g, b.op("Mul", b.op("Exp", y), total))]


RELU_LIKE_OPS = ("Relu", "LeakyRelu", "PRelu", "Clip")


def relu_like(node: onnx.NodeProto, index) -> bool:
    """Relu, LeakyRelu, PRelu, or a Clip whose min is the constant 0 (ReLU6)."""
    if node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type in ("Relu", "LeakyRelu", "PRelu"):
        return True
    if node.op_type != "Clip" or len(node.input) < 2 or not node.input[1]:
        return False
    low = index.const(node.input[1])
    return low is not None and low.size == 1 and float(low) == 0.0


_NOTHING_RECTIFIED = (
    f"the model has no ReLU-like unit ({', '.join(RELU_LIKE_OPS[:-1])} or Clip with min 0) "
    "between the input and the logits, so nothing is rectified and the map equals the plain "
    "gradient's.")
GUIDED_BACKPROP = RuleTable("guided_backprop", over=GRADIENT, acts_on=relu_like,
                            inert_warning=_NOTHING_RECTIFIED)
DECONVNET = RuleTable("deconvnet", over=GRADIENT, acts_on=relu_like,
                      inert_warning=_NOTHING_RECTIFIED)


@GUIDED_BACKPROP.rule(*RELU_LIKE_OPS)
def guided(ctx, node, grads):
    """Guided backprop at a ReLU-like unit: its true backward rule applied to max(g, 0)."""
    if relu_like(node, ctx.index):
        grads = [ctx.b.op("Relu", grads[0]), *grads[1:]]
    return GRADIENT[node.op_type](ctx, node, grads)


@DECONVNET.rule(*RELU_LIKE_OPS)
def deconvnet(ctx, node, grads):
    """Deconvnet at a ReLU-like unit: max(g, 0), then a Clip's upper bound (1[x<max])."""
    if not relu_like(node, ctx.index):
        return GRADIENT[node.op_type](ctx, node, grads)
    g = ctx.b.op("Relu", grads[0])
    if node.op_type == "Clip" and len(node.input) > 2 and node.input[2]:
        g = _mask(ctx, ctx.b.op("Less", node.input[0], node.input[2]), g)
    return [g] + [None] * (len(node.input) - 1)
