"""Ops that move values without changing them.

Flatten, Reshape, Squeeze, Unsqueeze: dx = Reshape(g, shape(x)). Transpose: the inverse perm.
Concat: dx_i = g sliced at x_i's offset. Split: dx = Concat(g_i, zeros for absent g_i).
Slice (steps 1): dx = zero-pad g back to x's shape. Pad (constant mode): dx = g sliced back.
"""

from __future__ import annotations

import numpy as np

from ...graph import attrs_of
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
    b, x = ctx.b, node.input[0]
    shape = ctx.index.shapes.get(x)
    consts = [ctx.index.const(i) if i else None for i in node.input[1:]]
    if shape is None or any(c is None for c, name in zip(consts, node.input[1:]) if name):
        raise ctx.unsupported(node, "slices a tensor of unknown rank or with run-time bounds")
    starts, ends = consts[0], consts[1]
    axes = consts[2] if len(consts) > 2 and consts[2] is not None else np.arange(len(starts))
    steps = consts[3] if len(consts) > 3 and consts[3] is not None else np.ones(len(starts), int)
    if np.any(steps != 1):
        raise ctx.unsupported(node, "slices with a step other than 1")
    rank = len(shape)
    pads = [0] * (2 * rank)
    for start, end, axis in zip(starts, ends, axes):
        axis = int(axis) % rank
        if not isinstance(shape[axis], int):
            raise ctx.unsupported(node, f"slices axis {axis}, whose size is not known statically")
        lo, hi, _ = slice(int(start), int(end)).indices(shape[axis])
        pads[axis], pads[axis + rank] = lo, shape[axis] - max(hi, lo)
    return [b.op("Pad", grads[0], b.ints(pads))] + [None] * (len(node.input) - 1)


@GRADIENT.rule("Pad")
def pad(ctx, node, grads):
    b = ctx.b
    mode = attrs_of(node).get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = ctx.index.const(node.input[1]) if len(node.input) > 1 else None
    if mode != "constant" or pads is None or np.any(pads < 0):
        raise ctx.unsupported(node, f"pads in mode '{mode}' or with run-time or negative pads; "
                              "only constant-mode padding with constant pads has a rule")
    rank = ctx.index.rank(node.input[0])
    axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        axes = [int(a) % rank for a in ctx.index.const(node.input[3])]
    k = len(axes)
    begin, end = [int(p) for p in pads[:k]], [int(p) for p in pads[k:]]
    ends = [-e if e > 0 else INT_MAX for e in end]
    return [b.op("Slice", grads[0], b.ints(begin), b.ints(ends), b.ints(axes))] + \
        [None] * (len(node.input) - 1)

