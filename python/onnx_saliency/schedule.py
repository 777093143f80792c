"""The order of an explainer graph's nodes, shaped for ONNX Runtime's CPU provider.

ONNX Runtime runs the nodes in the order of the graph wherever their dependencies allow, and it
lets a node overwrite an input in place only when the node is that input's last reader. Its
biggest in-place win is the residual block: it fuses Conv → Add(·, s) into one Conv that
accumulates into the skip tensor s's buffer. A backward node that reads a forward tensor late
(at the end of the graph, where the builder appends it) takes that last-reader place, and the
fused Conv then first copies s. Two functions keep the fusion working:

- `interleave_early` puts each backward node that reads only forward tensors (ReLU masks, TSGB
  denominators) right after the forward node it waits for, so the forward readers stay last;
- `copy_fused_sum_operands` gives a residual Add whose skip tensor is also read after the seed
  its own early copy of it, the one buffer no later reader needs.

What they guarantee: the merged graph holds the same nodes and computes the same values. The
first only reorders (into a valid topological order); the second only adds the copies, each an
identity, and points the Adds at them.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from typing import Sequence

import onnx
from onnx import helper

from .graph import GraphIndex


def interleave_early(graph: onnx.GraphProto, added: Sequence[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """graph's nodes with `added` merged in: each added node goes right after the node that makes
    the last of its inputs (its order among the added nodes kept), so backward nodes that read
    only forward tensors (ReLU masks, TSGB denominators) run beside the forward pass.

    ONNX Runtime runs nodes in this order where it can, and lets a node overwrite an input in
    place only when it is that input's last reader: a mask read off an activation early leaves
    the residual Add (fused into the next Conv) the activation's last reader, as in the plain
    forward pass; read at the end of the graph, every such Add first copies the activation.

    Requires graph's nodes in topological order and `added` in an order valid after them.
    Added nodes that wait on a tensor neither makes (the target input, not yet in the graph)
    stay at the end, in their order."""
    made = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    missing = [len(set(node.input) - made) for node in added]
    waiting: dict[str, list[int]] = defaultdict(list)
    for k, node in enumerate(added):
        for i in set(node.input) - made:
            waiting[i].append(k)
    out: list[onnx.NodeProto] = []
    placed = [False] * len(added)

    def place(node: onnx.NodeProto, ready: list[int]) -> None:
        """Emit `node`; push the added nodes it completes onto the heap `ready`."""
        out.append(node)
        for o in node.output:
            for k in waiting.pop(o, []):
                missing[k] -= 1
                if missing[k] == 0:
                    heapq.heappush(ready, k)

    def drain(ready: list[int]) -> None:
        while ready:
            k = heapq.heappop(ready)
            placed[k] = True
            place(added[k], ready)

    ready = [k for k, m in enumerate(missing) if m == 0]
    heapq.heapify(ready)
    drain(ready)
    for node in graph.node:
        place(node, ready)
        drain(ready)
    out.extend(node for k, node in enumerate(added) if not placed[k])
    return out


def copy_fused_sum_operands(graph: onnx.GraphProto, added: Sequence[onnx.NodeProto],
                            index: GraphIndex) -> list[onnx.NodeProto]:
    """`added` plus, for each residual Add(conv, s) of `graph` whose skip operand s is also read
    by a backward node after the seed, a copy of s (an identity 1×1 MaxPool, kept in ONNX
    Runtime's blocked layout) that the Add takes instead of s (the Add is rewired in place).

    ONNX Runtime fuses Conv → Add(·, s) into one Conv that accumulates into s's buffer, in place
    only when that Conv is s's last reader; otherwise the Conv first copies s, at about twice the
    cost of this copy (ResNet-50 layer1, batch 8: 6 → 17 ms per block). The copy is the fused
    Conv's own operand, so its buffer is free to overwrite whatever order the session runs nodes
    in. Only float 4-D skip tensors with a multiple of 16 channels (what ONNX Runtime keeps
    blocked) are copied. `index` is the index of `graph`, the forward model."""
    readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in [*graph.node, *added]:
        for i in node.input:
            readers[i].append(node)
    producer = index.producer
    outputs = {o.name for o in graph.output}

    def fused_conv_output(t: str) -> bool:
        p = producer.get(t)
        return p is not None and p.op_type == "Conv" and len(readers[t]) == 1 and t not in outputs

    late_reads = _read_after_seed(graph, added, producer)
    copies = []
    for node in graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        k = 1 if fused_conv_output(node.input[0]) else 0 if fused_conv_output(node.input[1]) else None
        if k is None:
            continue
        s = node.input[k]
        shape = index.shapes.get(s)
        if (s in producer and s in late_reads and index.is_float(s) and shape is not None
                and len(shape) == 4 and isinstance(shape[1], int) and shape[1] % 16 == 0):
            copy = f"{s}/osal_copy_for/{node.name}"
            copies.append(helper.make_node("MaxPool", [s], [copy], name=f"osal/copy/{s}",
                                           kernel_shape=[1, 1]))
            node.input[k] = copy
    return copies + list(added)


def _read_after_seed(graph: onnx.GraphProto, added: Sequence[onnx.NodeProto],
                     producer: dict[str, onnx.NodeProto]) -> set[str]:
    """The tensors read by added nodes that depend on something the forward graph does not
    make (the seed's target input, to begin with): the reads `interleave_early` cannot move
    beside the forward pass."""
    early = ({i.name for i in graph.input} | {t.name for t in graph.initializer} | set(producer)
             | {""})
    late_reads = set()
    for node in added:
        if all(i in early for i in node.input):
            early.update(node.output)
        else:
            late_reads.update(node.input)
    return late_reads
