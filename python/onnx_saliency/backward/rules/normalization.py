"""BatchNormalization (inference): dx = g · scale / sqrt(var + ε), per channel.

Parameter gradients (meta-saliency; statistics frozen): dγ = Σ g ⊙ x̂, dβ = Σ g over all axes but
the channel, x̂ = (x − mean) / sqrt(var + ε).

LayerNormalization, InstanceNormalization, GroupNormalization normalize x over a set of axes A
with its own statistics: x̂ = (x − μ)·r, μ = mean_A x, r = 1/sqrt(var_A x + ε), y = γ·x̂ + β. With
d = g·γ (the signal at x̂): dx = r·(d − mean_A d − x̂·mean_A(d·x̂)) (`_normalized_backward`);
dγ = Σ g·x̂ and dβ = Σ g over the axes γ, β are broadcast along.
Layer: A = axis … rank−1, γ and β broadcast to x's trailing dims. Instance: A = the spatial axes,
γ, β per channel. Group (num_groups G): x seen as [N, G, C/G·spatial], A = its last axis; γ, β per
channel from opset 21, per group in opset 18 (each spread over its group's C/G channels)."""

from __future__ import annotations

import numpy as np

from ...graph import attrs_of
from ..context import RuleContext
from ..table import GRADIENT


@GRADIENT.rule("BatchNormalization")
def batch_norm(ctx: RuleContext, node, grads):
    a = attrs_of(node)
    if a.get("training_mode", 0) or len([o for o in node.output if o]) > 1:
        raise ctx.unsupported(node, "runs in training mode; export the model in eval mode")
    if any(ctx.wants(node, i) for i in (3, 4)):
        raise ctx.unsupported(node, "has statistics computed from the image")
    b, x = ctx.b, node.input[0]
    rank = ctx.index.rank(x) or 4
    eps = a.get("epsilon", 1e-5)
    result = [None] * 5
    axes = [0] + list(range(2, rank))
    if ctx.wants(node, 1):
        std = b.op("Sqrt", b.op("Add", node.input[4], b.const(np.float32(eps))))
        centred = b.op("Sub", x, b.unsqueeze(node.input[3], axes))   # per-channel -> [1,C,1,…]
        x_hat = b.op("Div", centred, b.unsqueeze(std, axes))
        result[1] = b.reduce("ReduceSum", b.op("Mul", grads[0], x_hat), axes, False)
    if ctx.wants(node, 2):
        result[2] = b.reduce("ReduceSum", grads[0], axes, False)
    if not ctx.wants(node, 0):
        return result
    scale, var = ctx.index.const(node.input[1]), ctx.index.const(node.input[4])
    if scale is not None and var is not None:
        factor = (scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)).astype(np.float32)
        factor = b.const(factor.reshape([1, -1] + [1] * (rank - 2)))
    else:
        std = b.op("Sqrt", b.op("Add", node.input[4], b.const(eps)))
        factor = b.unsqueeze(b.op("Div", node.input[1], std), [0] + list(range(2, rank)))
    result[0] = b.op("Mul", grads[0], factor)
    return result



def _normalized_backward(ctx: RuleContext, x: str, axes: list[int], eps: float,
                         d_of_xhat) -> tuple[str | None, str]:
    """(dx, x̂) for x̂ normalized over `axes`: dx = r·(d − mean d − x̂·mean(d·x̂)), d = d_of_xhat(),
    the signal at x̂ (None: dx not wanted)."""
    b = ctx.b
    centred = b.op("Sub", x, b.reduce("ReduceMean", x, axes))
    var = b.reduce("ReduceMean", b.op("Mul", centred, centred), axes)
    r = b.op("Reciprocal", b.op("Sqrt", b.op("Add", var, b.const(eps))))
    x_hat = b.op("Mul", centred, r)
    if d_of_xhat is None:
        return None, x_hat
    d = d_of_xhat()
    proj = b.op("Mul", x_hat, b.reduce("ReduceMean", b.op("Mul", d, x_hat), axes))
    inner = b.op("Sub", b.op("Sub", d, b.reduce("ReduceMean", d, axes)), proj)
    return b.op("Mul", r, inner), x_hat


