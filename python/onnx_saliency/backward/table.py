"""Rule tables: op type -> backward rule, filled where each rule is written.

    @GRADIENT.rule("Add", "Sum")
    def add(ctx, node, grads): ...

`GRADIENT` holds the true gradient of every supported op (the modules of `rules/` register into
it; import `backward.rules` to have them all). A method that changes some rules makes its own
table over it, `RuleTable("tsgb", over=GRADIENT)`, and registers only the rules it changes; every
other op falls through to the gradient. Adding an op is one decorated function in one file.

Ops of another domain than the default one are registered with it,
`@GRADIENT.rule("QLinearAdd", domain="com.microsoft")`, and looked up by (domain, op type).
A rule that takes or gives the signal on integer tensors (quantized models, rules/quantized.py)
is registered with `integers=True`: the walk follows an integer tensor only out of a node that
has such a rule, and hands a node whose integer input or output carries a signal to it (on an
integer tensor q the signal is ∂s/∂q, q's value taken as a real number). `constant_outputs`:
outputs the gradient treats as constants (DynamicQuantizeLinear's scale and zero point): the
walk does not follow them.
"""

from __future__ import annotations

from typing import Callable

import onnx

from .context import Rule, RuleContext


class RuleTable:
    """Rules by op type, falling through to the table it is made `over`.

    `context`: the RuleContext class a walk with this table hands its rules (TSGBContext: the
    TSGB rules' records). `acts_on(node, index)`: where only some nodes of its op types are
    changed (guided backprop: ReLU-like units, not every Clip), whether `node` is one; a walk
    that meets none warns `inert_warning` (its map is then the one of the table below)."""

    def __init__(self, name: str, over: RuleTable | None = None,
                 context: type[RuleContext] = RuleContext,
                 acts_on: Callable[[onnx.NodeProto, object], bool] | None = None,
                 inert_warning: str = ""):
        self.name = name
        self.over = over
        self.context = context
        self.acts_on = acts_on
        self.inert_warning = inert_warning
        self._rules: dict[str, Rule] = {}
        self._integer_rules: dict[str, Rule] = {}
        self._constant_outputs: dict[str, tuple[int, ...]] = {}

    def rule(self, *op_types: str, domain: str = "", integers: bool = False,
             constant_outputs: tuple[int, ...] = ()) -> Callable[[Rule], Rule]:
        """Decorator: register the function as this table's rule for `op_types` of `domain`
        (see the module docstring for `integers` and `constant_outputs`)."""
        rules = self._integer_rules if integers else self._rules

        def register(fn: Rule) -> Rule:
            for op in op_types:
                key = _key(op, domain)
                if key in rules:
                    raise ValueError(f"Table '{self.name}' has two rules for {key}.")
                rules[key] = fn
                if constant_outputs:
                    self._constant_outputs[key] = tuple(constant_outputs)
            return fn
        return register

    def get(self, op_type: str, domain: str = "", integers: bool = False) -> Rule | None:
        """The rule for `op_type` of `domain` (its integer rule with `integers`), else the one
        of the table below, else None."""
        key = _key(op_type, domain)
        rule = (self._integer_rules if integers else self._rules).get(key)
        if rule is None and self.over is not None:
            return self.over.get(op_type, domain, integers)
        return rule

    def carries_integers(self, node: onnx.NodeProto) -> bool:
        """Whether a rule of this table takes the signal across `node`'s integer tensors."""
        return self.get(node.op_type, node.domain, integers=True) is not None

    def constant_outputs(self, node: onnx.NodeProto) -> tuple[int, ...]:
        """The output slots of `node` that the gradient treats as constants."""
        slots = self._constant_outputs.get(_key(node.op_type, node.domain))
        if slots is None and self.over is not None:
            return self.over.constant_outputs(node)
        return slots or ()

    def __getitem__(self, op_type: str) -> Rule:
        rule = self.get(op_type)
        if rule is None:
            raise KeyError(op_type)
        return rule

    def __repr__(self) -> str:
        return f"RuleTable({self.name!r})"


def _key(op_type: str, domain: str) -> str:
    return op_type if domain in ("", "ai.onnx") else f"{domain}.{op_type}"


GRADIENT = RuleTable("gradient")
