"""Every backward rule against central finite differences, on the fixture graphs in graphs/.

The explainer graph runs in ONNX Runtime (float32); the reference differentiates the float64 twin
of the same graph with the ONNX reference evaluator: (f(x + h v) − f(x − h v)) / 2h for random
directions v, f = Σ_n logits[n, t_n]. Tolerance: 1e-3 relative to |∇f|·|v|.

No near-tie can break these, on any machine: the inputs are fixed (NumPy's seeded generator)
and the float64 reference is machine-independent to ~1e-15, and on them every kink sits far
from its bound. Closest: in `activations` a PRelu input 1.6e-4 from 0 and a Clip input 2.5e-4
from its bound, while the FD steps move no input of those ops by more than 1.2e-5 (≥ 13×
margin) and float32 rounding in ORT moves them by ~1e-7; every other ReLU input is ≥ 2.9e-4 of
its tensor's range from 0, every pooling window's maximum leads its runner-up by ≥ 1.3e-3 of
the range, the HardSigmoid/HardSwish corners are further still; in `smooth_units` the Elu and
Selu inputs are ≥ 2.4e-3 from 0, in `abs_max_min` the Abs inputs ≥ 1.9e-3 from 0 and each
Max/Min winner leads its runner-up by ≥ 9.3e-4, against FD moves ≤ 1.2e-5 (≥ 50× margin, both
sides moving); in `reductions` and `reductions_18` each ReduceMax/ReduceMin winner
leads its runner-up by ≥ 2.1e-4 and the ReduceL1 inputs are ≥ 2.4e-3 from 0, against FD moves
≤ 7.7e-6 (≥ 16×; Resize, Einsum and ConvTranspose have no kinks); in `gather_elements_nd`
TopK's kept values lead the rest by ≥ 1.7e-4 and ArgMax's winner by ≥ 7.3e-3,
`expand_tile_where`'s Where inputs are ≥ 5.0e-4 from its threshold, `shape_subgraph`'s compared inputs ≥ 3.9e-3 from
theirs, in `piecewise_constant` the Floor/Ceil inputs ≥ 5.9e-4 from an integer, Round's ≥ 2.9e-4
from a half-integer and Sign's ≥ 4.5e-3 from 0, against FD moves ≤ 1.2e-5 (≥ 9×, both sides
moving). So both sides make the
same decisions and no FD straddles a kink. (Measure again
if the fixtures or their inputs change.) The reference runs Erf and Gelu by their definitions in
float64 (`REFERENCE_OPS`): the evaluator's own round to float32.

The normalization rules are also checked alone, with their scale and bias gradients
(`test_norm_rules_with_parameters_match_finite_differences`), GroupNormalization in both of
its opsets' forms (18: γ, β per group; 21: per channel, the `group_norm` fixture's).
"""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops._op import OpRunUnaryNum

import onnx_saliency as osal
from conftest import make_graphs

NAMES = sorted(make_graphs.FIXTURES)


class Erf(OpRunUnaryNum):
    """erf at the input's precision: the reference evaluator's own rounds to float32, which
    finite differences with h = 1e-6 cannot take."""

    def _run(self, x):
        return (np.vectorize(math.erf, otypes=[x.dtype])(x),)


class Gelu(OpRunUnaryNum):
    """Gelu by its definition at the input's precision (the evaluator runs its function body,
    whose Erf rounds to float32)."""

    def _run(self, x):
        if getattr(self, "approximate", "none") in ("tanh", b"tanh"):
            return (0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),)
        return (0.5 * x * (1 + Erf._run(self, x / math.sqrt(2))[0]),)


REFERENCE_OPS = [Erf, Gelu]


def _grad(model, x, targets):
    graph = osal.backward_graph(model, ["x"])
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x.astype(np.float32), "target": targets})[0]


