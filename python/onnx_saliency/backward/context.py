"""What a backward rule sees: the builder, the forward graph, and shape helpers rules share.

A rule is `rule(ctx, node, grads) -> list[str | None]`: `grads[i]` is the backward signal at
`node.output[i]` (None when no gradient reaches that output); the result holds one entry per
`node.input`, None where no gradient is wanted ("absent", not zero). Rules are registered in
rule tables (table.py) where they are written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from ..errors import UnsupportedOpError
from ..graph import GraphBuilder, GraphIndex, attr_text, attrs_of

Rule = Callable[["RuleContext", onnx.NodeProto, list], list]
INT_MAX = 2**62


@dataclass
class RuleContext:
    """One walk's view for its rules: the builder `b`, the forward graph's `index`, the tensors
    the walk `needs` a signal at, the tensors it was asked for (`wrt`), and the typed `options`
    of its rule table (TSGBOptions, EBPOptions; None for tables without options). Heads get the
    context of the walk that made their signal. A table may hand its rules a subclass that
    remembers what they emitted (rules/tsgb.py: TSGBContext)."""

    b: GraphBuilder
    index: GraphIndex
    needs: set[str] = field(default_factory=set)
    wrt: frozenset[str] = frozenset()
    options: Any = None

    def sum(self, terms: Sequence[str]) -> str:
        """Σ terms: the fan-out sum of the walk (one Sum node; TSGBContext merges broadcasts)."""
        return self.b.sum(terms)

    def wants(self, node: onnx.NodeProto, i: int) -> bool:
        return i < len(node.input) and bool(node.input[i]) and node.input[i] in self.needs

    def unsupported(self, node: onnx.NodeProto, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(
            f"Node '{node.name}' (op {node.op_type}, opset {self.index.opset}) {why}.")

    # -- shapes -------------------------------------------------------------------------
    def float_channels(self, name: str) -> int | None:
        """C of a float32 [N, C, H, W] tensor whose C is known, else None: the tensors the
        blocked-layout forms (channel_scale, to_blocked_layout) apply to."""
        shape = self.index.shapes.get(name)
        if (shape is None or len(shape) != 4 or not isinstance(shape[1], int)
                or self.index.types.get(name) != onnx.TensorProto.FLOAT):
            return None
        return shape[1]

    def spatial(self, name: str) -> tuple[int, ...] | None:
        shape = self.index.shapes.get(name)
        if shape is None or len(shape) < 3 or not all(isinstance(d, int) for d in shape[2:]):
            return None
        return tuple(shape[2:])  # type: ignore[arg-type]

    def fit_spatial(self, y: str, like: str, y_hw: Sequence[int] | None) -> str:
        """Crop or zero-pad the trailing spatial dims of `y` to those of `like` (batch and
        channels untouched)."""
        b = self.b
        like_hw = self.spatial(like)
        if y_hw is not None and like_hw is not None:
            if tuple(y_hw) == tuple(like_hw):
                return y
            n = len(like_hw)
            if all(t <= s for t, s in zip(like_hw, y_hw)):
                return b.op("Slice", y, b.ints([0] * n), b.ints(like_hw), b.ints(range(2, 2 + n)))
            if all(t >= s for t, s in zip(like_hw, y_hw)):
                pads = [0] * (n + 2) + [0, 0] + [t - s for t, s in zip(like_hw, y_hw)]
                return b.op("Pad", y, b.ints(pads))
        rank = self.index.rank(like) or 4
        n = rank - 2
        target = b.shape(like, 2, rank)
        y = b.op("Slice", y, b.ints([0] * n), target, b.ints(range(2, rank)))
        diff = b.op("Sub", target, b.shape(y, 2, rank))  # spatial only: y may have other channels
        pads = b.op("Concat", b.ints([0] * (rank + 2)), diff, axis=0)
        return b.op("Pad", y, pads)

    def unbroadcast(self, g: str, target: str, out: str, matrix: bool = False) -> str:
        """Sum `g` (shaped like `out`) over the axes along which `target` was broadcast.

        With `matrix`, the last two axes are matrix axes (MatMul) and never reduced."""
        b = self.b
        ts, os_ = self.index.shapes.get(target), self.index.shapes.get(out)
        if ts is None or os_ is None:
            raise UnsupportedOpError(
                f"Cannot reduce a broadcast gradient to tensor '{target}': its rank is unknown.")
        keep = 2 if matrix else 0
        if tuple(ts[:len(ts) - keep]) == tuple(os_[:len(os_) - keep]):
            return g
        lead = len(os_) - len(ts)
        padded = [1] * lead + list(ts)
        axes = [i for i, (t, o) in enumerate(zip(padded, os_))
                if i < len(os_) - keep and (i < lead or (t == 1 and o != 1))]
        if axes:
            g = b.reduce("ReduceSum", g, axes, keepdims=True)
        if lead:
            static = self.index.static_shape(target)
            g = b.op("Reshape", g, b.ints(static) if static is not None else b.shape(target))
        return g


def window_attrs(node: onnx.NodeProto, n: int) -> tuple[dict, list, list, str]:
    """(all attributes, strides, dilations, auto_pad) of a windowed node of `n` spatial dims,
    with ONNX's defaults."""
    a = attrs_of(node)
    auto_pad = attr_text(node, "auto_pad", "NOTSET")
    return a, list(a.get("strides", [1] * n)), list(a.get("dilations", [1] * n)), auto_pad


