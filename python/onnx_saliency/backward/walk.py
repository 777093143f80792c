"""The reverse walk: from seeded outputs back to the requested tensors, one rule per node.

Only nodes between the requested tensors (`wrt`) and the seeds are visited; a tensor that fans
out gets the sum of its consumers' contributions; a branch that carries no gradient stays
absent (never a tensor of zeros). The signal runs through float tensors, and through the
integer tensors of quantized models out of nodes whose rules carry it there (table.py,
`integers=True`). Never a silent zero: an integer tensor between `wrt` and the seeds that no
rule carries a signal through (a Cast to int32, an unknown quantized op) fails the walk with
one sentence naming its node; shapes, indices and booleans (Shape, ArgMax, MaxPool's indices,
comparisons) are the only integer tensors on the way that legitimately carry none.

A method names the walk it needs (`Method.walk`): a `TableWalk` (one rule table and its typed
options) or a composite of walks (c-EBP, methods/ebp.py). Every walk starts from seeds,
{tensor: cotangent}, which the explainer builds in the graph from the target (targets.py: the
one-hot of a class on the logits, a masked region, an embedding's cosine, any cotangent; each
`Target` gives its seeds, and no walk or method looks at targets).
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
from .rules.indexing import NO_GRADIENT
from .table import GRADIENT, RuleTable

Seeds = Mapping[str, str]   # forward tensor -> its cotangent ∂s/∂tensor (s: the explained score)


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
        if acts_on is None or any(acts_on(n, index)
                                   for n in path_nodes(index, wrt, seeds, self.table)):
            return None
        return self.table.inert_warning


_INDEX_SLOTS = {"MaxPool": 1, "TopK": 1}   # the indices output of these


def _is_index(node: onnx.NodeProto, slot: int) -> bool:
    """Whether output `slot` of `node` is a shape, size or index (no signal by nature): the
    outputs of the ops registered as carrying no gradient (rules/indexing.py), and indices."""
    return node.op_type in NO_GRADIENT or _INDEX_SLOTS.get(node.op_type) == slot


def _downstream(index: GraphIndex, sources: Iterable[str], table: RuleTable | None = None
                ) -> set[str]:
    """Tensors that carry a signal and depend on any of `sources` (the sources included): float
    tensors, and the integer outputs of nodes whose `table` rules carry a signal through
    integers; outputs the table treats as constants are left out."""
    table = table or GRADIENT
    reach = set(sources)
    for node in index.nodes:
        if any(i in reach for i in node.input if i):
            carries = table.carries_integers(node)
            constant = table.constant_outputs(node)
            reach.update(o for k, o in enumerate(node.output) if o and k not in constant
                         and (index.is_float(o) or carries))
    return reach


def _upstream(index: GraphIndex, sinks: Iterable[str]) -> set[str]:
    """Tensors that any of `sinks` depends on (the sinks included)."""
    reach = set(sinks)
    for node in reversed(index.nodes):
        if any(o in reach for o in node.output if o):
            reach.update(i for i in node.input if i)
    return reach


def path_nodes(index: GraphIndex, sources: Iterable[str], sinks: Iterable[str],
               table: RuleTable | None = None) -> list[onnx.NodeProto]:
    """The forward nodes through which a signal from `sinks` back to `sources` passes."""
    between = _downstream(index, sources, table) & _upstream(index, sinks)
    return [n for n in index.nodes if any(o in between for o in n.output if o)
            and any(i in between for i in n.input if i)]


def backward(builder: GraphBuilder, index: GraphIndex, table: RuleTable, seeds: Seeds,
             wrt: Iterable[str], options: Any = None) -> Signals:
    """Emit the backward pass; return the signal at each `wrt` tensor (None if none reaches it)."""
    wrt = list(dict.fromkeys(wrt))
    after, before = _downstream(index, wrt, table), _upstream(index, seeds)
    opaque = _opaque_on_path(index, table, after, before)
    if opaque is not None:
        raise _no_rule(opaque, index)
    _refuse_dropped_integers(index, table, after, before)
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
        integers = any(t in needs and not index.is_float(t)
                       for t in [*node.input, *node.output] if t)
        rule = table.get(node.op_type, node.domain, integers)
        if rule is None:
            raise _no_rule(node, index)
        for inp, grad in zip(node.input, rule(ctx, node, grads)):
            if grad is not None and inp in needs:
                parts[inp].append(grad)
    return Signals({t: ctx.sum(parts[t]) if parts.get(t) else None for t in wrt}, ctx)


def _opaque_on_path(index: GraphIndex, table: RuleTable, after: set[str], before: set[str]
                    ) -> onnx.NodeProto | None:
    """A node the walk cannot see through although the signal passes it: one of a foreign
    domain that `table` has no rule for (its outputs may carry no type) or with subgraphs (what
    they read is no input) that reads a tensor in `after` and writes one in `before`. The
    package's own fused ops stay constants to the walk."""
    for node in index.nodes:
        foreign = (node.domain not in ("", "ai.onnx", fused.DOMAIN)
                   and table.get(node.op_type, node.domain) is None
                   and not table.carries_integers(node))
        nested = any(a.HasField("g") or a.graphs for a in node.attribute)
        if (foreign or nested) and node_reads(node) & after and before.intersection(node.output):
            return node
    return None


def _refuse_dropped_integers(index: GraphIndex, table: RuleTable, after: set[str],
                             before: set[str]) -> None:
    """Never a silent zero: refuse a node that reads a tensor carrying the signal and writes a
    non-float tensor the seeds depend on, where no rule carries the signal through it (a Cast
    to an integer type, a quantized op without a rule). Shapes, indices (`_is_index`) and
    booleans carry none by nature and pass."""
    for node in index.nodes:
        if table.carries_integers(node) or not any(i in after for i in node.input if i):
            continue
        for slot, out in enumerate(node.output):
            kind = index.types.get(out)   # untyped (this package's own emitted nodes): skip
            if (out and out in before and kind and not index.is_float(out)
                    and not _is_index(node, slot) and kind != onnx.TensorProto.BOOL):
                domain = node.domain or "ai.onnx"
                opset = opset_version(index.model, node.domain) or "not imported"
                kind = onnx.TensorProto.DataType.Name(kind).lower()
                raise UnsupportedOpError(
                    f"Node '{node.name}' (op {node.op_type}, domain {domain}, opset {opset}) "
                    f"turns the signal into the {kind} tensor '{out}', which no backward rule "
                    "differentiates; the map would silently be zero. Explain the model before "
                    "that conversion, or open an issue asking for a rule.")


def _no_rule(node: onnx.NodeProto, index: GraphIndex) -> UnsupportedOpError:
    domain = node.domain or "ai.onnx"
    opset = opset_version(index.model, node.domain) or "not imported"
    return UnsupportedOpError(
        f"Node '{node.name}' (op {node.op_type}, domain {domain}, opset {opset}) lies on the "
        "backward path and has no backward rule; tap a layer after it, re-export the model "
        "without this op, or open an issue asking for a rule.")
