"""Elementwise arithmetic with broadcasting (each gradient reduced back to its input's shape).

Add: dA = g, dB = g. Sub: dA = g, dB = −g. Mul: dA = g·B, dB = g·A; SiLU, x·Sigmoid(x), in one
rule: dx = g·(s + y(1 − s)).
Div: dA = g / B, dB = −g·Y / B. Sum: every input gets g. Neg: −g.
Identity, Dropout (inference), float-to-float Cast: pass the signal through.
Exp: g·y. Log: g / x. Sqrt: g / 2y. Reciprocal: −g·y². Abs: g·sign(x) (0 at x = 0).
Pow (y = xᵉ): dx = g·e·x^(e−1); de = g·y·ln(x) when the exponent is a runtime tensor.
Max/Min (variadic): each output element's g goes to one input, the first (in input order) whose
value equals y; ties, which leave y the same whichever input is "picked", thus go to the first.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..context import RuleContext
from ..table import GRADIENT


def scaled(ctx: RuleContext, node, grads, factor: str) -> list:
    """[g·factor, None, …]: the rule of a unary op y = f(x) whose local derivative f'(x) is the
    tensor `factor` (the other inputs, attributes-as-inputs, get no gradient)."""
    return [ctx.b.op("Mul", grads[0], factor)] + [None] * (len(node.input) - 1)


def _each(ctx: RuleContext, node, terms):
    """Unbroadcast each term to its input; terms[i] is a thunk so unwanted ones are never built
    (a thunk may return None: no gradient to that input)."""
    out = node.output[0]
    made = [make() if ctx.wants(node, i) else None for i, make in enumerate(terms)]
    return [None if t is None else ctx.unbroadcast(t, node.input[i], out)
            for i, t in enumerate(made)]


@GRADIENT.rule("Add", "Sum")
def add(ctx, node, grads):
    g = grads[0]
    return _each(ctx, node, [lambda: g] * len(node.input))


@GRADIENT.rule("Sub")
def sub(ctx, node, grads):
    g = grads[0]
    return _each(ctx, node, [lambda: g, lambda: ctx.b.op("Neg", g)])


def _silu(ctx: RuleContext, node) -> tuple[int, str] | None:
    """(the slot of x, s) where the Mul is SiLU, y = x·s with s = Sigmoid(x) read by it alone
    (not tapped, not an output), both float32 of one shape; else None."""
    index = ctx.index
    for slot, (x, s) in enumerate((node.input, node.input[::-1])):
        made = index.producer.get(s)
        if (made is not None and made.op_type == "Sigmoid" and made.input[0] == x
                and len(index.consumers.get(s, [])) == 1 and s not in ctx.wrt
                and s not in index.graph_outputs
                and index.types.get(x) == index.types.get(s) == onnx.TensorProto.FLOAT
                and index.shapes.get(x) == index.shapes.get(s)):
            return slot, s
    return None


@GRADIENT.rule("Mul")
def mul(ctx, node, grads):
    """Mul; SiLU (x·Sigmoid(x), as exporters write it) in one rule: dx = g·(s + y·(1 − s)),
    1 − s as HardSigmoid(s; −1, 1) (exact for s in [0, 1]): Mul, Add and HardSigmoid only,
    which ONNX Runtime keeps in its blocked layout (the Sigmoid gets no signal)."""
    g, (a, b) = grads[0], node.input
    silu = _silu(ctx, node)
    if silu is not None and ctx.wants(node, silu[0]):
        slot, s = silu
        one_minus_s = ctx.b.op("HardSigmoid", s, alpha=-1.0, beta=1.0)
        slope = ctx.b.op("Add", s, ctx.b.op("Mul", node.output[0], one_minus_s))
        result = [None, None]
        result[slot] = ctx.b.op("Mul", g, slope)
        return result
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



@GRADIENT.rule("Exp")
def exp(ctx, node, grads):
    """d exp(x) = exp(x) = y."""
    return scaled(ctx, node, grads, node.output[0])


@GRADIENT.rule("Log")
def log(ctx, node, grads):
    """d ln(x) = 1/x."""
    return [ctx.b.op("Div", grads[0], node.input[0])]


@GRADIENT.rule("Sqrt")
def sqrt(ctx, node, grads):
    """d √x = 1/(2√x) = 1/(2y)."""
    b = ctx.b
    return [b.op("Div", grads[0], b.op("Mul", node.output[0], b.const(2.0)))]


@GRADIENT.rule("Reciprocal")
def reciprocal(ctx, node, grads):
    """d (1/x) = −1/x² = −y²."""
    b, y = ctx.b, node.output[0]
    return [b.op("Neg", b.op("Mul", grads[0], b.op("Mul", y, y)))]


@GRADIENT.rule("Abs")
def abs_(ctx, node, grads):
    """d |x| = sign(x) (0 at x = 0, a subgradient)."""
    return scaled(ctx, node, grads, ctx.b.op("Sign", node.input[0]))


@GRADIENT.rule("Pow")
def pow_(ctx, node, grads):
    """y = xᵉ: dx = g·e·x^(e−1) (a constant e − 1 is folded); de = g·y·ln(x) (x > 0 there).
    An integer exponent is cast to x's float type."""
    b, g, (x, e), y = ctx.b, grads[0], node.input, node.output[0]
    to = ctx.index.types.get(x, 1)

    def dx():
        known = ctx.index.const(e)
        if known is not None:
            if not known.any():
                return None                   # x⁰ = 1: no gradient (not 0·x⁻¹, NaN at x = 0)
            e_f = b.const(known, np.float32)
            # where e = 0 the term is e·x⁰ = 0 at every x (e − 1 there would give 0·∞ at x = 0)
            e_m1 = b.const(np.where(known == 0, 0.0, known.astype(np.float64) - 1.0), np.float32)
        else:
            e_f = e if ctx.index.types.get(e) == to else b.op("Cast", e, to=to)
            e_m1 = b.op("Sub", e_f, b.const(1.0))
        return b.op("Mul", g, b.op("Mul", e_f, b.op("Pow", x, e_m1)))

    return _each(ctx, node, [dx, lambda: b.op("Mul", g, b.op("Mul", y, b.op("Log", x)))])


@GRADIENT.rule("Max", "Min")
def first_extremum(ctx, node, grads):
    """Max/Min: g·1[x_i = y and x_j ≠ y for every j < i] to input i (ties to the first)."""
    b, g, y = ctx.b, grads[0], node.output[0]
    wanted = [i for i in range(len(node.input)) if ctx.wants(node, i)]
    terms, taken = [], None
    for i in range(wanted[-1] + 1 if wanted else 0):
        hit = b.op("Equal", node.input[i], y)
        pick = hit if taken is None else b.op("And", hit, b.op("Not", taken))
        terms.append(lambda pick=pick: b.op("Where", pick, g, b.const(0.0)))
        if i < wanted[-1]:
            taken = hit if taken is None else b.op("Or", taken, hit)
    return _each(ctx, node, terms + [None] * (len(node.input) - len(terms)))
