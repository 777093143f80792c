"""Ops that move values without changing them.

Flatten, Reshape, Squeeze, Unsqueeze: dx = Reshape(g, shape(x)). Transpose: the inverse perm.
Concat: dx_i = g sliced at x_i's offset. Split (constant or run-time sizes, num_outputs):
dx = Concat(g_i, zeros for absent g_i). Slice: dx = g put back in zeros shaped like x (a Pad
where it can be, run-time bounds included; else a scatter). Pad (constant mode): dx = g sliced
back.
"""

from __future__ import annotations

import numpy as np
import onnx

from ...graph import attr_text, attrs_of
from ..context import INT_MAX, RuleContext
from ..table import GRADIENT


@GRADIENT.rule("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def reshape_back(ctx: RuleContext, node, grads):
    shape = ctx.b.shape_of(node.input[0], node.output[0], fill=0)
    return [ctx.b.op("Reshape", grads[0], shape)] + [None] * (len(node.input) - 1)


@GRADIENT.rule("Transpose")
def transpose(ctx, node, grads):
    perm = attrs_of(node).get("perm")
    if perm is None:
        rank = ctx.index.rank(node.input[0])
        perm = list(range(rank))[::-1]
    inverse = list(np.argsort(perm))
    return [ctx.b.op("Transpose", grads[0], perm=[int(p) for p in inverse])]


def _axis(ctx, node, default=0) -> int:
    axis = attrs_of(node).get("axis", default)
    rank = ctx.index.rank(node.input[0]) or ctx.index.rank(node.output[0])
    return axis % rank if rank else axis


@GRADIENT.rule("Concat")
def concat(ctx, node, grads):
    b, g = ctx.b, grads[0]
    axis = _axis(ctx, node)
    sizes = []
    for x in node.input:
        shape = ctx.index.shapes.get(x)
        sizes.append(shape[axis] if shape is not None and isinstance(shape[axis], int) else None)
    result = []
    if all(s is not None for s in sizes):
        offsets = np.cumsum([0] + sizes)
        for i in range(len(node.input)):
            result.append(b.op("Slice", g, b.ints([offsets[i]]), b.ints([offsets[i + 1]]),
                               b.ints([axis])) if ctx.wants(node, i) else None)
        return result
    start = b.ints([0])
    for i, x in enumerate(node.input):
        end = b.op("Add", start, b.op("Gather", b.shape(x), b.ints([axis])))
        result.append(b.op("Slice", g, start, end, b.ints([axis])) if ctx.wants(node, i) else None)
        start = end
    return result


@GRADIENT.rule("Split")
def split(ctx, node, grads):
    b = ctx.b
    parts = [g if g is not None else b.zeros_like(out) for g, out in zip(grads, node.output)]
    return [b.op("Concat", *parts, axis=_axis(ctx, node))] + [None] * (len(node.input) - 1)


@GRADIENT.rule("Slice")
def slice_(ctx, node, grads):
    """dx = g put back where the slice took it from, zeros elsewhere: a zero-pad (constant
    bounds with steps ±1, a negative step's axis first reversed; or run-time bounds with steps
    1, the pads computed in the graph), else a scatter at the slice of x's flat positions."""
    x = node.input[0]
    shape = ctx.index.shapes.get(x)
    consts = [ctx.index.const(i) if i else None for i in node.input[1:]]
    bounds_known = all(c is not None for c, name in zip(consts, node.input[1:]) if name)
    dx = None
    if shape is not None and bounds_known:
        dx = _slice_const(ctx, node, grads[0], shape, consts)
    if dx is None and shape is not None:
        dx = _slice_runtime_pad(ctx, node, grads[0], len(shape), consts)
    if dx is None:
        dx = _slice_scatter(ctx, node, grads[0])
    return [dx] + [None] * (len(node.input) - 1)


def _slice_const(ctx, node, g, shape, consts):
    """Constant bounds and steps ±1 on static axes: Pad (after reversing the negative-step axes),
    else None."""
    b = ctx.b
    starts, ends = consts[0], consts[1]
    axes = consts[2] if len(consts) > 2 and consts[2] is not None else np.arange(len(starts))
    steps = consts[3] if len(consts) > 3 and consts[3] is not None else np.ones(len(starts), int)
    rank = len(shape)
    if np.any(np.abs(steps) != 1) or any(not isinstance(shape[int(a) % rank], int) for a in axes):
        return None
    if np.any(steps != 1):
        return _slice_flipped(ctx, g, shape, starts, ends, axes, steps)
    pads = [0] * (2 * rank)
    for start, end, axis in zip(starts, ends, axes):
        axis = int(axis) % rank
        lo, hi, _ = slice(int(start), int(end)).indices(shape[axis])
        pads[axis], pads[axis + rank] = lo, shape[axis] - max(hi, lo)
    return b.op("Pad", g, b.ints(pads))


def _slice_flipped(ctx, g, shape, starts, ends, axes, steps):
    """Steps ±1: g reversed along the step −1 axes, then zero-padded from the lowest position
    taken to the highest."""
    b = ctx.b
    rank = len(shape)
    pads, flip = [0] * (2 * rank), []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = int(axis) % rank
        taken = range(shape[axis])[slice(int(start), int(end), int(step))]
        if step < 0:
            flip.append(axis)
        low = min(taken) if len(taken) else 0
        high = max(taken) + 1 if len(taken) else 0
        pads[axis], pads[axis + rank] = low, shape[axis] - high
    if flip:
        g = b.op("Slice", g, b.ints([-1] * len(flip)), b.ints([-INT_MAX] * len(flip)),
                 b.ints(flip), b.ints([-1] * len(flip)))
    return b.op("Pad", g, b.ints(pads))


def _slice_runtime_pad(ctx, node, g, rank, consts):
    """Run-time starts/ends on constant axes with steps 1: per sliced axis of size d,
    lo = clamp(start + d·[start < 0], 0, d), hi = clamp(end + d·[end < 0], lo, d) (Slice's own
    clamping), and dx = Pad(g, begin lo, end d − hi), the pads scattered into place. None when
    the axes or steps are not constant or a step is not 1."""
    b, x = ctx.b, node.input[0]
    inputs = list(node.input[1:]) + [""] * (4 - len(node.input[1:]))
    if (inputs[2] and consts[2] is None) or (inputs[3] and consts[3] is None):
        return None
    if inputs[3] and np.any(consts[3] != 1):
        return None
    if inputs[2]:
        axes = [int(a) % rank for a in consts[2]]
    else:
        count = ctx.index.shapes.get(inputs[0])
        if not count or not isinstance(count[0], int):
            return None
        axes = list(range(count[0]))
    sizes = b.op("Gather", b.shape(x), b.ints(axes))
    zero = b.ints([0])

    def position(name, low):
        value = name if ctx.index.types.get(name) == onnx.TensorProto.INT64 else \
            b.op("Cast", name, to=onnx.TensorProto.INT64)
        value = b.op("Where", b.op("Less", value, zero), b.op("Add", value, sizes), value)
        return b.op("Min", b.op("Max", value, low), sizes)

    lo = position(inputs[0], zero)
    hi = position(inputs[1], lo)
    pads = b.op("ScatterElements", b.ints([0] * (2 * rank)),
                b.ints(axes + [a + rank for a in axes]),
                b.op("Concat", lo, b.op("Sub", sizes, hi), axis=0), axis=0)
    return b.op("Pad", g, pads)


def _slice_scatter(ctx, node, g):
    """Any bounds, axes and steps: the same Slice of x's flat positions 0 … size−1 (shaped like
    x) says where each element of g came from; dx = g scattered there (no two alike)."""
    b, x = ctx.b, node.input[0]
    size = b.op("Size", x)
    positions = b.op("Reshape", b.op("Range", b.const(0, np.int64), size, b.const(1, np.int64)),
                     b.shape(x))
    taken = b.op("Slice", positions, *node.input[1:])
    flat = b.ints([-1])
    dx = b.op("ScatterElements", b.op("ConstantOfShape", b.unsqueeze(size, [0])),
              b.op("Reshape", taken, flat), b.op("Reshape", g, flat), axis=0)
    return b.op("Reshape", dx, b.shape(x))


@GRADIENT.rule("Pad")
def pad(ctx, node, grads):
    """Constant-mode Pad by `pads` = (begin, end) per axis. Non-negative constant pads: dx = g
    sliced back. Else (run-time pads, or negative ones that crop): dx = Slice(Pad(g, max(−pads,
    0)), max(begin, 0), max(begin, 0) + shape(x)): the cropped parts come back as zeros."""
    b = ctx.b
    mode = attr_text(node, "mode", "constant")
    if mode != "constant":
        raise ctx.unsupported(node, f"pads in mode '{mode}'; only constant-mode padding has a rule")
    rank = ctx.index.rank(node.input[0])
    if rank is None:
        raise ctx.unsupported(node, "pads a tensor of unknown rank")
    axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        given = ctx.index.const(node.input[3])
        if given is None:
            raise ctx.unsupported(node, "pads run-time axes")
        axes = [int(a) % rank for a in given]
    k, rest = len(axes), [None] * (len(node.input) - 1)
    pads = ctx.index.const(node.input[1])
    if pads is not None and not np.any(pads < 0):
        begin, end = [int(p) for p in pads[:k]], [int(p) for p in pads[k:]]
        ends = [-e if e > 0 else INT_MAX for e in end]
        return [b.op("Slice", grads[0], b.ints(begin), b.ints(ends), b.ints(axes))] + rest
    pads = node.input[1] if pads is None else b.ints(pads)
    zero = b.ints([0])
    uncrop = b.op("Max", b.op("Neg", pads), zero)
    with_axes = ["", b.ints(axes)] if len(node.input) > 3 and node.input[3] else []
    padded = b.op("Pad", grads[0], uncrop, *with_axes)
    start = b.op("Max", b.op("Slice", pads, zero, b.ints([k])), zero)
    size = b.shape(node.input[0]) if k == rank else \
        b.op("Gather", b.shape(node.input[0]), b.ints(axes))
    return [b.op("Slice", padded, start, b.op("Add", start, size), b.ints(axes))] + rest

