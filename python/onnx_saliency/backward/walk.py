"""The reverse walk: from seeded outputs back to the requested tensors, one rule per node.

Only nodes between the requested tensors (`wrt`) and the seeded outputs are visited; a tensor
that fans out gets the sum of its consumers' contributions; a branch that carries no gradient
stays absent (never a tensor of zeros).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping

import onnx

from ..errors import UnsupportedOpError
from ..graph import GraphBuilder, GraphIndex
from .context import Rule, RuleContext


def _downstream(index: GraphIndex, sources: Iterable[str]) -> set[str]:
    """Float tensors that depend on any of `sources` (the sources included)."""
    reach = set(sources)
    for node in index.nodes:
        if any(i in reach for i in node.input if i):
            reach.update(o for o in node.output if o and index.is_float(o))
    return reach


def _upstream(index: GraphIndex, sinks: Iterable[str]) -> set[str]:
    """Tensors that any of `sinks` depends on (the sinks included)."""
    reach = set(sinks)
    for node in reversed(index.nodes):
        if any(o in reach for o in node.output if o):
            reach.update(i for i in node.input if i)
    return reach


def backward(builder: GraphBuilder, index: GraphIndex, rules: Mapping[str, Rule],
             seeds: Mapping[str, str], wrt: Iterable[str], options: dict | None = None
             ) -> dict[str, str | None]:
    """Emit the backward pass; return the signal at each `wrt` tensor (None if none reaches it)."""
    wrt = list(dict.fromkeys(wrt))
    needs = _downstream(index, wrt) & _upstream(index, seeds)
    ctx = RuleContext(builder, index, needs, {**(options or {}), "_wrt": set(wrt)})
    parts: dict[str, list[str]] = defaultdict(list)
    for tensor, grad in seeds.items():
        parts[tensor].append(grad)
    for node in reversed(index.nodes):
        if not any(o in needs for o in node.output if o):
            continue
        if not any(i in needs for i in node.input if i):
            continue
        grads = [builder.sum(parts[o]) if parts.get(o) else None for o in node.output]
        if all(g is None for g in grads):
            continue
        rule = rules.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None:
            raise _no_rule(node, index)
        for inp, grad in zip(node.input, rule(ctx, node, grads)):
            if grad is not None and inp in needs:
                parts[inp].append(grad)
    return {t: builder.sum(parts[t]) if parts.get(t) else None for t in wrt}


def _no_rule(node: onnx.NodeProto, index: GraphIndex) -> UnsupportedOpError:
    domain = node.domain or "ai.onnx"
    return UnsupportedOpError(
        f"Node '{node.name}' (op {node.op_type}, domain {domain}, opset {index.opset}) lies on the "
        "backward path and has no backward rule; tap a layer after it, re-export the model "
        "without this op, or open an issue asking for a rule.")
