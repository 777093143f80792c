"""Elementwise arithmetic with broadcasting (each gradient reduced back to its input's shape).

Add: dA = g, dB = g. Sub: dA = g, dB = −g. Mul: dA = g·B, dB = g·A.
Div: dA = g / B, dB = −g·Y / B. Sum: every input gets g. Neg: −g.
Identity, Dropout (inference), float-to-float Cast: pass the signal through.
"""

from __future__ import annotations

from ..context import RuleContext
from ..table import GRADIENT


def _each(ctx: RuleContext, node, terms):
    """Unbroadcast each term to its input; terms[i] is a thunk so unwanted ones are never built."""
    out = node.output[0]
    return [ctx.unbroadcast(make(), node.input[i], out) if ctx.wants(node, i) else None
            for i, make in enumerate(terms)]


@GRADIENT.rule("Add", "Sum")
def add(ctx, node, grads):
    g = grads[0]
    return _each(ctx, node, [lambda: g] * len(node.input))


@GRADIENT.rule("Sub")
def sub(ctx, node, grads):
    g = grads[0]
    return _each(ctx, node, [lambda: g, lambda: ctx.b.op("Neg", g)])


@GRADIENT.rule("Mul")
def mul(ctx, node, grads):
    g, (a, b) = grads[0], node.input
    return _each(ctx, node, [lambda: ctx.b.op("Mul", g, b), lambda: ctx.b.op("Mul", g, a)])


@GRADIENT.rule("Div")
def div(ctx, node, grads):
    g, b, y = grads[0], node.input[1], node.output[0]
    return _each(ctx, node, [
        lambda: ctx.b.op("Div", g, b),
        lambda: ctx.b.op("Neg", ctx.b.op("Div", ctx.b.op("Mul", g, y), b))])


@GRADIENT.rule("Neg")
def neg(ctx, node, grads):
    return [ctx.b.op("Neg", grads[0])]


@GRADIENT.rule("Identity", "Dropout")
def passthrough(ctx, node, grads):
    return [grads[0]] + [None] * (len(node.input) - 1)


@GRADIENT.rule("Cast")
def cast(ctx, node, grads):
    if not ctx.index.is_float(node.input[0]):
        return [None]
    to = ctx.index.types[node.input[0]]
    return [grads[0] if to == ctx.index.types.get(node.output[0]) else ctx.b.op("Cast", grads[0], to=to)]

