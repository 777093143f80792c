"""Fused ops of the domain `ai.onnx_saliency` and their portable twins in standard ONNX ops.

`normgrad` and `rectified_conv_transpose` emit the custom-op node when the graph builder is in
fused mode (`b.fused`), else the decomposition below. `max_pool_gradient` and
`max_pool_relevance` emit the custom-op node only: their portable twins need the forward graph
(the pool's Indices output, the TSGB records), so the rules that call them (rules/pooling.py,
rules/tsgb.py) choose between the node and the twin. Tests check each op against its twin's
computation (tests/test_kernels.py). The C++/CUDA kernels live in `csrc/kernels`, the ONNX
Runtime adapters in `csrc/ort` (library: `library_path()`).

NormGrad(g, a; mode, kernel_shape, strides, pads, dilations) -> [N,1,Ho,Wo]
    identity:  ‖g_u‖·‖a_u‖          = ReduceL2(g) · ReduceL2(a)
    selective: ‖max(a_u ⊙ g_u, 0)‖  = ReduceL2(Relu(a ⊙ g))
    conv:      ‖g_v‖·‖P_k(a)_v‖     = ReduceL2(g) · sqrt(Conv(ReduceSumSquare(a), ones_k))
RectifiedConvTranspose(g, z, a; kernel_shape, strides, pads, dilations, group, epsilon) -> like a
    per group j: S = Σ_{k∈j} g⊙z, D = Conv(Σ_{c∈j}|a|, ones_k), out = sign(a) ⊙
    ConvTranspose(S / (D + ε), ones_k) cropped to a's size (the TSGB-Conv rule, docs/methods.md §5).
    The TSGB rules use it for grouped and depthwise convs; with groups = 1 they build the rule
    from one-channel maps in standard ops instead (rules/tsgb.py), faster in ONNX Runtime.
MaxPoolGradient(x, g; kernel_shape, strides, pads, dilations) -> like x
    g routed to each window's first maximum, recomputed from x. Twin (rules/pooling.py):
    ScatterElements(add) of g at the forward MaxPool's Indices output. Without Indices the
    forward MaxPool keeps ONNX Runtime's fast blocked-layout kernel.
MaxPoolRelevance(x, s; kernel_shape, strides, pads, dilations) -> [N,1,H,W]
    Σ_c x ⊙ MaxPoolGradient(x, sign(p) ⊙ s), p the pool's output, s [N,1,Ho,Wo]: s·|x| routed
    to each window's first maximum, summed over channels (TSGB's S for the conv before a pool
    whose output feeds a TSGB-Conv). Twin (rules/tsgb.py): that product, channel-summed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .graph import GraphBuilder

DOMAIN = "ai.onnx_saliency"


def library_path() -> str | None:
    """The custom-op library for `SessionOptions.register_custom_ops_library`, or None."""
    try:
        from . import _kernels
    except ImportError:  # pragma: no cover - the extension always builds with the package
        return None
    return _kernels.library_path()


def available() -> bool:
    return library_path() is not None


def _geometry(kernel: Sequence[int], strides: Sequence[int], pads: Sequence[int],
              dilations: Sequence[int]) -> dict:
    return {"kernel_shape": list(kernel), "strides": list(strides), "pads": list(pads),
            "dilations": list(dilations)}


def normgrad(b: GraphBuilder, g: str, a: str, mode: str, kernel=(1, 1), strides=(1, 1),
             pads=(0, 0, 0, 0), dilations=(1, 1)) -> str:
    """The NormGrad map [N,1,Ho,Wo] (see the module docstring)."""
    geo = _geometry(kernel, strides, pads, dilations)
    if b.fused:
        return b.op("NormGrad", g, a, domain=DOMAIN, mode=mode, **geo)
    if mode == "selective":
        return b.reduce("ReduceL2", b.op("Relu", b.op("Mul", a, g)), [1])
    g_norm = b.reduce("ReduceL2", g, [1])
    if mode == "identity":
        return b.op("Mul", g_norm, b.reduce("ReduceL2", a, [1]))
    box = b.op("Conv", b.reduce("ReduceSumSquare", a, [1]),
               b.const(np.ones([1, 1] + list(kernel), np.float32)), **geo)
    return b.op("Mul", g_norm, b.op("Sqrt", box))


def rectified_conv_transpose(ctx, g: str, z: str, a: str, kernel: Sequence[int],
                             strides: Sequence[int], pads: Sequence[int],
                             dilations: Sequence[int], group: int = 1,
                             epsilon: float = 1e-10) -> str:
    """The TSGB-Conv backward of the conv a -> z given ĝ_z = g (see the module docstring).

    `ctx` is the backward RuleContext (shapes, and fitting the transpose to a's size)."""
    from .backward.context import conv_transpose_to

    b = ctx.b
    geo = _geometry(kernel, strides, pads, dilations)
    if b.fused:
        return b.op("RectifiedConvTranspose", g, z, a, domain=DOMAIN, group=group,
                    epsilon=float(epsilon), **geo)
    ones = b.const(np.ones([group, 1] + list(kernel), np.float32))
    if group == 1:
        s = b.reduce("ReduceSum", b.op("Mul", g, z), [1])
        abs_sum = b.reduce("ReduceSum", b.op("Abs", a), [1])
    else:  # sum within each group: [N, G·m, H, W] -> [N, G, m, H·W] -> [N, G, H, W]
        s = group_sum(b, b.op("Mul", g, z), group, z)
        abs_sum = group_sum(b, b.op("Abs", a), group, a)
    d = b.op("Conv", abs_sum, ones, group=group, **geo)
    ratio = b.op("Div", s, b.op("Add", d, b.const(np.float32(epsilon))))
    spread = conv_transpose_to(ctx, ratio, z, ones, a, kernel, strides, pads, dilations, group)
    if group > 1:  # [N, G, H, W] -> [N, G, C/G, H, W] -> [N, C, H, W]
        spread = b.op("Reshape", b.op("Expand", b.unsqueeze(spread, [2]), _grouped_shape(b, group, a)),
                      b.shape(a))
    return b.op("Mul", b.op("Sign", a), spread)


def max_pool_gradient(b: GraphBuilder, x: str, g: str, kernel: Sequence[int],
                      strides: Sequence[int], pads: Sequence[int], dilations: Sequence[int]) -> str:
    """The fused MaxPool backward node (its portable twin needs the forward node's Indices and
    lives in rules/pooling.py)."""
    return b.op("MaxPoolGradient", x, g, domain=DOMAIN,
                **_geometry(kernel, strides, pads, dilations))


def max_pool_relevance(b: GraphBuilder, x: str, s: str, kernel: Sequence[int],
                       strides: Sequence[int], pads: Sequence[int],
                       dilations: Sequence[int]) -> str:
    """The fused MaxPoolRelevance node (fused mode only; see the module docstring)."""
    return b.op("MaxPoolRelevance", x, s, domain=DOMAIN,
                **_geometry(kernel, strides, pads, dilations))


def _grouped_shape(b: GraphBuilder, group: int, like: str) -> str:
    """[N, G, C/G, H, W] for a tensor `like` of shape [N, C, H, W]."""
    c = b.shape(like, 1, 2)
    per_group = b.op("Div", c, b.ints([group]))
    return b.op("Concat", b.shape(like, 0, 1), b.ints([group]), per_group, b.shape(like, 2, 4),
                axis=0)


def group_sum(b: GraphBuilder, x: str, group: int, like: str) -> str:
    grouped = b.op("Reshape", x, _grouped_shape(b, group, like))
    return b.reduce("ReduceSum", grouped, [2], keepdims=False)
