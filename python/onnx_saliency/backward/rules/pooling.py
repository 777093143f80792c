"""Pooling.

MaxPool: the signal goes to each window's argmax; overlapping windows add up (scatter-add of g
  at the forward node's Indices output, which the rule asks the builder to switch on; fused: the
  MaxPoolGradient op recomputes the argmax from x, fused.py).
AveragePool: dx = ConvTranspose(g / d, ones) with d the per-window divisor, computed in-graph as a
  box-sum of a ones map (padding counted when count_include_pad, never the ceil_mode overhang).
GlobalAveragePool: g / (H·W), broadcast back (the Reduce ops: reductions.py).
GlobalMaxPool: the signal goes to the (first) argmax of each channel.
"""

from __future__ import annotations

import numpy as np

from ... import fused
from ...graph import attrs_of
from ..context import conv_geometry, conv_transpose_to
from ..table import GRADIENT
from .reductions import spread


@GRADIENT.rule("MaxPool")
def max_pool(ctx, node, grads):
    if attrs_of(node).get("storage_order", 0):
        raise ctx.unsupported(node, "uses storage_order=1")
    b, x = ctx.b, node.input[0]
    kernel = list(attrs_of(node)["kernel_shape"])
    if b.fused and len(kernel) == 2 and ctx.index.rank(x) == 4:
        geo = conv_geometry(ctx, node, x, kernel)
        return [fused.max_pool_gradient(b, x, grads[0], kernel, geo["strides"], geo["pads"],
                                        geo["dilations"])]
    indices = b.forward_output(node, 1, "maxpool_indices")
    flat = b.ints([-1])
    zeros = b.op("ConstantOfShape", b.op("Reshape", b.op("Size", x), b.ints([1])))
    scattered = b.op("ScatterElements", zeros, b.op("Reshape", indices, flat),
                     b.op("Reshape", grads[0], flat), axis=0, reduction="add")
    return [b.op("Reshape", scattered, b.shape(x))]


@GRADIENT.rule("AveragePool")
def average_pool(ctx, node, grads):
    b, x, y = ctx.b, node.input[0], node.output[0]
    a = attrs_of(node)
    kernel = list(a["kernel_shape"])
    n = len(kernel)
    channels = (ctx.index.shapes.get(x) or (None, None))[1]
    if not isinstance(channels, int):
        raise ctx.unsupported(node, "pools a tensor with an unknown channel count")
    geo = conv_geometry(ctx, node, x, kernel)
    if any(d != 1 for d in geo["dilations"]):
        raise ctx.unsupported(node, "uses dilated average pooling")
    strides, pads = geo["strides"], geo["pads"]
    overhang = [s - 1 if a.get("ceil_mode", 0) else 0 for s in strides]
    ones_hw = b.op("ConstantOfShape", b.op("Concat", b.ints([1, 1]), b.shape(x, 2, 2 + n), axis=0),
                   value=_one())
    if a.get("count_include_pad", 0):
        counted = b.op("Pad", ones_hw, b.ints([0, 0] + pads[:n] + [0, 0] + pads[n:]), b.const(1.0))
        box_pads = [0] * n + overhang
    else:
        counted = ones_hw
        box_pads = pads[:n] + [p + o for p, o in zip(pads[n:], overhang)]
    box = b.const(np.ones([1, 1] + kernel, np.float32))
    divisor = b.op("Conv", counted, box, strides=strides, pads=box_pads)
    divisor = b.op("Slice", divisor, b.ints([0] * n), b.shape(y, 2, 2 + n), b.ints(range(2, 2 + n)))
    spread = b.const(np.ones([channels, 1] + kernel, np.float32))
    return [conv_transpose_to(ctx, b.op("Div", grads[0], divisor), y, spread, x, kernel, strides,
                              pads, [1] * n, group=channels)]


def _one():
    from onnx import numpy_helper
    return numpy_helper.from_array(np.ones([1], np.float32))


@GRADIENT.rule("GlobalAveragePool")
def global_average_pool(ctx, node, grads):
    """g / (H·W) broadcast over H×W: its constants have the same size at any input size."""
    x = node.input[0]
    rank = ctx.index.rank(x) or 4
    return [spread(ctx, grads[0], x, list(range(2, rank)), mean=True)]


@GRADIENT.rule("GlobalMaxPool")
def global_max_pool(ctx, node, grads):
    b, x = ctx.b, node.input[0]
    flat_shape = b.op("Concat", b.shape(x, 0, 2), b.ints([-1]), axis=0)
    flat = b.op("Reshape", x, flat_shape)
    arg = b.op("ArgMax", flat, axis=2, keepdims=1)
    g = b.op("Reshape", grads[0], b.op("Concat", b.shape(x, 0, 2), b.ints([1]), axis=0))
    routed = b.op("ScatterElements", b.zeros_like(flat), arg, g, axis=2)
    return [b.op("Reshape", routed, b.shape(x))]

