"""Einsum: y = einsum("s₁,…,sₖ->o", x₁…xₖ) is linear in each operand, so

    dxᵢ = einsum("o,s₁,…,ŝᵢ,…,sₖ->sᵢ", g, x₁…x̂ᵢ…xₖ)

(g in the output's place, operand i left out and its subscripts written as the result): every
product term of y that holds xᵢ[sᵢ] adds g[o] times the other factors to it. Letters of sᵢ
that no other operand and not the output carry (xᵢ summed over them alone) cannot be written in
that result: they are left out and the gradient, constant along them, is broadcast back
(Unsqueeze and Expand). The implicit form ("ij,jk", output: the letters met once, sorted) and
ellipses ("...qd,...kd->...qk", as attention exports write it) are handled; an ellipsis is
kept as it is when every operand's ellipsis has the same shape.

Refused, one sentence each: a letter repeated within one operand (a diagonal, "ii->i"), and an
ellipsis broadcast between operands (shapes differ along it).
"""

from __future__ import annotations

from ...graph import attr_text
from ..context import RuleContext
from ..table import GRADIENT

ELL = "."   # one character for "..." in the parsed terms


def parse(equation: str) -> tuple[list[str], str]:
    """(operand terms, output term) with spaces dropped, "..." written as one '.', and the
    implicit output made explicit."""
    eq = equation.replace(" ", "").replace("...", ELL)
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if not arrow:
        letters = [c for t in terms for c in t if c != ELL]
        rhs = (ELL if any(ELL in t for t in terms) else "") + "".join(
            sorted(c for c in set(letters) if letters.count(c) == 1))
    return terms, rhs


def _unparse(term: str) -> str:
    return term.replace(ELL, "...")


def _ellipsis_dims(ctx: RuleContext, name: str, term: str):
    """The dims of `name` the ellipsis of `term` covers (None: unknown rank)."""
    shape = ctx.index.shapes.get(name)
    if shape is None:
        return None
    start = term.index(ELL)
    return tuple(shape[start:len(shape) - (len(term) - start - 1)])


@GRADIENT.rule("Einsum")
def einsum(ctx: RuleContext, node, grads):
    b = ctx.b
    equation = attr_text(node, "equation", "")
    terms, out = parse(equation)
    for term in terms:
        letters = term.replace(ELL, "")
        if len(set(letters)) < len(letters):
            raise ctx.unsupported(node, f"takes a diagonal (equation '{equation}': a letter "
                                  "repeated within one operand)")
    ellipses = {_ellipsis_dims(ctx, x, t) for x, t in zip(node.input, terms) if ELL in t}
    if len(ellipses) > 1 or None in ellipses:
        raise ctx.unsupported(node, f"broadcasts along the ellipsis of equation '{equation}' "
                              "(operands' shapes differ there, or are unknown)")
    result = []
    for i, (x, term) in enumerate(zip(node.input, terms)):
        if not ctx.wants(node, i):
            result.append(None)
            continue
        others = [t for j, t in enumerate(terms) if j != i]
        carried = set(out) | {c for t in others for c in t}
        alone = [c for c in term if c not in carried]          # summed over in xᵢ alone
        target = "".join(c for c in term if c not in alone)
        eq = ",".join(_unparse(t) for t in [out, *others]) + "->" + _unparse(target)
        grad = b.op("Einsum", grads[0], *[node.input[j] for j in range(len(terms)) if j != i],
                    equation=eq)
        if alone:
            grad = b.unsqueeze(grad, [_position(ctx, x, term, c) for c in alone])
            grad = b.op("Expand", grad, b.shape(x))
        result.append(grad)
    return result


def _position(ctx: RuleContext, x: str, term: str, letter: str) -> int:
    """The axis of `x` that `letter` of `term` names (past an ellipsis: counted from the end)."""
    k = term.index(letter)
    if ELL in term and k > term.index(ELL):
        return k - len(term)
    return k
