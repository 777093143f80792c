"""Reductions: ReduceSum, ReduceMean, ReduceSumSquare, ReduceL1, ReduceL2, ReduceLogSumExp,
ReduceMax, ReduceMin, ReduceProd.

With y = reduce(x) over the axes A and g the signal at y, brought back to y's keepdims shape
(g' : A axes of size 1) and broadcast over x:
  ReduceSum: g'                  ReduceMean: g' / |A|
  ReduceSumSquare: 2x·g'         ReduceL1: sign(x)·g'
  ReduceL2: x / y'·g' (0 where y = 0, PyTorch's subgradient of the norm at 0)
  ReduceLogSumExp: exp(x − y')·g' (the softmax of x over A)
  ReduceMax, ReduceMin: g'·1[x = y'] / #{x = y'}: split evenly among tied extremes (PyTorch's
    amax/amin convention; without ties, all of it to the arg-max/min)
  ReduceProd: g'·Π_{j≠i} x_j: y'/x where no x is 0; with one zero, the product of the others
    at the zero and 0 elsewhere; with two or more, 0.
Axes come as an attribute (opsets before 18; ReduceSum before 13) or as a constant input;
keepdims 0 or 1. Empty axes reduce over every axis, or with noop_with_empty_axes over none:
then ONNX Runtime applies the element-wise part (x², |x|, …) to each element alone, and the
formulas above with y' = y and no broadcast are its gradient.
"""

from __future__ import annotations

import numpy as np

from ...graph import attrs_of
from ..context import RuleContext
from ..table import GRADIENT


def reduce_axes(ctx: RuleContext, node) -> tuple[list[int], bool]:
    """(sorted non-negative axes, keepdims) of a Reduce node; [] for noop_with_empty_axes."""
    a = attrs_of(node)
    rank = ctx.index.rank(node.input[0])
    if rank is None:
        raise ctx.unsupported(node, "reduces a tensor of unknown rank")
    if len(node.input) > 1 and node.input[1]:
        axes = ctx.index.const(node.input[1])
        if axes is None:
            raise ctx.unsupported(node, "has axes computed at run time")
        axes = [int(v) for v in np.ravel(axes)]
    else:
        axes = list(a.get("axes", []))
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return [], bool(a.get("keepdims", 1))
        axes = list(range(rank))
    return sorted({ax % rank for ax in axes}), bool(a.get("keepdims", 1))


def spread(ctx: RuleContext, g: str, x: str, over: list[int], mean: bool) -> str:
    """Broadcast g (x's shape with the `over` axes at 1) back to x's shape, for a mean divided
    first (on the small g) by the count of the `over` axes."""
    b = ctx.b
    if mean:
        shape = ctx.index.shapes.get(x)
        dims = [shape[i] for i in over] if shape is not None else [None]
        if all(isinstance(d, int) for d in dims):
            g = b.op("Mul", g, b.const(1.0 / float(np.prod(dims))))
        else:
            count = b.reduce("ReduceProd", b.op("Gather", b.shape(x), b.ints(over)), [0])
            g = b.op("Div", g, b.op("Cast", count, to=1))
    # with the batch axis kept, g's first dim is x's: the static-shape constant applies
    shape = b.shape(x) if 0 in over else b.shape_of(x, x, fill=1)
    return b.op("Expand", g, shape)


def _kept(ctx: RuleContext, t: str, axes: list[int], keepdims: bool) -> str:
    """`t` (shaped like the reduction's output) with the reduced axes back at size 1."""
    return t if keepdims or not axes else ctx.b.unsqueeze(t, axes)


def _none_after(node, first):
    return [first] + [None] * (len(node.input) - 1)


def _linear(ctx, node, grads, mean: bool):
    axes, keepdims = reduce_axes(ctx, node)
    if not axes:
        return _none_after(node, grads[0])
    g = _kept(ctx, grads[0], axes, keepdims)
    return _none_after(node, spread(ctx, g, node.input[0], axes, mean))


