"""Conv: dx = ConvTranspose(g, W) with the conv's strides, pads, dilations and groups.

With stride 1 and constant weights the same dx is a plain convolution with the spatially flipped,
per-group transposed kernel and pads d(k−1) − p, which runs on ONNX Runtime's fast Conv path.

Weight gradient (meta-saliency), per group j: dW_j[k, c, i, l] = Σ_n Σ_v g[n, k, v] a[n, c, v·s + (i, l)·d − p]:
2-D with known sizes, im2col and one GEMM (weight_gradient); otherwise one Conv whose batch is
the group's input channel c, whose channels are (j, n), whose kernel is g itself (strides and
dilations swapped), cropped to the kernel size. dB = Σ_{n,v} g.

ConvTranspose (a decoder's upsampling), y[o] += x[i]·W[k] at o = i·s + k·d − p_begin: its
adjoint is the correlation dx[i] = Σ_k g[i·s + k·d − p_begin]·W[k], a Conv of g with the same
weights [C, M/G, k…] (no flip), strides, dilations and groups, begin pads p_begin and end pads
that give x's size (output_padding and an output_shape's extra length are never read back).
Its weight gradient is that Conv's, with x as the signal at its output:
dW[c, m, k] = Σ_n Σ_i x[n, c, i]·g[n, m, i·s + k·d − p_begin]; dB = Σ_{n,v} g.
"""

from __future__ import annotations

import numpy as np

from ...graph import attrs_of
from ..context import (RuleContext, conv_params, conv_transpose_to, to_blocked_layout,
                       window_attrs)
from ..table import GRADIENT


