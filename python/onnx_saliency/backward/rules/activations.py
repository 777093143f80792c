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
Smooth units, g·f'(x) (each rule's docstring has its f'): Erf, Gelu (exact and tanh), Elu, Selu,
Celu, Softplus, Mish.

Tables: the true gradients in GRADIENT; GUIDED_BACKPROP and DECONVNET over it, changing the
ReLU-like units only (a walk that meets none warns: its map is the gradient's).
"""

from __future__ import annotations

import numpy as np
import onnx

from ...graph import attr_text, attrs_of
from ..context import RuleContext, channel_scale
from ..table import GRADIENT, RuleTable
from .elementwise import scaled


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


def clip_bound(ctx: RuleContext, node, slot: int) -> float | None:
    """The constant scalar bound in input `slot` (1: min, 2: max) of a Clip, else None."""
    if len(node.input) <= slot or not node.input[slot]:
        return None
    value = ctx.index.const(node.input[slot])
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def side_step(ctx: RuleContext, y: str, bound: float, above: bool, limit: float) -> str | None:
    """1[y > bound] (above) or 1[y < bound] as floats, for y = Clip(x) inside [lo, hi] and a
    constant bound: HardSigmoid(y; α = ±G, β = ∓G·bound) = min(max(±G(y − bound), 0), 1), G a
    power of two so that G·y and G·bound are exact and cannot overflow (|y| ≤ max(|lo|, |hi|)),
    and large enough that the one rounding of G(y − bound) leaves any nonzero difference ≥ 1
    (bound 0, above: unit_step's 2^127, whose G·y may overflow to +inf: still 1). `limit`:
    max |y|, the larger |bound|. One elementwise op ONNX Runtime keeps in its blocked layout.
    None where no such G exists."""
    if bound == 0.0 and above:
        return unit_step(ctx, y, None, 0.0)
    if bound == 0.0 or limit == 0.0 or not np.isfinite(limit):
        return None
    gain = 2.0 ** min(127, 126 - int(np.ceil(np.log2(limit))))  # G·max|y| ≤ 2^126, G ≤ 2^127
    if gain * abs(bound) * 2.0 ** -25 < 1.0:                    # the smallest |y − bound|
        return None
    sign = 1.0 if above else -1.0
    return ctx.b.op("HardSigmoid", y, alpha=sign * gain, beta=-sign * gain * bound)


@GRADIENT.rule("Clip")
def clip(ctx, node, grads):
    """g·1[min < x < max], read off y = Clip(x) (min < x < max ⟺ min < y < max; reading y
    keeps the Conv+Clip fusion of the forward): for float32 and constant bounds, products of
    exact unit steps (`side_step`), which stay in ONNX Runtime's blocked layout with the Mul by
    g (ReLU6 backward in MobileNets); else Where(And(x > min, x < max), g, 0)."""
    b, x, y = ctx.b, node.input[0], node.output[0]
    lo, hi = clip_bound(ctx, node, 1), clip_bound(ctx, node, 2)
    given = [(slot, bound) for slot, bound in ((1, lo), (2, hi))
             if len(node.input) > slot and node.input[slot]]
    steps = []
    if ctx.index.types.get(y) == onnx.TensorProto.FLOAT and all(v is not None for _, v in given):
        limit = max(abs(v) for _, v in given)
        steps = [side_step(ctx, y, v, slot == 1, limit) for slot, v in given]
    if steps and all(step is not None for step in steps):
        mask = steps[0] if len(steps) == 1 else b.op("Mul", steps[0], steps[1])
        g = b.op("Mul", grads[0], mask)
    else:
        keep = None
        for slot, _ in given:
            side = b.op("Greater" if slot == 1 else "Less", x, node.input[slot])
            keep = side if keep is None else b.op("And", keep, side)
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


# 2^64: |x + 3| ≥ 2^-22 for any float32 x ≠ −3 near −3 (the spacing there), so 2^64·|x ± 3| ≥ 2^42
_STEP_GAIN = 2.0 ** 64


@GRADIENT.rule("HardSwish")
def hard_swish(ctx, node, grads):
    """f' = 0 (x < −3), x/3 + 1/2 (−3 ≤ x ≤ 3), 1 (x > 3) (PyTorch's values at ±3).

    float32 [N, C, H, W] (MobileNetV3): f' = P + Q₋ + Q₊, three 1×1 depthwise Convs of x with a
    fused Clip, P = Clip(x/3 + 1/2, −1/2, 3/2), Q₋ = Clip(−G·x − 3G, 0, 1/2) = ½·1[x < −3],
    Q₊ = Clip(−G·x + 3G, −1/2, 0) = −½·1[x > 3] (G = 2^64: G·x exact, the steps exact for every
    float32), summed and times g: ops ONNX Runtime keeps in its blocked layout. Else Where
    and comparisons."""
    b, x = ctx.b, node.input[0]
    c = ctx.float_channels(x)
    if c is not None:
        def clipped(gain: float, offset: float, lo: float, hi: float) -> str:
            return b.op("Clip", channel_scale(ctx, x, c, gain, offset), b.const(np.float32(lo)),
                        b.const(np.float32(hi)))
        slope = b.op("Sum", clipped(1.0 / 3.0, 0.5, -0.5, 1.5),
                     clipped(-_STEP_GAIN, -3.0 * _STEP_GAIN, 0.0, 0.5),
                     clipped(-_STEP_GAIN, 3.0 * _STEP_GAIN, -0.5, 0.0))
        return [b.op("Mul", grads[0], slope)]
    mid = b.op("Add", b.op("Mul", x, b.const(1.0 / 3.0)), b.const(0.5))
    slope = b.op("Where", b.op("Less", x, b.const(-3.0)), b.const(0.0),
                 b.op("Where", b.op("Greater", x, b.const(3.0)), b.const(1.0), mid))
    return [b.op("Mul", grads[0], slope)]


_SQRT_2_OVER_PI = float(np.sqrt(2.0 / np.pi))


def _gaussian(ctx: RuleContext, x: str, c: float) -> str:
    """c·exp(−x²/2), the normal density up to the factor c."""
    b = ctx.b
    return b.op("Mul", b.op("Exp", b.op("Mul", b.op("Mul", x, x), b.const(-0.5))), b.const(c))


@GRADIENT.rule("Erf")
def erf(ctx, node, grads):
    """d erf(x) = 2/√π·exp(−x²) (the density at √2·x)."""
    b = ctx.b
    x = b.op("Mul", node.input[0], b.const(np.sqrt(2.0)))
    return scaled(ctx, node, grads, _gaussian(ctx, x, 2.0 / np.sqrt(np.pi)))


@GRADIENT.rule("Gelu")
def gelu(ctx, node, grads):
    """approximate="none": y = x·Φ(x), f' = Φ(x) + x·φ(x), Φ(x) = (1 + erf(x/√2))/2,
    φ(x) = exp(−x²/2)/√(2π). approximate="tanh": y = x(1 + t)/2, t = tanh(u),
    u = √(2/π)(x + 0.044715x³); f' = (1 + t)/2 + x(1 − t²)·√(2/π)(1 + 3·0.044715x²)/2."""
    b, x = ctx.b, node.input[0]
    approx = attr_text(node, "approximate", "none")
    if approx == "tanh":
        x2 = b.op("Mul", x, x)
        poly = b.op("Add", b.const(1.0), b.op("Mul", x2, b.const(0.044715)))
        t = b.op("Tanh", b.op("Mul", b.op("Mul", x, poly), b.const(_SQRT_2_OVER_PI)))
        dpoly = b.op("Add", b.const(1.0), b.op("Mul", x2, b.const(3 * 0.044715)))
        du = b.op("Mul", b.op("Mul", x, dpoly), b.const(_SQRT_2_OVER_PI))
        one_minus_t2 = b.op("Sub", b.const(1.0), b.op("Mul", t, t))
        total = b.op("Add", b.op("Add", b.const(1.0), t), b.op("Mul", du, one_minus_t2))
        return scaled(ctx, node, grads, b.op("Mul", total, b.const(0.5)))
    cdf = b.op("Mul", b.op("Add", b.const(1.0), b.op("Erf", b.op("Mul", x, b.const(np.sqrt(0.5))))),
               b.const(0.5))
    density = _gaussian(ctx, x, 1.0 / np.sqrt(2.0 * np.pi))
    return scaled(ctx, node, grads, b.op("Add", cdf, b.op("Mul", x, density)))


def _exp_branch(ctx: RuleContext, node, slope_pos: float, below: str) -> str:
    """Where(x > 0, slope_pos, below): the derivative of an exponential-linear unit."""
    b = ctx.b
    return b.op("Where", _positive(ctx, node.input[0]), b.const(slope_pos), below)


@GRADIENT.rule("Elu")
def elu(ctx, node, grads):
    """y = α(eˣ − 1) for x ≤ 0, else x: f' = y + α for x ≤ 0, else 1."""
    alpha = attrs_of(node).get("alpha", 1.0)
    below = ctx.b.op("Add", node.output[0], ctx.b.const(alpha))
    return scaled(ctx, node, grads, _exp_branch(ctx, node, 1.0, below))


@GRADIENT.rule("Selu")
def selu(ctx, node, grads):
    """y = γα(eˣ − 1) for x ≤ 0, else γx: f' = y + γα for x ≤ 0, else γ."""
    a = attrs_of(node)
    alpha = a.get("alpha", 1.67326319217681884765625)
    gamma = a.get("gamma", 1.05070102214813232421875)
    below = ctx.b.op("Add", node.output[0], ctx.b.const(gamma * alpha))
    return scaled(ctx, node, grads, _exp_branch(ctx, node, gamma, below))


@GRADIENT.rule("Celu")
def celu(ctx, node, grads):
    """y = α(e^(x/α) − 1) for x ≤ 0, else x: f' = e^(x/α) = y/α + 1 for x ≤ 0, else 1."""
    alpha = attrs_of(node).get("alpha", 1.0)
    b = ctx.b
    below = b.op("Add", b.op("Mul", node.output[0], b.const(1.0 / alpha)), b.const(1.0))
    return scaled(ctx, node, grads, _exp_branch(ctx, node, 1.0, below))


@GRADIENT.rule("Softplus")
def softplus(ctx, node, grads):
    """y = ln(1 + eˣ): f' = σ(x)."""
    return scaled(ctx, node, grads, ctx.b.op("Sigmoid", node.input[0]))


@GRADIENT.rule("Mish")
def mish(ctx, node, grads):
    """y = x·t, t = tanh(softplus(x)): f' = t + x(1 − t²)σ(x)."""
    b, x = ctx.b, node.input[0]
    t = b.op("Tanh", b.op("Softplus", x))
    slope = b.op("Mul", b.op("Mul", x, b.op("Sub", b.const(1.0), b.op("Mul", t, t))),
                 b.op("Sigmoid", x))
    return scaled(ctx, node, grads, b.op("Add", t, slope))


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
    return low is not None and low.size == 1 and float(low.reshape(-1)[0]) == 0.0


_NOTHING_RECTIFIED = (
    f"the model has no ReLU-like unit ({', '.join(RELU_LIKE_OPS[:-1])} or Clip with min 0) "
    "between its taps and the logits, so nothing is rectified and the map equals the plain "
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
        hi, y = clip_bound(ctx, node, 2), node.output[0]
        step = None
        if hi is not None and ctx.index.types.get(y) == onnx.TensorProto.FLOAT:
            step = side_step(ctx, y, hi, False, abs(hi))    # 1[y < max] ⟺ 1[x < max]
        g = ctx.b.op("Mul", g, step) if step is not None else \
            _mask(ctx, ctx.b.op("Less", node.input[0], node.input[2]), g)
    return [g] + [None] * (len(node.input) - 1)
