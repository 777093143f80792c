"""NormGrad and the extraction framework of "There and Back Again" (docs/methods.md §1).

A virtual parametric layer is inserted at the tapped tensor x; its per-location parameter gradient
is read off and aggregated over its entries:

| extract       | per-location term                        | at                               |
| bias          | g_u                                      | x                                |
| scaling       | x_u ⊙ g_u                                | x                                |
| identity      | g_u x_uᵀ              (1×1 identity conv) | x                                |
| identity3x3   | g_u vec(P_3(x)_u)ᵀ    (3×3 identity conv) | x, stride 1, pad 1               |
| conv          | g_v vec(P_k(a)_v)ᵀ    (the real conv)     | the conv named: g at its output, |
|               |                                          | a its input, its own geometry    |
|               | (grouped: one block per group; l2 only)  |                                  |

aggregate: sum Σ; max; max_abs max|·|; l2 (Frobenius); pos_l2 ‖max(·, 0)‖ ("F+N").
For the outer-product terms g pᵀ the aggregates factor: sum = Σg·Σp, l2 = ‖g‖‖p‖,
max_abs = max|g|·max|p|, pos_l2 = sqrt(‖g⁺‖²‖p⁺‖² + ‖g⁻‖²‖p⁻‖²), max = the largest of the four
products of {max, min} g and p; the patch statistics are box filters (Conv with ones, MaxPool).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import fused
from ..backward.context import RuleContext, conv_params
from ..errors import MethodError
from ..graph import GraphBuilder
from .base import Method
from .heads import AGGREGATIONS, aggregate

EXTRACTIONS = ("bias", "scaling", "identity", "identity3x3", "conv")


@dataclass(frozen=True)
class Extraction(Method):
    """One row of the framework table: `Extraction("identity3x3", "max_abs")` at any layer.

    `backward`: the method whose walk gives the signal (gradient, guided_backprop, deconvnet)."""

    extract: str = "identity"
    aggregate: str = "l2"
    backward: str = "gradient"
    at: str | None = None
    layer_method = True
    default_at_input = False

    def __post_init__(self):
        if self.extract not in EXTRACTIONS:
            raise MethodError(f"Unknown extraction '{self.extract}'; choose one of "
                              f"{', '.join(EXTRACTIONS)}.")
        if self.aggregate not in AGGREGATIONS:
            raise MethodError(f"Unknown aggregation '{self.aggregate}'; choose one of "
                              f"{', '.join(AGGREGATIONS)}.")

    @property
    def name(self) -> str:  # type: ignore[override]
        prefix = "" if self.backward == "gradient" else f"{self.backward}_"
        return f"{prefix}{self.extract}_{self.aggregate}"

    def walk(self, layers):
        from . import resolve   # the package registry (it imports this module)
        return resolve(self.backward).walk(layers)

    def default_tap(self, index, image):
        if self.extract != "conv":
            return None
        convs = [n.output[0] for n in index.nodes if n.op_type == "Conv"]
        return convs[-1] if convs else None

    def head(self, ctx, x, g):
        return ctx.b.squeeze(extraction_map(ctx, x, g, self.extract, self.aggregate), [1])


@dataclass(frozen=True)
class NormGrad(Extraction):
    """NormGrad: ‖g_u‖·‖x_u‖ (virtual 1×1 identity conv, Frobenius norm)."""

    @property
    def name(self) -> str:  # type: ignore[override]
        return "normgrad"


@dataclass(frozen=True)
class NormGradConv(Extraction):
    """NormGrad of a real conv layer: ‖g_v‖·‖P_k(a)_v‖ on the conv's output grid (bias excluded)."""

    extract: str = "conv"

    @property
    def name(self) -> str:  # type: ignore[override]
        return "normgrad_conv"


@dataclass(frozen=True)
class NormGradSelective(Extraction):
    """Selective NormGrad: ‖max(x_u ⊙ g_u, 0)‖ (reading "elementwise", the default), or
    ‖max(g_u x_uᵀ, 0)‖_F (reading "outer")."""

    extract: str = "scaling"
    aggregate: str = "pos_l2"
    reading: str = "elementwise"

    def __post_init__(self):
        if self.reading not in ("elementwise", "outer"):
            raise MethodError("NormGradSelective reading must be 'elementwise' or 'outer'.")
        if self.reading == "outer":
            object.__setattr__(self, "extract", "identity")
        super().__post_init__()

    @property
    def name(self) -> str:  # type: ignore[override]
        return "normgrad_selective"


# -- the maps --------------------------------------------------------------------------------