@pytest.mark.parametrize("name", NAMES)
def test_gradient_matches_finite_differences(name):
    rng = np.random.default_rng(1)
    model32, model64 = make_graphs.build(name), make_graphs.build(name, np.float64)
    shape = [d.dim_value for d in model32.graph.input[0].type.tensor_type.shape.dim]
    x = rng.standard_normal(shape)
    targets = np.array([1, 3], np.int64)
    # the float32 forward in ORT agrees with the float64 reference: same function
    ref = ReferenceEvaluator(model64, new_ops=REFERENCE_OPS)
    ort_logits = ort.InferenceSession(model32.SerializeToString()).run(None, {"x": x.astype(np.float32)})[0]
    np.testing.assert_allclose(ort_logits, ref.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)

    grad = _grad(model32, x, targets).astype(np.float64)
    assert grad.shape == x.shape and np.abs(grad).max() > 0

    def f(z):
        return ref.run(None, {"x": z})[0][[0, 1], targets].sum()

    h = 1e-6
    for _ in range(6):
        v = rng.standard_normal(shape)
        fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
        analytic = float((grad * v).sum())
        scale = np.linalg.norm(grad) * np.linalg.norm(v)
        assert abs(fd - analytic) <= 1e-3 * scale, (name, fd, analytic)


def test_fixture_files_are_regenerated_identically(tmp_path):
    """The committed graphs/*.onnx are exactly what make_graphs.py writes."""
    make_graphs.main(tmp_path)
    for name in NAMES:
        committed = make_graphs.HERE / f"{name}.onnx"
        assert committed.read_bytes() == (tmp_path / f"{name}.onnx").read_bytes(), name
        assert committed.stat().st_size < 1_000_000


