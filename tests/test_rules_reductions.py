"""Reduce rules where finite differences cannot look: exact ties and noop_with_empty_axes.

ReduceMax/ReduceMin split the signal evenly among tied extremes (PyTorch's amax/amin); with
noop_with_empty_axes and no axes ONNX Runtime applies each reduction's element-wise part alone
(x², |x|, …), whose derivative the rule gives. References: NumPy formulas, exact in float32
(tolerance 1e-6 for rounding of x/|x| and 2x).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_saliency.backward.rules import GRADIENT
from onnx_saliency.backward.walk import backward
from onnx_saliency.graph import GraphBuilder, GraphIndex


def _signal(nodes, x, y_shape, inits=(), opset=18):
    graph = helper.make_graph(
        nodes, "reduce", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape),
                          helper.make_tensor_value_info("cot", TensorProto.FLOAT, y_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    index = GraphIndex(model)
    b = GraphBuilder(index)
    dx = backward(b, index, GRADIENT, {"y": "cot"}, ["x"])["x"]
    model.graph.node.extend(b.nodes)
    model.graph.initializer.extend(b.initializers)
    model.graph.output.append(helper.make_tensor_value_info(dx, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    cot = np.arange(1, 1 + int(np.prod(y_shape)), dtype=np.float32).reshape(y_shape)
    y, grad = sess.run(None, {"x": x, "cot": cot})
    return y, grad, cot


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_ties_split_evenly(op, keepdims):
    x = np.array([[[3.0, 1.0, 3.0, -2.0], [0.5, 0.5, 0.5, 0.5], [-2.0, 4.0, -2.0, 1.0]]],
                 np.float32)                                                     # [1, 3, 4]
    y_shape = [1, 3, 1] if keepdims else [1, 3]
    node = helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims)
    _, grad, cot = _signal([node], x, y_shape, [numpy_helper.from_array(np.array([-1]), "axes")])
    pick = x.max(-1, keepdims=True) if op == "ReduceMax" else x.min(-1, keepdims=True)
    hit = (x == pick).astype(np.float32)
    expected = hit / hit.sum(-1, keepdims=True) * cot.reshape(1, 3, 1)
    np.testing.assert_array_equal(grad, expected)


DERIVATIVES = {   # d(element-wise part)/dx, the gradient with no axes reduced
    "ReduceSum": lambda x: np.ones_like(x), "ReduceMean": lambda x: np.ones_like(x),
    "ReduceMax": lambda x: np.ones_like(x), "ReduceMin": lambda x: np.ones_like(x),
    "ReduceProd": lambda x: np.ones_like(x), "ReduceLogSumExp": lambda x: np.ones_like(x),
    "ReduceSumSquare": lambda x: 2 * x, "ReduceL1": np.sign, "ReduceL2": np.sign,
}


@pytest.mark.parametrize("op", sorted(DERIVATIVES))
def test_noop_with_empty_axes(op):
    x = np.array([[-1.5, 2.0, 0.0], [4.0, -0.25, 3.0]], np.float32)
    node = helper.make_node(op, ["x", "axes"], ["y"], noop_with_empty_axes=1)
    y, grad, cot = _signal([node], x, [2, 3], [numpy_helper.from_array(np.zeros(0, np.int64), "axes")])
    assert y.shape == x.shape   # ORT reduced nothing
    np.testing.assert_allclose(grad, DERIVATIVES[op](x) * cot, rtol=1e-6, atol=0)
