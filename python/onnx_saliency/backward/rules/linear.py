"""Gemm and MatMul.

Gemm: Y = α·A'B' + β·C with A' = Aᵀ if transA, B' = Bᵀ if transB:
dA' = α g B'ᵀ, dB' = α A'ᵀ g, dC = β · unbroadcast(g).
MatMul: dA = g Bᵀ, dB = Aᵀ g (transposing the last two axes; batch axes unbroadcast).
"""

from __future__ import annotations

from ...graph import attrs_of
from ..context import RuleContext
from ..table import GRADIENT


@GRADIENT.rule("Gemm")
def gemm(ctx: RuleContext, node, grads):
    g = grads[0]
    b = ctx.b
    a = attrs_of(node)
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    ta, tb = a.get("transA", 0), a.get("transB", 0)
    A, B = node.input[0], node.input[1]
    result = [None] * len(node.input)
    if ctx.wants(node, 0):
        if not ta:   # dA = α g B'ᵀ
            result[0] = b.op("Gemm", g, B, alpha=alpha, transB=0 if tb else 1)
        else:        # dA = α B' gᵀ
            result[0] = b.op("Gemm", B, g, alpha=alpha, transA=1 if tb else 0, transB=1)
    if ctx.wants(node, 1):
        if not tb:   # dB = α A'ᵀ g
            result[1] = b.op("Gemm", A, g, alpha=alpha, transA=0 if ta else 1)
        else:        # dB = α gᵀ A'
            result[1] = b.op("Gemm", g, A, alpha=alpha, transA=1, transB=1 if ta else 0)
    if ctx.wants(node, 2):
        gc = g if beta == 1.0 else b.op("Mul", g, b.const(beta))
        result[2] = ctx.unbroadcast(gc, node.input[2], node.output[0])
    return result


def _swap_last_two(ctx: RuleContext, node, x: str) -> str:
    rank = ctx.index.rank(x)
    if rank is None or rank < 2:
        raise ctx.unsupported(node, "multiplies a 1-D or unknown-rank tensor")
    perm = list(range(rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    return ctx.b.op("Transpose", x, perm=perm)


@GRADIENT.rule("MatMul")
def matmul(ctx: RuleContext, node, grads):
    g = grads[0]
    A, B = node.input[0], node.input[1]
    result = [None, None]
    if ctx.wants(node, 0):
        da = ctx.b.op("MatMul", g, _swap_last_two(ctx, node, B))
        result[0] = ctx.unbroadcast(da, A, node.output[0], matrix=True)
    if ctx.wants(node, 1):
        db = ctx.b.op("MatMul", _swap_last_two(ctx, node, A), g)
        result[1] = ctx.unbroadcast(db, B, node.output[0], matrix=True)
    return result

