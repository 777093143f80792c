"""BatchNormalization (inference): dx = g · scale / sqrt(var + ε), per channel.

Parameter gradients (meta-saliency; statistics frozen): dγ = Σ g ⊙ x̂, dβ = Σ g over all axes but
the channel, x̂ = (x − mean) / sqrt(var + ε)."""

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

