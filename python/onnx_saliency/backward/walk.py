"""The reverse walk: from seeded outputs back to the requested tensors, one rule per node.

Only nodes between the requested tensors (`wrt`) and the seeded outputs are visited; a tensor
that fans out gets the sum of its consumers' contributions; a branch that carries no gradient
stays absent (never a tensor of zeros).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping

import onnx

from .. import fused
from ..canonical import node_reads
from ..errors import UnsupportedOpError
from ..graph import GraphBuilder, GraphIndex, opset_version
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


def path_nodes(index: GraphIndex, sources: Iterable[str], sinks: Iterable[str]
               ) -> list[onnx.NodeProto]:
    """The forward nodes through which a signal from `sinks` back to `sources` passes."""
    between = _downstream(index, sources) & _upstream(index, sinks)
    return [n for n in index.nodes if any(o in between for o in n.output if o)
            and any(i in between for i in n.input if i)]


def backward(builder: GraphBuilder, index: GraphIndex, rules: Mapping[str, Rule],
             seeds: Mapping[str, str], wrt: Iterable[str], options: dict | None = None
             ) -> dict[str, str | None]:
    """Emit the backward pass; return the signal at each `wrt` tensor (None if none reaches it)."""
    wrt = list(dict.fromkeys(wrt))
    after, before = _downstream(index, wrt), _upstream(index, seeds)
    opaque = _opaque_on_path(index, after, before)
    if opaque is not None:
        raise _no_rule(opaque, index)
    needs = after & before
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


def _opaque_on_path(index: GraphIndex, after: set[str], before: set[str]
                    ) -> onnx.NodeProto | None:
    """A node the walk cannot see through although the signal passes it: one of a foreign
    domain (its outputs carry no type) or with subgraphs (what they read is no input) that
    reads a tensor in `after` and writes one in `before`. The package's own fused ops stay
    constants to the walk."""
    for node in index.nodes:
        foreign = node.domain not in ("", "ai.onnx", fused.DOMAIN)
        nested = any(a.HasField("g") or a.graphs for a in node.attribute)
        if (foreign or nested) and node_reads(node) & after and before.intersection(node.output):
            return node
    return None


def _no_rule(node: onnx.NodeProto, index: GraphIndex) -> UnsupportedOpError:
    domain = node.domain or "ai.onnx"
    opset = opset_version(index.model, node.domain) or "not imported"
    return UnsupportedOpError(
        f"Node '{node.name}' (op {node.op_type}, domain {domain}, opset {opset}) lies on the "
        "backward path and has no backward rule; tap a layer after it, re-export the model "
        "without this op, or open an issue asking for a rule.")
