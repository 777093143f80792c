"""ONNX Runtime's fused com.microsoft ops, rewritten into their standard-ONNX definitions.

ONNX Runtime's graph optimizer (a session's optimized_model_filepath at ORT_ENABLE_EXTENDED,
onnxruntime.transformers' optimize_model) writes fused ops of the com.microsoft domain into the
models it saves. `standard_contrib_ops`, a canonical pass, writes each one back as the standard
ops it fuses, so every method's rules, the layer names and the heads see ordinary ops; the
fused node's output keeps its name (the explained logits stay the model's). Definitions:

  FusedConv(X, W, B?, Z?; Conv's attributes, activation, activation_params)
      = act(Conv(X, W, B) + Z), act one of Relu, Sigmoid, Tanh, LeakyRelu(α), Clip(lo, hi),
        HardSigmoid(α, β) (activation_params in that order)
  FusedGemm(A, B, C?; Gemm's attributes, activation, activation_alpha/beta) = act(Gemm(A, B, C))
  FusedMatMul(A, B; alpha, transA, transB) = alpha·(A or Aᵀ)·(B or Bᵀ), ᵀ swapping the last two
      axes (transBatchA/transBatchB, which move the batch axes too, are refused)
  Gelu(X) = ½x(1 + erf(x/√2))              BiasGelu(A, B) = Gelu(A + B)
  FastGelu(X, bias?) = ½x(1 + tanh(√(2/π)(x + 0.044715x³))), x = X + bias
  QuickGelu(X; alpha = 1.702) = x·sigmoid(alpha·x)
  BiasAdd(X, bias, skip) = X + bias + skip
  SkipLayerNormalization(input, skip, gamma, beta?, bias?; epsilon)
      = (LayerNormalization(s, gamma, beta; axis −1, epsilon), its mean, its 1/σ, s) with
        s = input + skip + bias (outputs 1-3 optional)
Opset 20 on, Gelu and the tanh form are ONNX's Gelu; earlier, their formulas in Erf, Tanh, Mul
and Add. LayerNormalization needs opset 17; at 16 (the only older opset left after
convert_opset) it is written out: (s − mean)·(var + ε)^−½·gamma + beta.

Other com.microsoft ops are left as they are: the walk names them when a signal must cross one.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import UnsupportedOpError
from .graph import attr_text, attrs_of, opset_version

if TYPE_CHECKING:
    from .canonical import Canonicalization

DOMAIN = "com.microsoft"


class _Writer:
    """Emits standard nodes for one fused node: fresh tensor and node names derived from it,
    constants as initializers."""

    def __init__(self, graph: onnx.GraphProto, taken: set[str], opset: int,
                 elem: dict[str, int]):
        self.graph, self.taken, self.opset, self.elem = graph, taken, opset, elem
        self.nodes: list[onnx.NodeProto] = []
        self.node: onnx.NodeProto | None = None

    def start(self, node: onnx.NodeProto) -> None:
        self.node, self.nodes = node, []

    def _fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, outputs: int = 1,
           **attrs) -> str:
        """One standard node named after the fused one; returns its (first) output."""
        suffix = op_type.lower()
        outs = [out] if out else [self._fresh(f"{self.node.output[0]}/{suffix}")]
        outs += [self._fresh(f"{self.node.output[0]}/{suffix}_{k}") for k in range(1, outputs)]
        first = not self.nodes
        name = self.node.name if first else self._fresh(f"{self.node.name}/{op_type}")
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    def const(self, value, like: str | None = None) -> str:
        """A float constant in the element type of `like` (else of the fused node's first input,
        else float32)."""
        elem = self.elem.get(like or "") or self.elem.get(self.node.input[0]) or onnx.TensorProto.FLOAT
        dtype = helper.tensor_dtype_to_np_dtype(elem)
        name = self._fresh(f"{self.node.name}/const")
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def ints(self, values) -> str:
        name = self._fresh(f"{self.node.name}/axes")
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name


def _refuse(node: onnx.NodeProto, model: onnx.ModelProto, why: str) -> UnsupportedOpError:
    return UnsupportedOpError(
        f"Node '{node.name}' (op {node.op_type}, domain {DOMAIN}, opset "
        f"{opset_version(model, DOMAIN) or 'not imported'}) {why}.")


def _activation(w: _Writer, x: str, kind: str, params: list[float], out: str, refuse) -> str:
    if kind == "Relu":
        return w.op("Relu", x, out=out)
    if kind == "Sigmoid":
        return w.op("Sigmoid", x, out=out)
    if kind == "Tanh":
        return w.op("Tanh", x, out=out)
    if kind == "LeakyRelu":
        return w.op("LeakyRelu", x, out=out, alpha=params[0] if params else 0.01)
    if kind == "HardSigmoid":
        alpha, beta = (params + [0.2, 0.5][len(params):])[:2]
        return w.op("HardSigmoid", x, out=out, alpha=alpha, beta=beta)
    if kind == "Clip":
        lo, hi = (params + [-np.inf, np.inf][len(params):])[:2]
        return w.op("Clip", x, w.const(lo, x), w.const(hi, x), out=out)
    raise refuse(f"has activation '{kind}', which onnx-saliency does not rewrite")


def _gelu(w: _Writer, x: str, out: str, tanh: bool) -> str:
    if w.opset >= 20:
        return w.op("Gelu", x, out=out, **({"approximate": "tanh"} if tanh else {}))
    if tanh:   # ½x(1 + tanh(√(2/π)(x + 0.044715x³)))
        cube = w.op("Mul", w.op("Mul", x, x), x)
        inner = w.op("Add", x, w.op("Mul", cube, w.const(0.044715, x)))
        t = w.op("Tanh", w.op("Mul", inner, w.const(math.sqrt(2 / math.pi), x)))
    else:      # ½x(1 + erf(x/√2))
        t = w.op("Erf", w.op("Mul", x, w.const(1 / math.sqrt(2), x)))
    half_x = w.op("Mul", x, w.const(0.5, x))
    return w.op("Mul", half_x, w.op("Add", t, w.const(1.0, x)), out=out)


def _layer_norm(w: _Writer, s: str, gamma: str, beta: str, eps: float,
                outs: list[str]) -> None:
    """y, mean, 1/σ over the last axis into `outs` (names or "" for outputs not wanted)."""
    if w.opset >= 17:
        w.nodes.append(helper.make_node(
            "LayerNormalization", [s, gamma] + ([beta] if beta else []),
            [outs[0], outs[1] if len(outs) > 1 else "", outs[2] if len(outs) > 2 else ""],
            name=w._fresh(f"{w.node.name}/LayerNormalization"), axis=-1, epsilon=eps))
        while w.nodes[-1].output and not w.nodes[-1].output[-1]:
            w.nodes[-1].output.pop()
        return
    mean = w.op("ReduceMean", s, axes=[-1], keepdims=1,
                out=outs[1] if len(outs) > 1 and outs[1] else None)
    centred = w.op("Sub", s, mean)
    var = w.op("ReduceMean", w.op("Mul", centred, centred), axes=[-1], keepdims=1)
    inv = w.op("Reciprocal", w.op("Sqrt", w.op("Add", var, w.const(eps, s))),
               out=outs[2] if len(outs) > 2 and outs[2] else None)
    y = w.op("Mul", w.op("Mul", centred, inv), gamma, out=None if beta else outs[0])
    if beta:
        w.op("Add", y, beta, out=outs[0])


def _rewrite(w: _Writer, node: onnx.NodeProto, model: onnx.ModelProto,
             rank: dict[str, int]) -> bool:
    """Emit `node`'s standard definition into w.nodes; False where it must wait for a rank."""
    a = attrs_of(node)
    ins = list(node.input) + [""] * 5
    out = node.output[0]

    def refuse(why: str) -> UnsupportedOpError:
        return _refuse(node, model, why)

    op = node.op_type
    if op == "FusedConv":
        conv_attrs = {k: v for k, v in a.items() if k not in ("activation", "activation_params")}
        y = w.op("Conv", *[i for i in node.input[:3]], **conv_attrs)
        if ins[3]:
            y = w.op("Add", y, ins[3])
        _activation(w, y, attr_text(node, "activation", "Relu"),
                    list(a.get("activation_params", [])), out, refuse)
    elif op == "FusedGemm":
        gemm_attrs = {k: a[k] for k in ("alpha", "beta", "transA", "transB") if k in a}
        kind = attr_text(node, "activation", "Relu")
        params = [a[k] for k in ("activation_alpha", "activation_beta") if k in a]
        y = w.op("Gemm", *node.input, **gemm_attrs)
        _activation(w, y, kind, params, out, refuse)
    elif op == "FusedMatMul":
        if a.get("transBatchA", 0) or a.get("transBatchB", 0):
            raise refuse("uses transBatchA/transBatchB")
        operands = []
        for x, flag in ((node.input[0], "transA"), (node.input[1], "transB")):
            if a.get(flag, 0):
                if x not in rank:
                    return False
                r = rank[x]
                x = w.op("Transpose", x, perm=list(range(r - 2)) + [r - 1, r - 2])
            operands.append(x)
        alpha = float(a.get("alpha", 1.0))
        y = w.op("MatMul", *operands, out=None if alpha != 1.0 else out)
        if alpha != 1.0:
            w.op("Mul", y, w.const(alpha, node.input[0]), out=out)
    elif op in ("Gelu", "BiasGelu", "FastGelu"):
        x = node.input[0]
        if op == "BiasGelu" or (op == "FastGelu" and ins[1]):
            x = w.op("Add", x, node.input[1])
        _gelu(w, x, out, tanh=op == "FastGelu")
    elif op == "QuickGelu":
        x = node.input[0]
        alpha = float(a.get("alpha", 1.702))
        w.op("Mul", x, w.op("Sigmoid", w.op("Mul", x, w.const(alpha, x))), out=out)
    elif op == "BiasAdd":
        w.op("Add", w.op("Add", node.input[0], node.input[1]), node.input[2], out=out)
    elif op == "SkipLayerNormalization":
        outs = list(node.output) + [""] * 3
        last = outs[3] if outs[3] else None
        s = w.op("Add", node.input[0], node.input[1], out=None if ins[4] else last)
        if ins[4]:
            s = w.op("Add", s, ins[4], out=last)
        _layer_norm(w, s, ins[2], ins[3], float(a.get("epsilon", 1e-12)), outs[:3])
    else:
        raise AssertionError(op)
    return True


