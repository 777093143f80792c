"""An index over an ONNX graph, and the builder that emits new nodes beside it.

`GraphIndex` answers the questions the reverse walk asks (who produces a tensor, who consumes
it, its static shape, its constant value). `GraphBuilder` emits nodes with fresh names and
de-duplicates identical nodes (same op, inputs and attributes), which is what lets several
methods share backward work until their rules differ.

What writes where: the builder registers each constant it makes in the index (value, shape,
type), so rules read emitted constants like the model's own; nothing else writes to the index,
and no forward node is edited while the walks run. A rule that needs more of a forward node (a
MaxPool's Indices output) asks `GraphBuilder.forward_output`, which names the output and
records the edit; the assembly (explainer.py) applies the edits with the builder's nodes.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
               onnx.TensorProto.BFLOAT16}
NARROW_FLOATS = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}

Dim = int | str | None


def opset_version(model: onnx.ModelProto, domain: str = "") -> int:
    for imp in model.opset_import:
        if imp.domain in (domain, "ai.onnx" if domain == "" else domain):
            return imp.version
    return 0


class GraphIndex:
    """Producers, consumers, types, shapes and constants of one (canonical) graph, plus the
    constants a GraphBuilder emits over it (see the module docstring)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self.opset = opset_version(model)
        self.nodes: list[onnx.NodeProto] = list(self.graph.node)
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
        self.initializers = {t.name: t for t in self.graph.initializer}
        self._consts: dict[str, np.ndarray] = {}
        self.types: dict[str, int] = {}
        self.shapes: dict[str, tuple[Dim, ...] | None] = {}
        for vi in [*self.graph.input, *self.graph.value_info, *self.graph.output]:
            self._record(vi)
        for t in self.graph.initializer:
            self.types[t.name] = t.data_type
            self.shapes[t.name] = tuple(t.dims)
        self.graph_inputs = [i.name for i in self.graph.input if i.name not in self.initializers]
        self.graph_outputs = [o.name for o in self.graph.output]

    def _record(self, vi: onnx.ValueInfoProto) -> None:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            return
        self.types[vi.name] = tt.elem_type
        if tt.HasField("shape"):
            dims: list[Dim] = []
            for d in tt.shape.dim:
                if d.HasField("dim_value") and d.dim_value >= 0:
                    dims.append(d.dim_value)
                elif d.HasField("dim_param"):
                    dims.append(d.dim_param)
                else:
                    dims.append(None)
            self.shapes[vi.name] = tuple(dims)
        else:
            self.shapes[vi.name] = None

    def is_float(self, name: str) -> bool:
        return self.types.get(name) in FLOAT_TYPES

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def static_shape(self, name: str) -> tuple[int, ...] | None:
        """The shape if every dimension is a known integer, else None."""
        shape = self.shapes.get(name)
        if shape is None or not all(isinstance(d, int) for d in shape):
            return None
        return tuple(shape)  # type: ignore[arg-type]

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer, or None for a runtime tensor."""
        if not name or name not in self.initializers:
            return None
        if name not in self._consts:
            self._consts[name] = numpy_helper.to_array(self.initializers[name])
        return self._consts[name]


def attrs_of(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def attr_text(node: onnx.NodeProto, name: str, default: str) -> str:
    """The string attribute `name` of `node` as text (ONNX stores strings as bytes), or
    `default` when the node does not set it."""
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else str(value)
    return default


def rename_tensors(node: onnx.NodeProto, rename: dict[str, str]) -> None:
    """Inputs and outputs of `node` renamed, and the outer-scope reads of its subgraphs (names
    a subgraph defines itself shadow the outer ones)."""
    for i, name in enumerate(node.input):
        node.input[i] = rename.get(name, name)
    for i, name in enumerate(node.output):
        node.output[i] = rename.get(name, name)
    for attr in node.attribute:
        for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
            inner = {i.name for i in sub.input} | {t.name for t in sub.initializer} | {
                o for n in sub.node for o in n.output}
            outer = {k: v for k, v in rename.items() if k not in inner}
            for n in sub.node:
                rename_tensors(n, outer)
            for o in sub.output:
                o.name = outer.get(o.name, o.name)


def _freeze(value):
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, onnx.TensorProto):
        return value.SerializeToString()
    return value


class GraphBuilder:
    """Emits nodes and constants with fresh names; identical nodes are emitted once (CSE).

    Over a model with float16 (or bfloat16) tensors the builder widens: the forward keeps its
    narrow type, everything the builder emits runs in float32. A narrow forward tensor or
    initializer read by an emitted node is cast to float32 once (one Cast node per tensor,
    shared); narrow constants are made float32; a Cast to a narrow type (a rule undoing a
    forward Cast) casts to float32 instead. Seeds, signals and maps are then float32."""

    def __init__(self, index: GraphIndex, prefix: str = "osal", fused: bool = False):
        self.index = index
        self.fused = fused  # emit custom-domain nodes (fused.py) rather than their portable twins
        self.opset = index.opset
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.custom_domains: set[str] = set()
        self._taken = set(index.producer) | set(index.initializers) | {
            i.name for i in index.graph.input} | {n.name for n in index.nodes}
        self._counter = 0
        self._cse: dict[tuple, list[str]] = {}
        self._consts: dict[tuple, str] = {}
        self.forward_edits: dict[str, dict[int, str]] = {}  # forward node -> {output slot: name}
        self.widen = any(t in NARROW_FLOATS for t in index.types.values())

    def fresh(self, hint: str) -> str:
        while True:
            self._counter += 1
            name = f"{self.prefix}/{hint}_{self._counter}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, domain: str = "",
           **attrs) -> str:
        """Emit one node and return its (first) output name."""
        return self.op_multi(op_type, *inputs, outputs=outputs, domain=domain, **attrs)[0]

    def op_multi(self, op_type: str, *inputs: str, outputs: int = 1, domain: str = "",
                 **attrs) -> list[str]:
        attrs = {k: v for k, v in attrs.items() if v is not None}
        if self.widen:
            inputs = tuple(self.float32(i) for i in inputs)
            if op_type == "Cast" and attrs.get("to") in NARROW_FLOATS:
                attrs["to"] = onnx.TensorProto.FLOAT
        return self._emit(op_type, tuple(inputs), outputs, domain, attrs)

    def float32(self, name: str) -> str:
        """`name` itself, or, for a float16/bfloat16 forward tensor, its float32 cast (one Cast
        node per tensor)."""
        if not name or self.index.types.get(name) not in NARROW_FLOATS:
            return name
        return self._emit("Cast", (name,), 1, "", {"to": onnx.TensorProto.FLOAT})[0]

    def _emit(self, op_type: str, inputs: tuple, outputs: int, domain: str, attrs: dict
              ) -> list[str]:
        key = (op_type, domain, tuple(inputs), outputs,
               tuple(sorted((k, _freeze(v)) for k, v in attrs.items())))
        if key in self._cse:
            return self._cse[key]
        outs = [self.fresh(op_type) for _ in range(outputs)]
        node = helper.make_node(op_type, list(inputs), outs, name=outs[0], domain=domain or None,
                                **attrs)
        if domain:
            self.custom_domains.add(domain)
        self.nodes.append(node)
        self._cse[key] = outs
        return outs

    def const(self, value, dtype=np.float32) -> str:
        """A constant initializer; equal constants share one name."""
        arr = np.asarray(value, dtype=dtype)
        if self.widen and arr.dtype == np.float16:
            arr = arr.astype(np.float32)
        # small values are their own key; a large one (a flipped weight) by its digest, so the
        # key is not a second copy of it
        data = arr.tobytes() if arr.nbytes <= 4096 else \
            hashlib.blake2b(np.ascontiguousarray(arr).view(np.uint8), digest_size=32).digest()
        key = (arr.dtype.str, arr.shape, data)
        if key not in self._consts:
            name = self.fresh("const")
            tensor = numpy_helper.from_array(arr, name)
            self.initializers.append(tensor)
            self._consts[key] = name
            # known to the index too, so rules can read emitted constants like the model's own
            self.index.initializers[name] = tensor
            self.index.shapes[name] = tuple(arr.shape)
            self.index.types[name] = tensor.data_type
        return self._consts[key]

    def ints(self, values: Iterable[int]) -> str:
        return self.const(list(values), np.int64)

    # -- opset-aware helpers ------------------------------------------------------------
    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: bool = True) -> str:
        """ReduceSum/Mean/Max/… over `axes`; axes go in an input from opset 13 (ReduceSum) or 18."""
        axes_as_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if axes_as_input:
            return self.op(op_type, x, self.ints(axes), keepdims=int(keepdims))
        return self.op(op_type, x, axes=list(axes), keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", x, self.ints(axes))
        return self.op("Unsqueeze", x, axes=list(axes))

    def squeeze(self, x: str, axes: Sequence[int]) -> str:
        if self.opset >= 13:
            return self.op("Squeeze", x, self.ints(axes))
        return self.op("Squeeze", x, axes=list(axes))

    def shape(self, x: str, start: int | None = None, end: int | None = None) -> str:
        if self.opset >= 15 and (start is not None or end is not None):
            kw = {"start": start, "end": end}
            return self.op("Shape", x, **kw)
        full = self.op("Shape", x)
        if start is None and end is None:
            return full
        return self.op("Slice", full, self.ints([start or 0]), self.ints([end if end is not None else 2**62]))

    def shape_of(self, x: str, source: str, fill: int) -> str:
        """x's shape as the shape input of a Reshape (fill=0) or Expand (fill=1) whose data is
        shaped like `source`. When x's dims past the first are static and its first dim is
        `source`'s (the batch), a constant with `fill` first: shape inference then keeps the
        batch symbol (ONNX Runtime needs it to keep backward tensors in its blocked layout).
        Else Shape(x) at run time."""
        shape, src = self.index.shapes.get(x), self.index.shapes.get(source)
        if (shape and src and shape[0] is not None and shape[0] == src[0]
                and all(isinstance(d, int) for d in shape[1:])):
            return self.ints([fill, *shape[1:]])
        return self.shape(x)

    def zeros_like(self, x: str) -> str:
        return self.op("Mul", x, self.const(0.0))

    def sum(self, terms: Sequence[str]) -> str:
        """Σ terms: the one term itself, else one Sum node."""
        return terms[0] if len(terms) == 1 else self.op("Sum", *terms)

    def forward_output(self, node: onnx.NodeProto, slot: int, hint: str) -> str:
        """The name of output `slot` of the forward `node`; where the model leaves it off, a
        fresh name, and the edit recorded for `apply_forward_edits` (the node stays as it is)."""
        if slot < len(node.output) and node.output[slot]:
            return node.output[slot]
        edits = self.forward_edits.setdefault(node.name, {})
        if slot not in edits:
            edits[slot] = self.fresh(hint)
        return edits[slot]

    def apply_forward_edits(self, graph: onnx.GraphProto) -> None:
        """Switch on, in `graph` (the indexed forward graph), the outputs `forward_output` named."""
        for node in graph.node:
            for slot, name in sorted(self.forward_edits.get(node.name, {}).items()):
                while len(node.output) <= slot:
                    node.output.append("")
                node.output[slot] = name

    def resize_to(self, x: str, like: str) -> str:
        """Bilinear (half-pixel) resize of a 4-D tensor to the spatial size of 4-D `like`."""
        sizes = self.op("Concat", self.shape(x, 0, 2), self.shape(like, 2, 4), axis=0)
        return self.op("Resize", x, "", "", sizes, mode="linear",
                       coordinate_transformation_mode="half_pixel")