def test_relu_mask_is_exact_for_tiny_and_huge_activations():
    """The ReLU mask, HardSigmoid(y; α = 2^127, β = 0), is exactly 1[x > 0] at the
    smallest normal float, at 0 and −0, and where 2^127·y overflows (no finite differences can
    see that: the reference is the mask itself)."""
    from onnx import TensorProto, helper, numpy_helper

    tiny = np.finfo(np.float32).tiny                       # 2^-126
    row = np.array([tiny, 1.5 * tiny, 1e-30, 0.0, -0.0, -1e-30, 1e30, 3e38], np.float32)
    x = np.stack([row, -row[::-1]])[None, :, None, :]       # [1, 2, 1, 8]
    w = np.array([[2.0, -3.0], [0.5, 0.25], [1.0, 1.0]], np.float32)[:, :, None, None]
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Conv", ["r", "w"], ["c"]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["logits"])]
    graph = helper.make_graph(
        nodes, "relu_mask", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 1, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for t in range(3):
        grad = _grad(model, x, np.array([t], np.int64))
        expected = (x > 0) * w[t, :, 0, 0][None, :, None, None] / 8
        np.testing.assert_array_equal(grad, expected.astype(np.float32))


def _rule_signals(model, out, wrt, feeds):
    """The gradient rules' signals at `wrt`, walked back from `out` seeded with the input "cot"
    (no canonicalisation: the model's declared types and shapes are used as they are)."""
    from onnx import TensorProto, helper

    from onnx_saliency.backward.rules import GRADIENT
    from onnx_saliency.backward.walk import backward
    from onnx_saliency.graph import GraphBuilder, GraphIndex

    index = GraphIndex(model)
    b = GraphBuilder(index)
    signals = backward(b, index, GRADIENT, {out: "cot"}, wrt)
    explainer = model.__deepcopy__()
    explainer.graph.node.extend(b.nodes)
    explainer.graph.initializer.extend(b.initializers)
    explainer.graph.output.extend(helper.make_tensor_value_info(signals[t], TensorProto.FLOAT, None)
                                  for t in wrt)
    sess = ort.InferenceSession(explainer.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([signals[t] for t in wrt], {k: v.astype(np.float32) for k, v in feeds.items()})


def test_max_min_ties_go_to_the_first_input():
    """Max/Min send each element's signal to the first input (in input order) that equals the
    output, broadcast inputs summed back to their shapes."""
    from onnx import TensorProto, helper

    a = np.array([[1.0, 2.0, 5.0], [3.0, -1.0, 0.0]])
    b = np.array([1.0, 4.0, 0.0])                        # broadcast over rows
    c = np.array([[0.0, 4.0, 5.0], [3.0, 4.0, -2.0]])
    cot = np.arange(1.0, 7.0).reshape(2, 3)
    for op, pick in (("Max", np.maximum), ("Min", np.minimum)):
        graph = helper.make_graph(
            [helper.make_node(op, ["a", "b", "c"], ["y"])], "ties",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, v.shape)
             for n, v in (("a", a), ("b", b), ("c", c), ("cot", cot))],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        got = _rule_signals(model, "y", ["a", "b", "c"], {"a": a, "b": b, "c": c, "cot": cot})
        y = pick(pick(a, b), c)
        first_a = a == y
        first_b = (b == y) & ~first_a
        first_c = (c == y) & ~first_a & ~first_b
        np.testing.assert_array_equal(got[0], cot * first_a)
        np.testing.assert_array_equal(got[1], (cot * first_b).sum(0))
        np.testing.assert_array_equal(got[2], cot * first_c)


NORMS = {   # op, opset, γ/β shape, attributes; x is [2, 6, 3, 4]
    "layer_norm_last_axis": ("LayerNormalization", 17, [4], {"epsilon": 1e-3}),
    "layer_norm_axis1": ("LayerNormalization", 17, [6, 1, 4], {"axis": 1}),
    "instance_norm": ("InstanceNormalization", 17, [6], {"epsilon": 1e-3}),
    "group_norm_21": ("GroupNormalization", 21, [6], {"num_groups": 3, "epsilon": 1e-3}),
    "group_norm_18": ("GroupNormalization", 18, [3], {"num_groups": 3}),   # γ, β per group
}


@pytest.mark.parametrize("case", sorted(NORMS))
def test_norm_rules_with_parameters_match_finite_differences(case):
    """The normalization rules alone, gradients to x, γ and β, against finite differences of
    Σ c⊙y in float64 (c a random cotangent). Run on the rule directly, with y's type and shape
    declared (ONNX shape inference gives GroupNormalization's output no type; canonicalisation
    types it like its input)."""
    from onnx import helper, numpy_helper

    op, opset, pshape, attrs = NORMS[case]
    rng = np.random.default_rng(3)
    x = rng.standard_normal([2, 6, 3, 4]) * 0.01 + 0.5   # variance ~1e-4: ε (1e-5, 1e-3) matters
    params = {"gamma": rng.standard_normal(pshape) + 1, "beta": rng.standard_normal(pshape)}
    cot = rng.standard_normal(x.shape)

    def model(dtype, **changed):
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        # GroupNormalization-21 computes its statistics in stash_type (float32 by default)
        stash = {"stash_type": elem} if opset >= 21 else {}
        graph = helper.make_graph(
            [helper.make_node(op, ["x", "gamma", "beta"], ["y"], **attrs, **stash)], case,
            [helper.make_tensor_value_info("x", elem, x.shape),
             helper.make_tensor_value_info("cot", elem, x.shape)],
            [helper.make_tensor_value_info("y", elem, x.shape)],
            [numpy_helper.from_array(v.astype(dtype), k) for k, v in {**params, **changed}.items()])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])

    def f(z, **changed):   # Σ cot⊙y in float64
        y = ReferenceEvaluator(model(np.float64, **changed)).run(None, {"x": z, "cot": cot})[0]
        return float((y * cot).sum())

    wrt = ["x", "gamma", "beta"]
    grads = _rule_signals(model(np.float32), "y", wrt, {"x": x, "cot": cot})
    h = 1e-6
    for t, grad in zip(wrt, grads):
        base = x if t == "x" else params[t]
        assert grad.shape == base.shape, (t, grad.shape)
        for _ in range(3):
            v = rng.standard_normal(base.shape)
            if t == "x":
                fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
            else:
                fd = (f(x, **{t: base + h * v}) - f(x, **{t: base - h * v})) / (2 * h)
            analytic = float((grad.astype(np.float64) * v).sum())
            scale = np.linalg.norm(grad) * np.linalg.norm(v)
            assert abs(fd - analytic) <= 1e-4 * scale, (case, t, fd, analytic)