@GRADIENT.rule("ReduceMean")
def reduce_mean(ctx, node, grads):
    return _linear(ctx, node, grads, mean=True)


@GRADIENT.rule("ReduceSum")
def reduce_sum(ctx, node, grads):
    return _linear(ctx, node, grads, mean=False)


def _times_spread(ctx, node, grads, local: str) -> list:
    """local · g' with g' the signal broadcast back over the reduced axes (`local` x-shaped)."""
    axes, keepdims = reduce_axes(ctx, node)
    g = _kept(ctx, grads[0], axes, keepdims)
    return _none_after(node, ctx.b.op("Mul", local, g))


def _y_kept(ctx, node) -> str:
    axes, keepdims = reduce_axes(ctx, node)
    return _kept(ctx, node.output[0], axes, keepdims)


@GRADIENT.rule("ReduceSumSquare")
def reduce_sum_square(ctx, node, grads):
    """2x·g'."""
    x = node.input[0]
    return _times_spread(ctx, node, grads, ctx.b.op("Mul", x, ctx.b.const(2.0)))


@GRADIENT.rule("ReduceL1")
def reduce_l1(ctx, node, grads):
    """sign(x)·g' (0 at x = 0)."""
    return _times_spread(ctx, node, grads, ctx.b.op("Sign", node.input[0]))


@GRADIENT.rule("ReduceL2")
def reduce_l2(ctx, node, grads):
    """x / max(y', tiny)·g': where y' = 0 every x is 0, so the quotient is 0."""
    b = ctx.b
    tiny = b.const(np.finfo(np.float32).tiny)
    return _times_spread(ctx, node, grads,
                         b.op("Div", node.input[0], b.op("Max", _y_kept(ctx, node), tiny)))


@GRADIENT.rule("ReduceLogSumExp")
def reduce_log_sum_exp(ctx, node, grads):
    """exp(x − y')·g'."""
    b = ctx.b
    return _times_spread(ctx, node, grads,
                         b.op("Exp", b.op("Sub", node.input[0], _y_kept(ctx, node))))


@GRADIENT.rule("ReduceMax", "ReduceMin")
def reduce_extreme(ctx, node, grads):
    """g'·1[x = y'] / #{x = y'}: ties split evenly (PyTorch's amax/amin)."""
    b = ctx.b
    axes, keepdims = reduce_axes(ctx, node)
    x = node.input[0]
    hit = b.op("Cast", b.op("Equal", x, _y_kept(ctx, node)), to=1)
    if axes:
        hit = b.op("Div", hit, b.reduce("ReduceSum", hit, axes, keepdims=True))
    return _times_spread(ctx, node, grads, hit)


@GRADIENT.rule("ReduceProd")
def reduce_prod(ctx, node, grads):
    """g'·Π_{j≠i} x_j, exact with zeros: with x̃ = x where x ≠ 0 else 1, P = Π x̃ and z the
    count of zeros: P/x̃ where z = 0, P at the zero where z = 1, 0 otherwise."""
    b = ctx.b
    axes, keepdims = reduce_axes(ctx, node)
    x = node.input[0]
    is_zero = b.op("Equal", x, b.const(0.0))
    safe = b.op("Where", is_zero, b.const(1.0), x)
    if axes:
        prod = b.reduce("ReduceProd", safe, axes, keepdims=True)
        zeros = b.reduce("ReduceSum", b.op("Cast", is_zero, to=1), axes, keepdims=True)
    else:
        prod, zeros = safe, b.op("Cast", is_zero, to=1)
    none_zero = b.op("Equal", zeros, b.const(0.0))
    lone_zero = b.op("And", b.op("Equal", zeros, b.const(1.0)), is_zero)
    others = b.op("Where", none_zero, b.op("Div", prod, safe),
                  b.op("Where", lone_zero, prod, b.zeros_like(x)))
    return _times_spread(ctx, node, grads, others)