def _epsilon(node) -> float:
    return attrs_of(node).get("epsilon", 1e-5)


@GRADIENT.rule("LayerNormalization")
def layer_norm(ctx: RuleContext, node, grads):
    """Normalized over axes axis … rank−1; dγ, dβ: g·x̂ and g summed back to γ's, β's shapes."""
    b, x, g, y = ctx.b, node.input[0], grads[0], node.output[0]
    if any(other is not None for other in grads[1:]):
        raise ctx.unsupported(node, "has its Mean or InvStdDev output used (training graph)")
    rank = ctx.index.rank(x)
    if rank is None:
        raise ctx.unsupported(node, "has an input of unknown rank")
    axis = attrs_of(node).get("axis", -1) % rank
    d = (lambda: b.op("Mul", g, node.input[1])) if ctx.wants(node, 0) else None
    dx, x_hat = _normalized_backward(ctx, x, list(range(axis, rank)), _epsilon(node), d)
    result = [dx, None, None][:len(node.input)]
    if ctx.wants(node, 1):
        result[1] = ctx.unbroadcast(b.op("Mul", g, x_hat), node.input[1], y)
    if ctx.wants(node, 2):
        result[2] = ctx.unbroadcast(g, node.input[2], y)
    return result


def _per_channel(ctx: RuleContext, node, g: str, x_hat: str, rank: int) -> list:
    """[dγ, dβ] of per-channel γ, β (inputs 1, 2): sums over every axis but the channel."""
    b = ctx.b
    axes = [0] + list(range(2, rank))
    return [b.reduce("ReduceSum", b.op("Mul", g, x_hat), axes, False) if ctx.wants(node, 1)
            else None,
            b.reduce("ReduceSum", g, axes, False) if ctx.wants(node, 2) else None]


@GRADIENT.rule("InstanceNormalization")
def instance_norm(ctx: RuleContext, node, grads):
    """Normalized over the spatial axes, γ and β per channel."""
    b, x, g = ctx.b, node.input[0], grads[0]
    rank = ctx.index.rank(x)
    if rank is None:
        raise ctx.unsupported(node, "has an input of unknown rank")
    gamma = b.unsqueeze(node.input[1], [0] + list(range(2, rank)))
    d = (lambda: b.op("Mul", g, gamma)) if ctx.wants(node, 0) else None
    dx, x_hat = _normalized_backward(ctx, x, list(range(2, rank)), _epsilon(node), d)
    return [dx, *_per_channel(ctx, node, g, x_hat, rank)]


@GRADIENT.rule("GroupNormalization")
def group_norm(ctx: RuleContext, node, grads):
    """x as [N, G, C/G·spatial] normalized over its last axis; γ, β per channel (opset ≥ 21) or
    per group (opset 18: expanded to the group's channels, and their gradients summed back)."""
    b, x, g = ctx.b, node.input[0], grads[0]
    rank, groups = ctx.index.rank(x), attrs_of(node)["num_groups"]
    channels = (ctx.index.shapes.get(x) or [None, None])[1]
    if rank is None or not isinstance(channels, int):
        raise ctx.unsupported(node, "has an input of unknown rank or channel count")
    per_group = ctx.index.opset < 21
    spread = [1, channels] + [1] * (rank - 2)

    def per_channel(v: str) -> str:          # γ or β as [1, C, 1, …]
        if per_group:
            v = b.op("Expand", b.unsqueeze(v, [1]), b.ints([groups, channels // groups]))
        return b.op("Reshape", v, b.ints(spread))

    grouped = b.ints([0, groups, -1])
    d = (lambda: b.op("Reshape", b.op("Mul", g, per_channel(node.input[1])), grouped)) \
        if ctx.wants(node, 0) else None
    dx, x_hat = _normalized_backward(ctx, b.op("Reshape", x, grouped), [2], _epsilon(node), d)
    shape = b.shape(x)
    result = [None if dx is None else b.op("Reshape", dx, shape),
              *_per_channel(ctx, node, g, b.op("Reshape", x_hat, shape), rank)]
    if per_group:
        result[1:] = [None if v is None else b.reduce(
            "ReduceSum", b.op("Reshape", v, b.ints([groups, channels // groups])), [1], False)
            for v in result[1:]]
    return result
