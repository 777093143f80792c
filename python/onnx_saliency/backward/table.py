"""Rule tables: op type -> backward rule, filled where each rule is written.

    @GRADIENT.rule("Add", "Sum")
    def add(ctx, node, grads): ...

`GRADIENT` holds the true gradient of every supported op (the modules of `rules/` register into
it; import `backward.rules` to have them all). A method that changes some rules makes its own
table over it, `RuleTable("tsgb", over=GRADIENT)`, and registers only the rules it changes; every
other op falls through to the gradient. Adding an op is one decorated function in one file.
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

    def rule(self, *op_types: str) -> Callable[[Rule], Rule]:
        """Decorator: register the function as this table's rule for `op_types`."""
        def register(fn: Rule) -> Rule:
            for op in op_types:
                if op in self._rules:
                    raise ValueError(f"Table '{self.name}' has two rules for {op}.")
                self._rules[op] = fn
            return fn
        return register

    def get(self, op_type: str) -> Rule | None:
        rule = self._rules.get(op_type)
        if rule is None and self.over is not None:
            return self.over.get(op_type)
        return rule

    def __getitem__(self, op_type: str) -> Rule:
        rule = self.get(op_type)
        if rule is None:
            raise KeyError(op_type)
        return rule

    def __repr__(self) -> str:
        return f"RuleTable({self.name!r})"


GRADIENT = RuleTable("gradient")
