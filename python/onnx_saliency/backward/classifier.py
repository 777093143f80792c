"""The fully-connected layers, and which of them is the classifier.

Fully connected: a Gemm, or a MatMul by a constant 2-D weight. The classifier: the
fully-connected nodes with no fully-connected node after them on any path (the last FC layer of
each head). TSGB-FC applies there by default, c-EBP negates its weights and contrasts at the
input of the last of them in graph order.
"""

from __future__ import annotations

import onnx

from ..graph import GraphIndex


def is_fully_connected(node: onnx.NodeProto, index: GraphIndex) -> bool:
    if node.op_type == "Gemm":
        return True
    w = index.const(node.input[1]) if node.op_type == "MatMul" else None
    return w is not None and w.ndim == 2


def fully_connected(index: GraphIndex) -> frozenset[str]:
    """Names of every fully-connected node."""
    return frozenset(n.name for n in index.nodes if is_fully_connected(n, index))


def classifier(index: GraphIndex) -> frozenset[str]:
    """Names of the fully-connected nodes that no fully-connected node follows."""
    fcs = fully_connected(index)
    fc_below: dict[str, bool] = {}   # tensor -> an FC node consumes it, directly or later
    chosen = set()
    for n in reversed(index.nodes):
        below = any(fc_below.get(o, False) for o in n.output)
        if n.name in fcs and not below:
            chosen.add(n.name)
        for i in n.input:
            fc_below[i] = fc_below.get(i, False) or below or n.name in fcs
    return frozenset(chosen)


def classifier_input(index: GraphIndex) -> str | None:
    """The input of the classifier's last node in graph order (c-EBP's contrast layer)."""
    chosen = classifier(index)
    fcs = [n for n in index.nodes if n.name in chosen]
    return fcs[-1].input[0] if fcs else None
