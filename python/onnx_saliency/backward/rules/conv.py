"""Conv: dx = ConvTranspose(g, W) with the conv's strides, pads, dilations and groups."""

from __future__ import annotations

from ..context import RuleContext, conv_geometry, conv_transpose_to


def conv(ctx: RuleContext, node, grads):
    g = grads[0]
    x, w = node.input[0], node.input[1]
    result = [None] * len(node.input)
    if ctx.wants(node, 1) or ctx.wants(node, 2):
        raise ctx.unsupported(node, "has weights computed from the image; only constant "
                              "weights are supported")
    if not ctx.wants(node, 0):
        return result
    wshape = ctx.index.shapes.get(w)
    if wshape is None or not all(isinstance(d, int) for d in wshape[2:]):
        raise ctx.unsupported(node, "has a weight of unknown shape")
    kernel = list(wshape[2:])
    geo = conv_geometry(ctx, node, x, kernel)
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    result[0] = conv_transpose_to(ctx, g, node.output[0], w, x, kernel, geo["strides"],
                                  geo["pads"], geo["dilations"], group)
    return result


RULES = {"Conv": conv}
