"""The reverse walk: from seeded outputs back to the requested tensors, one rule per node.

Only nodes between the requested tensors (`wrt`) and the seeds are visited; a tensor that fans
out gets the sum of its consumers' contributions; a branch that carries no gradient stays
absent (never a tensor of zeros).

A method names the walk it needs (`Method.walk`): a `TableWalk` (one rule table and its typed
options) or a composite of walks (c-EBP, methods/ebp.py). Every walk starts from seeds,
{tensor: cotangent}, which the explainer builds in the graph from the target (today the one-hot
of the target class on the logits; DESIGN.md's target objects build others: a `Target` gives
its seeds, and no walk or method looks at targets).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Protocol, Sequence

import onnx

from .. import fused
from ..canonical import node_reads
from ..errors import UnsupportedOpError
from ..graph import GraphBuilder, GraphIndex, opset_version
from .context import RuleContext
from .table import RuleTable

Seeds = Mapping[str, str]   # forward tensor -> its cotangent ∂s/∂tensor (s: the explained score)


class Target(Protocol):
    """What a map explains (DESIGN.md "Targets"): builds the seeds on the explained `output`
    inside the graph, reading the graph `inputs` it declares. Today's only target is the class
    index: explainer.one_hot_seed, with the input `target` int64 [N]."""

    inputs: Sequence[onnx.ValueInfoProto]

    def seeds(self, b: GraphBuilder, index: GraphIndex, output: str) -> Seeds: ...


class Signals(dict):
    """A walk's result, {requested tensor: its signal, or None where none reaches it}, and the
    `context` of the walk that made them (heads read the walk's records there: TSGB)."""

    def __init__(self, signals: Mapping[str, str | None], context: RuleContext):
        super().__init__(signals)
        self.context = context


class Walk(Protocol):
    """A method's backward pass, from seeds to the signals at `wrt`. Walks are frozen values:
    methods whose walks are equal share one."""

    def __call__(self, b: GraphBuilder, index: GraphIndex, seeds: Seeds,
                 wrt: Sequence[str]) -> Signals: ...

    def warning(self, index: GraphIndex, seeds: Seeds, wrt: Sequence[str]) -> str | None:
        """Why the walk's maps would mislead on this graph (None: nothing to say)."""


@dataclass(frozen=True)
class TableWalk:
    """One reverse walk with `table`, its rules reading `options`."""

    table: RuleTable
    options: Any = None

    def __call__(self, b: GraphBuilder, index: GraphIndex, seeds: Seeds,
                 wrt: Sequence[str]) -> Signals:
        return backward(b, index, self.table, seeds, wrt, self.options)

    def warning(self, index: GraphIndex, seeds: Seeds, wrt: Sequence[str]) -> str | None:
        """The table's inert_warning when it changes only some nodes (acts_on) and none lies
        between `wrt` and the seeds."""
        acts_on = self.table.acts_on
        if acts_on is None or any(acts_on(n, index) for n in path_nodes(index, wrt, seeds)):
            return None
        return self.table.inert_warning


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


def backward(builder: GraphBuilder, index: GraphIndex, table: RuleTable, seeds: Seeds,
             wrt: Iterable[str], options: Any = None) -> Signals:
    """Emit the backward pass; return the signal at each `wrt` tensor (None if none reaches it)."""
    wrt = list(dict.fromkeys(wrt))
    after, before = _downstream(index, wrt), _upstream(index, seeds)
    opaque = _opaque_on_path(index, after, before)
    if opaque is not None:
        raise _no_rule(opaque, index)
    needs = after & before
    ctx = table.context(builder, index, needs, frozenset(wrt), options)
    parts: dict[str, list[str]] = defaultdict(list)
    for tensor, grad in seeds.items():
        parts[tensor].append(grad)
    for node in reversed(index.nodes):
        if not any(o in needs for o in node.output if o):
            continue
        if not any(i in needs for i in node.input if i):
            continue
        grads = [ctx.sum(parts[o]) if parts.get(o) else None for o in node.output]
        if all(g is None for g in grads):
            continue
        rule = table.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None:
            raise _no_rule(node, index)
        for inp, grad in zip(node.input, rule(ctx, node, grads)):
            if grad is not None and inp in needs:
                parts[inp].append(grad)
    return Signals({t: ctx.sum(parts[t]) if parts.get(t) else None for t in wrt}, ctx)


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
