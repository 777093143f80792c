"""TSGB: target-selective gradient backprop (docs/methods.md §5), as rules of the backward walk.

Conv (TSGB-Conv): ĝ_a = sign(a) ⊙ ConvTranspose(S / (D + ε), ones) per group, S = Σ_k ĝ_z ⊙ z,
    D = box-sum of Σ_c |a|. The weights enter only through z; conservation Σ a ⊙ ĝ_a = Σ ĝ_z ⊙ z
    (bias share included).
      groups = 1 (known channels): one-channel maps in standard ops, ĝ_a a broadcast
        sign(a) ⊙ B(spread) (TSGBContext.broadcast, _channel_summed), with and without fused ops:
        ONNX Runtime keeps these ops in its blocked CPU layout, where a custom op would pull
        every activation it reads out of that layout and back.
      depthwise (one input and one output channel per group): per channel in standard ops
        (_depthwise_rule: depthwise Convs with all-ones kernels, in the blocked layout).
      other grouped convs (or channels unknown): the fused op RectifiedConvTranspose, or its
        portable twin.
BatchNormalization (ratio rule): ĝ_x = ĝ_y ⊙ y / (x + 1e-10), relevance passes unchanged.
Fully-connected (TSGB-FC) on the classifier (classifier.py; fc="all": every FC layer), z = W a + b:
    β_j = γ z⁺_j / |z⁻_j|, ĝ_a = W⁺ᵀ ĝ_z + W⁻ᵀ (β ⊙ ĝ_z), z± = W± a (bias excluded).
    A model without FC nodes (a detector's or segmenter's convolutional head) gets TSGB-Conv
    there too (METHODS.md); with conv_head=True, the same FC rule at every location of its
    class-scoring 1×1 convs (classifier.scoring_convs), z± = Conv(a, W±).
Everything else keeps the plain gradient. Options: TSGBOptions(gamma = 1.0, fc = "last"|"all").

The walk hands these rules a TSGBContext: it remembers how some signals were made (broadcasts,
sums, ReLU masks, MaxPool backwards), which the rewrites below read.

Exact rewrites that keep tensors with channels out of the graph:
- Conv→ReLU: with ĝ_z = ĝ_y ⊙ 1[z>0], S = Σ ĝ_z ⊙ z = Σ ĝ_y ⊙ y, so where a conv's only consumer
  is a ReLU (and the conv output is not itself tapped) the ReLU passes ĝ_y unmasked and the conv
  rule reads y for z: no mask nodes, and ONNX Runtime keeps Conv+ReLU fused.
- Conv→Clip (ReLU6): S = Σ ĝ_z ⊙ y with the Clip's output y for z (ĝ_z is zero where they
  differ), so the forward keeps Conv+Clip fused and never stores z.
- ĝ_y = sign(y) ⊙ B(s) (the next conv's broadcast): S = s ⊙ Σ_k |y|.
- Conv → Add(·, other) → ReLU → y (a residual block): S = Σ ĝ_u ⊙ y − Σ ĝ_u ⊙ other, so the
  forward keeps Conv+Add+ReLU fused and never stores the conv's own output; Σ ĝ_u ⊙ y is taken
  through the ReLU's mask to the terms of ĝ_y (see _channel_dot), one of which the next block
  has already multiplied by y.
- A ReLU whose output y carries sign(y) ⊙ B(s) terms drops their sign (its mask applies it).
- Conv → MaxPool whose output carries sign(p) ⊙ B(s) (fused only): S = MaxPoolRelevance(z, s),
  without routing the channels.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence

import numpy as np
import onnx

from ... import fused
from ...graph import attrs_of
from .. import classifier
from ..context import (
    RuleContext,
    conv_geometry,
    conv_params,
    conv_transpose_to,
    transpose_extent,
)
from ..table import GRADIENT, RuleTable
from . import activations, pooling
from . import conv as conv_rules

EPS = 1e-10


@dataclass(frozen=True)
class TSGBOptions:
    """gamma: TSGB-FC's γ; fc: "last" (the classifier, classifier.py) or "all": the
    fully-connected layers that get TSGB-FC; conv_head: where the model has no FC node, TSGB-FC
    location by location at its class-scoring 1×1 convs (classifier.scoring_convs) instead of
    TSGB-Conv (METHODS.md's default for a convolutional head)."""

    gamma: float = 1.0
    fc: str = "last"
    conv_head: bool = False


@dataclass(frozen=True)
class Broadcast:
    """A signal emitted as sign ⊙ Conv(spread, weight): a one-channel map `spread` [N,1,H,W]
    repeated over the channels by the all-ones 1×1 `weight` [C,1,1,1], times `sign` = sign(a)
    (TSGB-Conv's ĝ_a), or unsigned (sign None). Kept so that sums and later rules can work on
    `spread` alone."""
    a: str
    sign: str | None
    spread: str
    weight: str


@dataclass
class TSGBContext(RuleContext):
    """The TSGB walk's context: the rule context plus how some signals were made."""

    broadcasts: dict[str, Broadcast] = field(default_factory=dict)   # broadcast() -> its factors
    summands: dict[str, list[str]] = field(default_factory=dict)     # sum() of several -> terms
    masked: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    #   a ReLU's or ReLU6's backward g ⊙ mask(y) -> (g, y, w = y ⊙ mask(y))
    signed: dict[str, tuple[str, str]] = field(default_factory=dict)
    #   sign(a) ⊙ spread with a spread of a's channels (depthwise TSGB-Conv) -> (a, spread)
    pooled: dict[str, tuple[str, str, dict]] = field(default_factory=dict)
    #   MaxPool backward of sign(p) ⊙ B(s) -> (pool input, s, pool geometry)

    @cached_property
    def fc_nodes(self) -> frozenset[str]:
        """Names of the FC nodes that get TSGB-FC: the classifier's, or all (options.fc)."""
        if self.options is not None and self.options.fc == "all":
            chosen = classifier.fully_connected(self.index)
        else:
            chosen = classifier.classifier(self.index)
        if chosen or self.options is None or not self.options.conv_head:
            return chosen
        return classifier.scoring_convs(self.index)

    def broadcast(self, a: str, sign: str | None, spread: str, weight: str) -> str:
        """sign ⊙ Conv(spread, weight) (without sign: the Conv), recorded as a `Broadcast`."""
        out = self.b.op("Conv", spread, weight)
        if sign is not None:
            out = self.b.op("Mul", sign, out)
        self.broadcasts[out] = Broadcast(a, sign, spread, weight)
        return out

    def sum(self, terms: Sequence[str]) -> str:
        """Σ terms; broadcasts with the same sign and weight are summed as one-channel maps
        first (Σ_i m ⊙ B(s_i) = m ⊙ B(Σ_i s_i)); a sum of several is recorded."""
        groups: dict[tuple, list[Broadcast]] = defaultdict(list)
        for t in terms:
            if t in self.broadcasts:
                f = self.broadcasts[t]
                groups[(f.sign, f.weight)].append(f)
        merged: list[str] = []
        for t in terms:
            f = self.broadcasts.get(t)
            group = groups.get((f.sign, f.weight)) if f is not None else None
            if group is None or len(group) == 1:
                merged.append(t)
            elif group[0] is f:
                spread = self.b.op("Sum", *(g.spread for g in group))
                merged.append(self.broadcast(f.a, f.sign, spread, f.weight))
        if len(merged) == 1:
            return merged[0]
        out = self.b.op("Sum", *merged)
        self.summands[out] = merged
        return out


TSGB = RuleTable("tsgb", over=GRADIENT, context=TSGBContext)


def _sole_consumer(ctx: RuleContext, out: str, op_type: str):
    """The node of `op_type` (default domain) that is the only consumer of `out`, where `out`
    is neither tapped nor a graph output; else None. A ReLU or Clip after a conv: its output y
    can stand for the conv's z (see the module docstring and `_clip_after`)."""
    users = ctx.index.consumers.get(out, [])
    if len(users) == 1 and users[0].op_type == op_type and users[0].domain in ("", "ai.onnx") \
            and out not in ctx.wrt and out not in ctx.index.graph_outputs:
        return users[0]
    return None


def _relu_after(ctx: RuleContext, conv_out: str):
    """The ReLU node that is the only consumer of a conv output (not tapped), else None."""
    return _sole_consumer(ctx, conv_out, "Relu")


@TSGB.rule("Relu")
def relu(ctx: TSGBContext, node, grads):
    producer = ctx.index.producer.get(node.input[0])
    if producer is not None and producer.op_type == "Conv" and _relu_after(ctx, node.input[0]):
        return [grads[0]]                       # the conv rule accounts for the mask
    y = node.output[0]
    grads = [_unsigned(ctx, y, grads[0])]
    out = activations.relu_gradient(ctx, node, grads)[0]
    ctx.masked[out] = (grads[0], y, y)     # y ⊙ 1[y > 0] = y
    return [out]


@TSGB.rule("Clip")
def clip(ctx: TSGBContext, node, grads):
    """The plain Clip backward. With min 0 (ReLU6) its mask 1[0 < y < max] implies y > 0, so the
    terms sign(y) ⊙ B(s) of ĝ_y drop their sign first (`_unsigned`), and the result is noted with
    w = y ⊙ 1[y < max] (= y ⊙ mask), from which the conv before reads S (`_channel_dot`,
    `_masked_product`)."""
    if not activations.relu_like(node, ctx.index):
        return GRADIENT["Clip"](ctx, node, grads)
    y = node.output[0]
    g = _unsigned(ctx, y, grads[0])
    result = GRADIENT["Clip"](ctx, node, [g, *grads[1:]])
    hi = activations.clip_bound(ctx, node, 2)
    has_max = len(node.input) > 2 and node.input[2]
    step = None
    if has_max and hi is not None and ctx.index.types.get(y) == onnx.TensorProto.FLOAT:
        step = activations.side_step(ctx, y, hi, False, abs(hi))   # the mask's own upper step
    if not has_max or step is not None:
        ctx.masked[result[0]] = (g, y, y if not has_max else ctx.b.op("Mul", y, step))
    return result


def _unsigned(ctx: TSGBContext, y: str, g: str) -> str:
    """g with its terms sign(y) ⊙ B(s) (TSGB-Conv reading y) written B(s), for a y ≥ 0 whose
    backward masks by 1[y > 0] (ReLU, ReLU6): the mask applies the sign, and the Sum of the
    terms then fuses into the broadcasting Conv."""
    terms = ctx.summands.get(g, [g])
    unsigned = [_unsigned_broadcast(ctx, y, t) for t in terms]
    return ctx.sum(unsigned) if unsigned != terms else g


def _unsigned_broadcast(ctx: TSGBContext, y: str, t: str) -> str:
    """B(s) for a term t = sign(y) ⊙ B(s) (a recorded broadcast signed by y), else t."""
    f = ctx.broadcasts.get(t)
    if f is not None and f.a == y and f.sign is not None:
        return ctx.broadcast(f.a, None, f.spread, f.weight)
    return t


@TSGB.rule("MaxPool")
def max_pool(ctx: TSGBContext, node, grads):
    """The plain MaxPool backward. Fused, where the pool's output carries sign(p) ⊙ B(s) (a
    TSGB-Conv reads it), the result is also noted, so that a conv whose output is the pool's
    input takes S from MaxPoolRelevance(x, s) instead of the routed channels."""
    result = pooling.max_pool(ctx, node, grads)
    f = ctx.broadcasts.get(grads[0])
    kernel = list(attrs_of(node).get("kernel_shape", []))
    if (ctx.b.fused and f is not None and f.sign is not None and f.a == node.output[0]
            and len(kernel) == 2 and ctx.index.rank(node.input[0]) == 4):
        geo = conv_geometry(ctx, node, node.input[0], kernel)
        ctx.pooled[result[0]] = (node.input[0], f.spread, {"kernel": kernel, **geo})
    return result


@TSGB.rule("Conv")
def conv(ctx: TSGBContext, node, grads):
    result = [None] * len(node.input)
    if ctx.wants(node, 1) or ctx.wants(node, 2):
        raise ctx.unsupported(node, "has weights computed from the image; only constant "
                              "weights are supported")
    if not ctx.wants(node, 0):
        return result
    if node.name in ctx.fc_nodes:
        result[0] = _fc_per_location(ctx, node, grads[0])
        return result
    kernel, geo, group = conv_params(ctx, node)
    if len(kernel) != 2:
        raise ctx.unsupported(node, "is not a 2-D convolution; TSGB-Conv covers 2-D convolutions")
    relu_node = _relu_after(ctx, node.output[0])
    clip_node = _clip_after(ctx, node.output[0]) if relu_node is None else None
    z = (relu_node or clip_node or node).output[0]
    a = node.input[0]
    if group == 1 and ctx.float_channels(a) is not None and ctx.float_channels(z) is not None:
        s = _channel_dot(ctx, grads[0], z) if clip_node is not None else None
        result[0] = _channel_summed(ctx, node, grads[0], z, kernel, geo, s)
        return result
    if _depthwise(ctx, node, group):
        result[0] = _depthwise_rule(ctx, a, grads[0], z, kernel, geo)
        return result
    result[0] = fused.rectified_conv_transpose(
        ctx, grads[0], z, a, kernel, geo["strides"], geo["pads"],
        geo["dilations"], group, EPS)
    return result


def _clip_after(ctx: RuleContext, conv_out: str):
    """The Clip node that is the only consumer of a conv output (not tapped), else None. Its
    output y can stand for z in S = Σ ĝ_z ⊙ z: ĝ_z = ĝ_y ⊙ 1[min < z < max] is zero wherever
    y ≠ z, so the forward keeps Conv+Clip fused and never stores z (ReLU6 in MobileNets)."""
    return _sole_consumer(ctx, conv_out, "Clip")


def _depthwise(ctx: RuleContext, node, group: int) -> bool:
    """A 2-D depthwise conv (one input and one output channel per group), float32, constant
    channel count: TSGB-Conv is then per channel and needs no channel sums."""
    c = ctx.float_channels(node.input[0])
    return group > 1 and c == group and ctx.float_channels(node.output[0]) == group


def _depthwise_rule(ctx: TSGBContext, a: str, g: str, z: str, kernel, geo) -> str:
    """TSGB-Conv on a depthwise conv, per channel c: ĝ_a = sign(a) ⊙ ConvTranspose(ĝ_z ⊙ z /
    (Conv(|a|, ones) + ε), ones) with group = C. In standard ops that ONNX Runtime keeps in its
    blocked layout (the depthwise Convs with all-ones kernels, ε as the first one's bias, the
    products and the unit step) but the Div; the transpose is the gradient's own depthwise
    data gradient (a Conv with stride 1)."""
    b = ctx.b
    c = ctx.float_channels(a)
    ones = np.ones((c, 1) + tuple(kernel), np.float32)
    window = b.op("Conv", a if _nonnegative(ctx, a) else b.op("Abs", a), b.const(ones),
                  b.const(np.full(c, EPS, np.float32)), group=c, kernel_shape=list(kernel), **geo)
    ratio = b.op("Div", _masked_product(ctx, g, z), window)
    spread = conv_rules.data_gradient(ctx, ratio, z, a, None, ones, list(kernel), geo, c)
    out = b.op("Mul", _sign(ctx, a), spread)
    ctx.signed[out] = (a, spread)
    return out


# -- TSGB-Conv for groups = 1 as single-channel maps -----------------------------------------
# With groups = 1 the rule is one map per location: ĝ_a = sign(a) ⊙ spread, spread [N,1,H,W].
# Built from standard ops that ONNX Runtime's CPU provider keeps in its blocked layout (channel
# sums and the broadcast are Convs with all-ones weights), and emitted as a recorded broadcast
# (TSGBContext.broadcast), so that the conv producing a (through a ReLU) reads S = spread ⊙ Σ_c |a|
# off it: inside a chain conv→ReLU→conv no tensor with channels is made at all (its nodes are dead).

def _nonnegative(ctx: RuleContext, x: str) -> bool:
    producer = ctx.index.producer.get(x)
    if producer is None:
        return False
    if producer.op_type in ("Relu", "Sigmoid"):
        return True
    if producer.op_type == "Clip":
        low = activations.clip_bound(ctx, producer, 1)
        return low is not None and low >= 0.0
    if producer.op_type in ("MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool"):
        return _nonnegative(ctx, producer.input[0])
    return False


def _channel_sum(ctx: RuleContext, x: str, like: str) -> str:
    """Σ_c x [N,1,H,W]; x is shaped like `like`. With C ≥ 16 a 1×1 Conv with all-ones weights
    (kept in ONNX Runtime's blocked layout), else a ReduceSum."""
    c = ctx.float_channels(like)
    if c is None or c < 16:
        return ctx.b.reduce("ReduceSum", x, [1])
    return ctx.b.op("Conv", x, ctx.b.const(np.ones((1, c, 1, 1), np.float32)))


def abs_channel_sum(ctx: RuleContext, a: str) -> str:
    """Σ_c |a| [N,1,H,W]."""
    return _channel_sum(ctx, a if _nonnegative(ctx, a) else ctx.b.op("Abs", a), a)


def _sign(ctx: RuleContext, a: str) -> str:
    """sign(a) for float32 [N,C,H,W]: activations.unit_step with lo = 0 for a known ≥ 0 (the
    ReLU mask, shared), else -1; exact for every normal float."""
    lo = 0.0 if _nonnegative(ctx, a) else -1.0
    return activations.unit_step(ctx, a, ctx.float_channels(a), lo)


def _residual_add(ctx: RuleContext, z: str):
    """(y, other) when z's only consumer is Add(z, other) whose only consumer is a ReLU with
    output y (neither tapped) and `other` is not itself a conv output read only by that Add
    (then that conv, not this one, takes the shortcut); else None."""
    users = ctx.index.consumers.get(z, [])
    if len(users) != 1 or users[0].op_type != "Add" or list(users[0].input).count(z) != 1:
        return None
    add = users[0]
    other = add.input[1] if add.input[0] == z else add.input[0]
    relu = _relu_after(ctx, add.output[0])
    if relu is None or ctx.index.shapes.get(other) != ctx.index.shapes.get(z):
        return None
    other_producer = ctx.index.producer.get(other)
    if (add.input[0] != z and other_producer is not None and other_producer.op_type == "Conv"
            and len(ctx.index.consumers.get(other, [])) == 1):
        return None
    return relu.output[0], other


def _relevance_sum(ctx: TSGBContext, g: str, z: str) -> str:
    """S = Σ_k ĝ_z ⊙ z [N,1,Ho,Wo].

    ĝ_z = sign(z) ⊙ spread (recorded): S = spread ⊙ Σ_k |z|. z feeding only u = z + other → ReLU
    → y: S = Σ ĝ_u ⊙ y − Σ ĝ_u ⊙ other (ĝ_z = ĝ_u and ĝ_u ⊙ u = ĝ_u ⊙ y), so the forward keeps
    Conv+Add+ReLU fused and z is never stored."""
    b = ctx.b
    pooled = ctx.pooled.get(g)
    if pooled is not None and pooled[0] == z:
        x, spread, geo = pooled
        return fused.max_pool_relevance(b, x, spread, **geo)
    residual = _residual_add(ctx, z)
    if residual is not None:
        y, other = residual
        return b.op("Sub", _channel_dot(ctx, g, y), relevance(ctx, other, g))
    return relevance(ctx, z, g)


def _channel_dot(ctx: TSGBContext, g: str, y: str) -> str:
    """Σ_k g ⊙ y [N,1,H,W] for a ReLU or ReLU6 output y. Where g = X ⊙ mask(y) (that unit's
    backward, noted in ctx.masked with w = y ⊙ mask(y): ReLU y, ReLU6 y ⊙ 1[y < max]) it is
    Σ_k X ⊙ w, term by term: a broadcast B(s) (unsigned, or signed by y) gives s ⊙ Σ_k w;
    sign(y) ⊙ spread gives Σ_k spread ⊙ w (w ≥ 0, zero where y is); any other term T gives
    Σ_k T ⊙ w, for a ReLU the product the next residual block's rule forms for its own S."""
    x, masked_y, w = ctx.masked.get(g, (None, None, None))
    if masked_y != y:
        return relevance(ctx, y, g)
    b = ctx.b
    sums = []
    for t in ctx.summands.get(x, [x]):
        f = ctx.broadcasts.get(t)
        if f is not None and (f.sign is None or f.a == y):
            sums.append(b.op("Mul", f.spread, _channel_sum(ctx, w, y)))
            continue
        signed = ctx.signed.get(t)
        sums.append(_channel_sum(ctx, b.op("Mul", signed[1] if signed and signed[0] == y else t, w),
                                 y))
    return ctx.sum(sums)


def _masked_product(ctx: TSGBContext, g: str, y: str) -> str:
    """g ⊙ y, for g = X ⊙ mask(y) noted in ctx.masked: X' ⊙ w, X' being X with the factors sign(y)
    dropped (w ≥ 0 is zero where y is): one product instead of the mask's and y's."""
    x, masked_y, w = ctx.masked.get(g, (None, None, None))
    if masked_y != y:
        return ctx.b.op("Mul", g, y)
    terms = []
    for t in ctx.summands.get(x, [x]):
        signed = ctx.signed.get(t)
        terms.append(signed[1] if signed is not None and signed[0] == y
                     else _unsigned_broadcast(ctx, y, t))
    return ctx.b.op("Mul", ctx.sum(terms), w)


def _channel_summed(ctx: TSGBContext, node, g: str, z: str, kernel, geo,
                    s: str | None = None) -> str:
    b, a = ctx.b, node.input[0]
    s = s if s is not None else _relevance_sum(ctx, g, z)
    pointwise = list(kernel) == [1, 1] and geo["strides"] == [1, 1] and not any(geo["pads"])
    if pointwise:  # a 1×1 stride-1 window sum (and its transpose) is the map itself
        ratio = b.op("Div", s, b.op("Add", abs_channel_sum(ctx, a), b.const(np.float32(EPS))))
        spread = ratio
    else:
        ratio = b.op("Div", s, _window_sum(ctx, abs_channel_sum(ctx, a), kernel, geo, EPS))
        spread = _spread(ctx, ratio, z, a, kernel, geo)
    ones_c = b.const(np.ones((ctx.float_channels(a), 1, 1, 1), np.float32))
    return ctx.broadcast(a, _sign(ctx, a), spread, ones_c)


def _separable(kernel) -> bool:
    """An all-ones window is separable; two 1-D passes beat one 2-D pass in ONNX Runtime from
    5×5 up (7×7 stem: 2.5×), not at 3×3."""
    return kernel[0] * kernel[1] > 2 * (kernel[0] + kernel[1])


def _axis_geometry(geo, kernel, axis: int, pad_end=None):
    """The 1-D part along `axis` of a 2-D geometry, as 2-D attributes (kernel, strides, pads,
    dilations) that leave the other axis alone; pad_end overrides the end pad."""
    k, strides, dilations, pads = [1, 1], [1, 1], [1, 1], [0, 0, 0, 0]
    k[axis], strides[axis], dilations[axis] = kernel[axis], geo["strides"][axis], geo["dilations"][axis]
    pads[axis] = geo["pads"][axis]
    pads[2 + axis] = geo["pads"][2 + axis] if pad_end is None else pad_end
    return k, {"strides": strides, "pads": pads, "dilations": dilations}


def _window_sum(ctx: RuleContext, m: str, kernel, geo, offset: float) -> str:
    """Conv(m, ones_k) + offset with the conv's geometry, m [N,1,H,W] (the offset as the Conv's
    bias: one node fewer)."""
    b = ctx.b
    bias = b.const(np.full(1, offset, np.float32))
    if not _separable(kernel):
        return b.op("Conv", m, b.const(np.ones([1, 1] + list(kernel), np.float32)), bias, **geo)
    for axis in (0, 1):
        k, g1 = _axis_geometry(geo, kernel, axis)
        m = b.op("Conv", m, b.const(np.ones([1, 1] + k, np.float32)), *([bias] if axis else []),
                 **g1)
    return m


def _spread(ctx: RuleContext, ratio: str, z: str, a: str, kernel, geo) -> str:
    """ConvTranspose(ratio, ones_k) onto the grid of a (ratio on the grid of z)."""
    b = ctx.b
    a_hw, z_hw = ctx.spatial(a), ctx.spatial(z)
    if not _separable(kernel) or a_hw is None or z_hw is None:
        ones = b.const(np.ones([1, 1] + list(kernel), np.float32))
        return conv_transpose_to(ctx, ratio, z, ones, a, kernel, geo["strides"], geo["pads"],
                                 geo["dilations"])
    ends, sizes = transpose_extent(z_hw, a_hw, kernel, geo["strides"], geo["pads"],
                                   geo["dilations"])
    for axis in (0, 1):
        k, g1 = _axis_geometry(geo, kernel, axis, pad_end=ends[axis])
        ratio = b.op("ConvTranspose", ratio, b.const(np.ones([1, 1] + k, np.float32)), **g1)
    return ctx.fit_spatial(ratio, a, sizes)


def relevance(ctx: TSGBContext, x: str, g: str) -> str:
    """Σ_c x ⊙ g [N,1,H,W]. For a broadcast g = sign(x) ⊙ B(s) (TSGB-Conv at x), or an unsigned
    B(s) with x ≥ 0: s ⊙ Σ_c |x|, without the channels."""
    b = ctx.b
    f = ctx.broadcasts.get(g)
    if f is not None and (f.a == x if f.sign is not None else _nonnegative(ctx, x)):
        return b.op("Mul", f.spread, abs_channel_sum(ctx, x))
    return _channel_sum(ctx, b.op("Mul", g, x), x)


@TSGB.rule("BatchNormalization")
def batch_norm(ctx: TSGBContext, node, grads):
    if any(ctx.wants(node, i) for i in range(1, 5)):
        raise ctx.unsupported(node, "has parameters computed from the image")
    b, x, y = ctx.b, node.input[0], node.output[0]
    ratio = b.op("Div", y, b.op("Add", x, b.const(np.float32(EPS))))
    return [b.op("Mul", grads[0], ratio)] + [None] * (len(node.input) - 1)


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


def _fc_per_location(ctx: TSGBContext, node, g: str) -> str:
    """TSGB-FC at every location of a class-scoring 1×1 conv (W [K, C, 1, 1]):
    z± = Conv(a, W±), β = γ z⁺ / |z⁻|, ĝ_a = Conv(ĝ_z, W⁺ᵀ) + Conv(β ⊙ ĝ_z, W⁻ᵀ). A ReLU
    right after the conv passes ĝ_y unmasked (see `relu`): the mask 1[y > 0] is applied here."""
    b, a = ctx.b, node.input[0]
    relu_node = _relu_after(ctx, node.output[0])
    if relu_node is not None:
        g = activations.relu_gradient(ctx, relu_node, [g])[0]
    w = ctx.index.const(node.input[1]).astype(np.float32)
    return _tsgb_fc(ctx, a, g, w, lambda x, m: b.op("Conv", x, b.const(m)),
                    lambda x, m: b.op("Conv", x, b.const(np.ascontiguousarray(
                        m.transpose(1, 0, 2, 3)))))


def _tsgb_fc(ctx: TSGBContext, a: str, g: str, w: np.ndarray, forward, backward) -> str:
    """TSGB-FC with W± = max/min(w, 0): z± = forward(a, W±), β = γ z⁺ / (|z⁻| + ε),
    ĝ_a = backward(ĝ_z, W⁺) + backward(β ⊙ ĝ_z, W⁻) (forward/backward: the layer's product
    and its transpose, MatMul or Conv)."""
    b = ctx.b
    w_pos, w_neg = np.maximum(w, 0), np.minimum(w, 0)
    z_pos, z_neg = forward(a, w_pos), forward(a, w_neg)
    beta = b.op("Div", b.op("Mul", z_pos, b.const(np.float32(ctx.options.gamma))),
                b.op("Add", b.op("Abs", z_neg), b.const(np.float32(EPS))))
    return b.op("Add", backward(g, w_pos), backward(b.op("Mul", g, beta), w_neg))


@TSGB.rule("Gemm", "MatMul")
def fully_connected(ctx: TSGBContext, node, grads):
    if node.name not in ctx.fc_nodes or not ctx.wants(node, 0):
        return GRADIENT[node.op_type](ctx, node, grads)
    w = _weight_matrix(ctx, node)
    if w is None or ctx.wants(node, 1):
        raise ctx.unsupported(node, "needs constant weights (and transA = 0) for TSGB-FC")
    b = ctx.b
    g_a = _tsgb_fc(ctx, node.input[0], grads[0], w.astype(np.float32),
                   lambda x, m: b.op("MatMul", x, b.const(np.ascontiguousarray(m.T))),
                   lambda x, m: b.op("MatMul", x, b.const(m)))
    return [g_a] + [None] * (len(node.input) - 1)