REWRITTEN = ("FusedConv", "FusedGemm", "FusedMatMul", "Gelu", "BiasGelu", "FastGelu",
             "QuickGelu", "BiasAdd", "SkipLayerNormalization")


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    graph = inferred.graph
    ranks = {t.name: len(t.dims) for t in graph.initializer}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        if vi.type.tensor_type.HasField("shape"):
            ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    return ranks


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    elem = {t.name: t.data_type for t in graph.initializer}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        elem[vi.name] = vi.type.tensor_type.elem_type
    return elem


def standard_contrib_ops(state: Canonicalization) -> None:
    """Ensures no com.microsoft op of REWRITTEN is left: each is replaced, in place, by its
    standard-ONNX definition (the module docstring). Runs in sweeps: a FusedMatMul that
    transposes an operand whose rank shape inference cannot see yet (it comes from another
    fused op) waits for the next sweep, after which the rewritten ops have shapes."""
    model = state.model
    graph = model.graph
    if not any(n.domain == DOMAIN and n.op_type in REWRITTEN for n in graph.node):
        return
    opset = opset_version(model)
    seen = -1
    while True:
        taken = {n.name for n in graph.node} | {o for n in graph.node for o in n.output} | {
            t.name for t in graph.initializer} | {i.name for i in graph.input}
        ranks = _ranks(model) if any(n.op_type == "FusedMatMul" for n in graph.node
                                     if n.domain == DOMAIN) else {}
        if len(ranks) == seen:   # the last sweep taught shape inference nothing new
            stuck = next(n for n in graph.node if n.domain == DOMAIN and n.op_type == "FusedMatMul")
            raise _refuse(stuck, model, "transposes an operand of unknown rank")
        seen = len(ranks)
        writer = _Writer(graph, taken, opset, _elem_types(model))
        kept, waiting = [], 0
        for node in graph.node:
            if node.domain != DOMAIN or node.op_type not in REWRITTEN:
                kept.append(node)
                continue
            writer.start(node)
            if _rewrite(writer, node, model, ranks):
                kept.extend(writer.nodes)
            else:
                kept.append(node)
                waiting += 1
        del graph.node[:]
        graph.node.extend(kept)
        if not waiting:
            break
    if not any(n.domain == DOMAIN for n in graph.node):
        kept_imports = [i for i in model.opset_import if i.domain != DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(kept_imports)