def extraction_map(ctx: RuleContext, x: str, g: str, extract: str, how: str) -> str:
    """[N, 1, h, w] map of the virtual layer `extract` at x with backward signal g."""
    b = ctx.b
    if extract == "bias":
        return b.unsqueeze(aggregate(b, g, how), [1])
    if extract == "scaling":
        if how == "pos_l2":
            return fused.normgrad(b, g, x, "selective")
        return b.unsqueeze(aggregate(b, b.op("Mul", x, g), how), [1])
    if extract == "identity":
        a, geo = x, dict(kernel=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1])
    elif extract == "identity3x3":
        a, geo = x, dict(kernel=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1])
    else:
        a, geo = _conv_input_and_geometry(ctx, x)
        group = geo.pop("group")
        if group > 1:
            if how != "l2":
                raise MethodError(f"The 'conv' extraction of a grouped conv supports aggregate "
                                  f"'l2' (NormGrad), not {how!r}.")
            return _grouped_conv_norm(b, g, a, geo, group)
    if how == "l2":
        mode = "identity" if extract == "identity" else "conv"
        return fused.normgrad(b, g, a, mode, **geo)
    return _outer_aggregate(b, g, a, geo, how)


def _conv_input_and_geometry(ctx: RuleContext, x: str) -> tuple[str, dict]:
    node = ctx.index.producer.get(x)
    if node is None or node.op_type != "Conv":
        what = f"op {node.op_type}" if node is not None else "a graph input"
        raise MethodError(f"The 'conv' extraction needs a convolution layer, but '{x}' is the "
                          f"output of {what}; name a Conv layer (see list_layers).")
    kernel, geo, group = conv_params(ctx, node)
    if len(kernel) != 2:
        raise MethodError(f"The 'conv' extraction needs a 2-D Conv; '{node.name}' is not.")
    return node.input[0], dict(kernel=kernel, group=group, **geo)


def _grouped_conv_norm(b: GraphBuilder, g: str, a: str, geo: dict, group: int) -> str:
    """‖dW_v‖_F of a grouped conv: its weight gradient is block-diagonal, one block g_j P(a_j)ᵀ per
    group j, so the norm is sqrt(Σ_j ‖g_j,v‖² ‖P(a_j)_v‖²) (portable ops only)."""
    g_sq = fused.group_sum(b, b.op("Mul", g, g), group, g)   # [N, G, Ho, Wo]
    a_sq = fused.group_sum(b, b.op("Mul", a, a), group, a)   # [N, G, H, W]
    ones = b.const(np.ones([group, 1] + list(geo["kernel"]), np.float32))
    patch_sq = b.op("Conv", a_sq, ones, group=group, kernel_shape=list(geo["kernel"]),
                    strides=list(geo["strides"]), pads=list(geo["pads"]),
                    dilations=list(geo["dilations"]))
    return b.op("Sqrt", b.reduce("ReduceSum", b.op("Mul", g_sq, patch_sq), [1], keepdims=True))


def _box(b: GraphBuilder, t: str, geo: dict) -> str:
    """Σ over each patch of a per-location [N,1,H,W] statistic."""
    ones = b.const(np.ones([1, 1] + list(geo["kernel"]), np.float32))
    return b.op("Conv", t, ones, kernel_shape=list(geo["kernel"]), strides=list(geo["strides"]),
                pads=list(geo["pads"]), dilations=list(geo["dilations"]))


def _patch_max(b: GraphBuilder, t: str, geo: dict) -> str:
    """max over each patch (zero padding counts as entries) of a [N,1,H,W] statistic."""
    p = list(geo["pads"])
    if any(p):
        t = b.op("Pad", t, b.ints([0, 0, p[0], p[1], 0, 0, p[2], p[3]]))
    return b.op("MaxPool", t, kernel_shape=list(geo["kernel"]), strides=list(geo["strides"]),
                dilations=list(geo["dilations"]))


def _outer_aggregate(b: GraphBuilder, g: str, a: str, geo: dict, how: str) -> str:
    """Aggregate of the per-location outer product g_v vec(P(a)_v)ᵀ, factored (module doc)."""
    def chan(op, t):
        return b.reduce(op, t, [1])
    if how == "sum":
        return b.op("Mul", chan("ReduceSum", g), _box(b, chan("ReduceSum", a), geo))
    if how == "max_abs":
        return b.op("Mul", chan("ReduceMax", b.op("Abs", g)),
                    _patch_max(b, chan("ReduceMax", b.op("Abs", a)), geo))
    if how == "max":
        g_max, g_min = chan("ReduceMax", g), chan("ReduceMin", g)
        p_max = _patch_max(b, chan("ReduceMax", a), geo)
        p_min = b.op("Neg", _patch_max(b, b.op("Neg", chan("ReduceMin", a)), geo))
        products = [b.op("Mul", u, v) for u in (g_max, g_min) for v in (p_max, p_min)]
        return b.op("Max", *products)
    # pos_l2: sqrt(‖g⁺‖²‖p⁺‖² + ‖g⁻‖²‖p⁻‖²)
    gp = chan("ReduceSumSquare", b.op("Relu", g))
    gn = chan("ReduceSumSquare", b.op("Relu", b.op("Neg", g)))
    pp = _box(b, chan("ReduceSumSquare", b.op("Relu", a)), geo)
    pn = _box(b, chan("ReduceSumSquare", b.op("Relu", b.op("Neg", a))), geo)
    return b.op("Sqrt", b.op("Add", b.op("Mul", gp, pp), b.op("Mul", gn, pn)))
