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
the range, the HardSigmoid/HardSwish corners are further still. So both sides make the same
decisions and no FD straddles a kink. (Measure again if the fixtures or their inputs change.)
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

import onnx_saliency as osal
from conftest import make_graphs

NAMES = sorted(make_graphs.FIXTURES)


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
    ref = ReferenceEvaluator(model64)
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
