"""Conv: dx = ConvTranspose(g, W) with the conv's strides, pads, dilations and groups.

With stride 1 and constant weights the same dx is a plain convolution with the spatially flipped,
per-group transposed kernel and pads d(k−1) − p, which runs on ONNX Runtime's fast Conv path.
"""

from __future__ import annotations

import numpy as np

from ..context import RuleContext, conv_geometry, conv_transpose_to


def _flipped_transposed(w: np.ndarray, group: int) -> np.ndarray:
    """W [M, C/g, k…] -> W' [C, M/g, k…]: per group swap in/out channels, flip space."""
    m, cg = w.shape[:2]
    k = w.shape[2:]
    wg = w.reshape((group, m // group, cg) + k).swapaxes(1, 2).reshape((group * cg, m // group) + k)
    return np.ascontiguousarray(np.flip(wg, axis=tuple(range(2, 2 + len(k)))))


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
    weights = ctx.index.const(w)
    pads_t = [d * (k - 1) - p for d, k, p in
              zip(geo["dilations"] * 2, kernel * 2, geo["pads"])]
    if weights is not None and all(s == 1 for s in geo["strides"]) and min(pads_t) >= 0:
        w_t = ctx.b.const(_flipped_transposed(weights, group), weights.dtype)
        result[0] = ctx.b.op("Conv", g, w_t, group=group, pads=pads_t,
                             dilations=geo["dilations"], kernel_shape=kernel)
        return result
    result[0] = conv_transpose_to(ctx, g, node.output[0], w, x, kernel, geo["strides"],
                                  geo["pads"], geo["dilations"], group)
    return result


RULES = {"Conv": conv}