def conv_geometry(ctx: RuleContext, node: onnx.NodeProto, x: str,
                  kernel: Sequence[int]) -> dict:
    """strides, pads (explicit), dilations of a Conv/pool node; resolves auto_pad."""
    a, strides, dilations, auto_pad = window_attrs(node, len(kernel))
    n = len(kernel)
    if auto_pad in ("NOTSET", ""):
        pads = list(a.get("pads", [0] * 2 * n))
    elif auto_pad == "VALID":
        pads = [0] * 2 * n
    else:
        hw = ctx.spatial(x)
        if hw is None:
            raise ctx.unsupported(node, f"uses auto_pad={auto_pad} on an input of unknown size; "
                                  "re-export the model with explicit pads")
        begin, end = [], []
        for size, k, s, d in zip(hw, kernel, strides, dilations):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else big)
            end.append(big if auto_pad == "SAME_UPPER" else small)
        pads = begin + end
    return {"strides": strides, "pads": pads, "dilations": dilations}


def conv_params(ctx: RuleContext, node: onnx.NodeProto) -> tuple[list[int], dict, int]:
    """(kernel, geometry, group) of a Conv node: its weight's spatial shape, conv_geometry of its
    input, its group; an unknown weight shape is unsupported."""
    wshape = ctx.index.shapes.get(node.input[1])
    if wshape is None or not all(isinstance(d, int) for d in wshape):
        raise ctx.unsupported(node, "has a weight of unknown shape")
    kernel = list(wshape[2:])
    return kernel, conv_geometry(ctx, node, node.input[0], kernel), attrs_of(node).get("group", 1)


def channel_scale(ctx: RuleContext, x: str, channels: int, factor: float,
                  offset: float | None = None) -> str:
    """x·factor (+ offset) as a 1×1 depthwise Conv (the offset its bias): a Conv, unlike a Mul
    or Add with a constant, is kept in ONNX Runtime's blocked (NCHWc) CPU layout, and an
    activation after it is fused."""
    weight = ctx.b.const(np.full((channels, 1, 1, 1), factor, np.float32))
    bias = [] if offset is None else [ctx.b.const(np.full(channels, offset, np.float32))]
    return ctx.b.op("Conv", x, weight, *bias, group=channels, kernel_shape=[1, 1])


def to_blocked_layout(ctx: RuleContext, value: str, like: str) -> str:
    """`value` (shaped like `like`) through a 1×1 depthwise identity Conv when `like` is a float32
    [N, C, H, W] with C a multiple of 16; else `value` itself.

    ONNX Runtime's CPU provider keeps Conv outputs, and the Sums and Muls between them, in a
    blocked (NCHWc) layout, but a ConvTranspose or custom op hands back plain NCHW, and one plain
    addend pins a whole residual skip path of Sums and ReLU masks to NCHW, each reordered in and
    out. The identity Conv takes such a tensor back into the blocked layout in one pass."""
    c = ctx.float_channels(like)
    if c is None or c % 16:
        return value
    return channel_scale(ctx, value, c, 1.0)


def transpose_extent(g_hw: Sequence[int], like_hw: Sequence[int], kernel: Sequence[int],
                     strides: Sequence[int], pads: Sequence[int], dilations: Sequence[int]
                     ) -> tuple[list[int], list[int]]:
    """(end pads, output sizes) of a ConvTranspose from the grid g_hw back towards like_hw with
    only the begin pads given: the end pads crop what lies past like_hw; a smaller output (the
    forward's end padding) is left for fit_spatial to zero-fill."""
    full = [(g - 1) * s + (k - 1) * d + 1 - p
            for g, s, k, d, p in zip(g_hw, strides, kernel, dilations, pads)]
    end = [max(0, f - t) for f, t in zip(full, like_hw)]
    return end, [f - e for f, e in zip(full, end)]


def conv_transpose_to(ctx: RuleContext, g: str, out: str, w: str, like: str,
                      kernel: Sequence[int],
                      strides: Sequence[int], pads: Sequence[int], dilations: Sequence[int],
                      group: int = 1) -> str:
    """ConvTranspose of `g` (shaped like the forward output `out`) back onto the grid of `like`
    (the forward conv's input).

    Only the begin pads are cropped by the ConvTranspose itself: the end of its output can hold
    real values (a window reaching into the end padding), so the end is cropped or zero-filled
    to the size of `like` (statically through the end pads when sizes are known)."""
    n = len(kernel)
    like_hw, g_hw = ctx.spatial(like), ctx.spatial(out)
    end, y_hw = [0] * n, None
    if like_hw is not None and g_hw is not None:
        end, y_hw = transpose_extent(g_hw, like_hw, kernel, strides, pads, dilations)
    dx = ctx.b.op("ConvTranspose", g, w, group=group, strides=list(strides),
                  pads=list(pads[:n]) + end, dilations=list(dilations))
    return ctx.fit_spatial(dx, like, y_hw)