def _flipped_transposed(w: np.ndarray, group: int) -> np.ndarray:
    """W [M, C/g, k…] -> W' [C, M/g, k…]: per group swap in/out channels, flip space."""
    m, cg = w.shape[:2]
    k = w.shape[2:]
    wg = w.reshape((group, m // group, cg) + k).swapaxes(1, 2).reshape((group * cg, m // group) + k)
    return np.ascontiguousarray(np.flip(wg, axis=tuple(range(2, 2 + len(k)))))


def _transposed_in_graph(ctx: RuleContext, w: str, wshape: list, group: int) -> str:
    """_flipped_transposed of a runtime 1×1 weight (no flip needed): per group swap in/out
    channels. (A k×k runtime kernel goes through ConvTranspose: ORT's reversed Slice that the flip
    needs costs more than it saves.)"""
    b = ctx.b
    m, cg = wshape[:2]
    k = wshape[2:]
    n = len(k)
    grouped = b.op("Reshape", w, b.ints([group, m // group, cg] + k))
    swapped = b.op("Transpose", grouped, perm=[0, 2, 1] + list(range(3, 3 + n)))
    return b.op("Reshape", swapped, b.ints([group * cg, m // group] + k))


@GRADIENT.rule("Conv")
def conv(ctx: RuleContext, node, grads):
    g = grads[0]
    x, w = node.input[0], node.input[1]
    result = [None] * len(node.input)
    kernel, geo, group = conv_params(ctx, node)
    wshape = list(ctx.index.shapes[w])
    if ctx.wants(node, 1):
        result[1] = weight_gradient(ctx, g, x, node.output[0], list(wshape), geo, group)
    if ctx.wants(node, 2):
        result[2] = ctx.b.reduce("ReduceSum", g, [0] + list(range(2, 2 + len(kernel))), False)
    if ctx.wants(node, 0):
        weights = ctx.index.const(w)
        result[0] = data_gradient(ctx, g, node.output[0], x, w, weights, kernel, geo, group)
    return result


def data_gradient(ctx: RuleContext, g: str, out: str, x: str, w: str | None,
                  weights: np.ndarray | None, kernel: list, geo: dict, group: int) -> str:
    """dx of the conv x -> out given g = dL/d out: ConvTranspose(g, W). `w`: the weight's name
    (None: a new constant), `weights` its value (None: computed at run time). Stride 1 with
    constant (or runtime 1×1) weights: a Conv with _flipped_transposed(W), on ONNX Runtime's
    fast Conv path; else a ConvTranspose, taken back to the blocked layout (to_blocked_layout)."""
    b = ctx.b
    pads_t = [d * (k - 1) - p for d, k, p in
              zip(geo["dilations"] * 2, kernel * 2, geo["pads"])]
    constant = weights is not None
    pointwise = all(k == 1 for k in kernel)
    if all(s == 1 for s in geo["strides"]) and min(pads_t) >= 0 and (constant or pointwise):
        if constant:
            w_t = b.const(_flipped_transposed(weights, group), weights.dtype)
        else:  # runtime 1×1 weights (meta-saliency's stepped copy): the transpose in-graph
            w_t = _transposed_in_graph(ctx, w, list(ctx.index.shapes[w]), group)
        return b.op("Conv", g, w_t, group=group, pads=pads_t, dilations=geo["dilations"],
                    kernel_shape=kernel)
    w = w if w is not None else b.const(weights, weights.dtype)
    dx = conv_transpose_to(ctx, g, out, w, x, kernel, geo["strides"], geo["pads"],
                           geo["dilations"], group)
    return to_blocked_layout(ctx, dx, x)


def _transpose_begin_pads(ctx: RuleContext, node, kernel: list, x_hw, y_hw) -> tuple[list, dict]:
    """(begin pads p_begin, strides/dilations) of a ConvTranspose node as ONNX Runtime applies
    them: the `pads` attribute, or from an output_shape: with total = s(n − 1) + output_padding
    + (k − 1)d + 1 − out, p_begin = ⌊total/2⌋ for SAME_UPPER, total − ⌊total/2⌋ otherwise,
    and 0 where total < 0 (the extra length lies at the end)."""
    n = len(kernel)
    a, strides, dilations, auto_pad = window_attrs(node, n)
    geo = {"strides": strides, "dilations": dilations}
    if "output_shape" in a:
        if x_hw is None:
            raise ctx.unsupported(node, "has an output_shape and an input of unknown size")
        outs = list(a["output_shape"])[-n:]
        extra = list(a.get("output_padding", [0] * n))
        begin = []
        for size, o, k, s, d, e in zip(x_hw, outs, kernel, strides, dilations, extra):
            total = s * (size - 1) + e + (k - 1) * d + 1 - o
            begin.append(0 if total < 0 else total // 2 if auto_pad == "SAME_UPPER"
                         else total - total // 2)
        return begin, geo
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        raise ctx.unsupported(node, f"uses auto_pad={auto_pad} without an output_shape; "
                              "re-export the model with explicit pads")
    if auto_pad == "VALID":
        return [0] * n, geo
    return list(a.get("pads", [0] * 2 * n))[:n], geo


@GRADIENT.rule("ConvTranspose")
def conv_transpose(ctx: RuleContext, node, grads):
    """dx = Conv(g, W), dW and dB (the module docstring)."""
    b, g = ctx.b, grads[0]
    x, w = node.input[0], node.input[1]
    wshape = ctx.index.shapes.get(w)
    if wshape is None or not all(isinstance(d, int) for d in wshape):
        raise ctx.unsupported(node, "has a weight of unknown shape")
    kernel, group = list(wshape[2:]), attrs_of(node).get("group", 1)
    n = len(kernel)
    x_hw, y_hw = ctx.spatial(x), ctx.spatial(node.output[0])
    if x_hw is None or y_hw is None:
        raise ctx.unsupported(node, "has an input or output of unknown spatial size")
    begin, geo = _transpose_begin_pads(ctx, node, kernel, x_hw, y_hw)
    strides, dilations = geo["strides"], geo["dilations"]
    # g read at i·s + k·d − p_begin for i < len(x): crop what lies before 0 (p_begin < 0) or
    # past the last position read; pad the end where the window runs past y
    read = [s * (size - 1) + d * (k - 1) + 1 for size, s, d, k in zip(x_hw, strides, dilations, kernel)]
    start = [max(0, -p) for p in begin]
    begin = [max(0, p) for p in begin]
    stop = [min(y, r - p + c) for y, r, p, c in zip(y_hw, read, begin, start)]
    if start != [0] * n or stop != list(y_hw):
        g = b.op("Slice", g, b.ints(start), b.ints(stop), b.ints(range(2, 2 + n)))
    end = [r - (st - c) - p for r, st, c, p in zip(read, stop, start, begin)]
    geo = {"strides": strides, "dilations": dilations, "pads": begin + end}
    result = [None] * len(node.input)
    if ctx.wants(node, 0):
        result[0] = b.op("Conv", g, w, group=group, strides=strides, dilations=dilations,
                         pads=begin + end, kernel_shape=kernel)
    if ctx.wants(node, 1):
        result[1] = weight_gradient(ctx, x, g, x, list(wshape), geo, group)
    if ctx.wants(node, 2):
        result[2] = b.reduce("ReduceSum", grads[0], [0] + list(range(2, 2 + n)), False)
    return result


def weight_gradient(ctx: RuleContext, g: str, x: str, out: str, wshape: list, geo: dict,
                    group: int) -> str:
    """dW [K, C/G, k…] of a conv with input x, output `out` and output signal g.

    2-D with a known output size: im2col and one GEMM per group,
    dW_j = g_j · cols_jᵀ, cols[(c, i, l), (n, v)] = x[n, c, v·s + (i, l)·d − p] (GEMM work equal
    to the forward conv's). Otherwise the transposed-conv formulation of the module docstring."""
    b = ctx.b
    k_out, cg = wshape[:2]
    kernel = wshape[2:]
    g_hw = ctx.spatial(out)
    if len(kernel) == 2 and g_hw is not None:
        return _weight_gradient_im2col(ctx, g, x, k_out, cg, kernel, geo, group, g_hw)
    n = len(kernel)
    spatial = list(range(3, 3 + n))
    # a [N, C, S…] -> [N, G, C/G, S…] -> [C/G, G, N, S…] -> [C/G, G·N, S…]
    grouped = b.op("Reshape", x, b.op("Concat", b.ints([0, group, cg]), b.shape(x, 2, 2 + n), axis=0))
    swapped = b.op("Transpose", grouped, perm=[2, 1, 0] + spatial)
    batch_of_c = b.op("Reshape", swapped, b.op("Concat", b.ints([cg, -1]), b.shape(x, 2, 2 + n), axis=0))
    kernel_g = b.op("Transpose", g, perm=[1, 0] + list(range(2, 2 + n)))     # [K, N, So…]
    dw = b.op("Conv", batch_of_c, kernel_g, group=group, strides=geo["dilations"],
              dilations=geo["strides"], pads=geo["pads"])                      # [C/G, K, k'…]
    dw = b.op("Slice", dw, b.ints([0] * n), b.ints(kernel), b.ints(range(2, 2 + n)))
    return b.op("Transpose", dw, perm=[1, 0] + list(range(2, 2 + n)))


def _channels_first(ctx: RuleContext, t: str, shape: tuple | None) -> str:
    """[N, C, H, W] -> [C, N, H, W] for a tensor of static `shape` (or None): a free Reshape
    when N is 1 (meta-saliency's per-image graph), else a Transpose."""
    shape = shape or (None,)
    if shape[0] == 1 and all(isinstance(d, int) for d in shape):
        return ctx.b.op("Reshape", t, ctx.b.ints([shape[1], 1, *shape[2:]]))
    return ctx.b.op("Transpose", t, perm=[1, 0, 2, 3])


def _weight_gradient_im2col(ctx, g, x, k_out, cg, kernel, geo, group, out_hw):
    """x and g with channels first ([C, N, H, W], [K, N·Ho·Wo]: one copy each, none at batch
    1), the k² shifted (strided) windows of x stacked as cols [C, k², N·Ho·Wo], then per group
    one GEMM."""
    b = ctx.b
    (kh, kw), (sh, sw), (dh, dw_) = kernel, geo["strides"], geo["dilations"]
    ho, wo = out_hw
    pads = geo["pads"]
    x_shape = ctx.index.shapes.get(x)
    xt = _channels_first(ctx, x, x_shape)                                      # [C, N, H, W]
    if any(pads):
        xt = b.op("Pad", xt, b.ints([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]))
    x_hw = ctx.spatial(x)
    padded_hw = None if x_hw is None else (x_hw[0] + pads[0] + pads[2], x_hw[1] + pads[1] + pads[3])
    shifted = []
    for i in range(kh):
        for l in range(kw):
            begin, end = (i * dh, l * dw_), (i * dh + sh * (ho - 1) + 1, l * dw_ + sw * (wo - 1) + 1)
            if begin == (0, 0) and (sh, sw) == (1, 1) and end == padded_hw:
                shifted.append(xt)                                           # the whole of x
            else:
                shifted.append(b.op("Slice", xt, b.ints(begin), b.ints(end), b.ints([2, 3]),
                                    b.ints([sh, sw])))                       # [C, N, Ho, Wo]
    cols = shifted[0] if len(shifted) == 1 else b.op(
        "Concat", *[b.unsqueeze(t, [1]) for t in shifted], axis=1)          # [C, k², N, Ho, Wo]
    taps = kh * kw
    kg = k_out // group
    g_t = _channels_first(ctx, g, x_shape and (x_shape[0], k_out, ho, wo))     # [K, N, Ho, Wo]
    if group == 1:                                    # [K, M] · [C·k², M]ᵀ as one Gemm
        dw = b.op("Gemm", b.op("Reshape", g_t, b.ints([k_out, -1])),
                  b.op("Reshape", cols, b.ints([cg * taps, -1])), transB=1)
    elif kg == 1 and cg == 1:                         # depthwise: per-channel dot products
        dw = b.reduce("ReduceSum", b.op("Mul", b.op("Reshape", cols, b.ints([group, taps, -1])),
                                        b.op("Reshape", g_t, b.ints([group, 1, -1]))),
                      [2], keepdims=False)
    else:                                             # per group [Cg·k², M] · [M, Kg]
        g_m = b.op("Transpose", b.op("Reshape", g_t, b.ints([group, kg, -1])), perm=[0, 2, 1])
        dw = b.op("MatMul", b.op("Reshape", cols, b.ints([group, cg * taps, -1])), g_m)
        dw = b.op("Transpose", dw, perm=[0, 2, 1])                             # [G, Kg, Cg·k²]
    return b.op("Reshape", dw, b.ints([k_out, cg, kh, kw]))

