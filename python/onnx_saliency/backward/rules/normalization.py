"""BatchNormalization (inference): dx = g · scale / sqrt(var + ε), per channel."""

from __future__ import annotations

import numpy as np

from ...graph import attrs_of
from ..context import RuleContext


def batch_norm(ctx: RuleContext, node, grads):
    a = attrs_of(node)
    if a.get("training_mode", 0) or len([o for o in node.output if o]) > 1:
        raise ctx.unsupported(node, "runs in training mode; export the model in eval mode")
    if any(ctx.wants(node, i) for i in range(1, 5)):
        raise ctx.unsupported(node, "has parameters computed from the image")
    b, x = ctx.b, node.input[0]
    rank = ctx.index.rank(x) or 4
    eps = a.get("epsilon", 1e-5)
    scale, var = ctx.index.const(node.input[1]), ctx.index.const(node.input[4])
    if scale is not None and var is not None:
        factor = (scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)).astype(np.float32)
        factor = b.const(factor.reshape([1, -1] + [1] * (rank - 2)))
    else:
        std = b.op("Sqrt", b.op("Add", node.input[4], b.const(eps)))
        factor = b.unsqueeze(b.op("Div", node.input[1], std), [0] + list(range(2, rank)))
    return [b.op("Mul", grads[0], factor)] + [None] * 4


RULES = {"BatchNormalization": batch_norm}
