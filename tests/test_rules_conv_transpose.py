"""ConvTranspose's rule where the reference evaluator cannot serve (it has no groups):
grouped, dilated, strided, with output_padding or an output_shape (ONNX Runtime's pads
convention), gradients to x, W and B. ConvTranspose is linear in x and in W separately, so
central differences with step 1 through ONNX Runtime (float32) are exact up to float32 rounding
of sums of ~50 terms: tolerance 1e-4 relative to |∇|·|v|."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_saliency.backward.rules import GRADIENT
from onnx_saliency.backward.walk import backward
from onnx_saliency.graph import GraphBuilder, GraphIndex

CASES = {
    "grouped_dilated": ({"strides": [2, 2], "pads": [1, 0, 0, 1], "output_padding": [1, 0],
                         "group": 2, "dilations": [1, 2]}, [4, 3, 3, 3]),
    "output_shape_notset": ({"strides": [2, 3], "output_shape": [8, 10]}, [4, 2, 3, 2]),
    "output_shape_upper": ({"strides": [2, 2], "output_shape": [7, 9], "auto_pad": "SAME_UPPER",
                            "group": 4}, [4, 1, 3, 3]),
    "output_shape_longer": ({"strides": [2, 2], "output_shape": [10, 9]}, [4, 2, 3, 3]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_conv_transpose_gradients(case):
    attrs, wshape = CASES[case]
    rng = np.random.default_rng(2)
    x = rng.standard_normal([2, 4, 4, 4]).astype(np.float32)
    params = {"w": rng.standard_normal(wshape).astype(np.float32),
              "b": rng.standard_normal(wshape[1] * attrs.get("group", 1)).astype(np.float32)}

    def model(**fixed):
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)]
        inputs += [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape)
                   for k, v in params.items() if k not in fixed]
        graph = helper.make_graph(
            [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="ct", **attrs)],
            "ct", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(v, k) for k, v in fixed.items()])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    forward = ort.InferenceSession(model().SerializeToString())
    feeds = {"x": x, **params}
    y = forward.run(None, feeds)[0]
    cot = rng.standard_normal(y.shape).astype(np.float32)

    # the rule, on a model whose y has its (ORT) shape declared
    m = model()
    m.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, y.shape))
    m.graph.input.append(helper.make_tensor_value_info("cot", TensorProto.FLOAT, y.shape))
    index = GraphIndex(m)
    b = GraphBuilder(index)
    wrt = ["x", "w", "b"]
    signals = backward(b, index, GRADIENT, {"y": "cot"}, wrt)
    m.graph.node.extend(b.nodes)
    m.graph.initializer.extend(b.initializers)
    m.graph.output.extend(helper.make_tensor_value_info(signals[t], TensorProto.FLOAT, None)
                          for t in wrt)
    got = ort.InferenceSession(m.SerializeToString()).run([signals[t] for t in wrt],
                                                          {**feeds, "cot": cot})

    def f(**changed):
        out = forward.run(None, {**feeds, **changed})[0]
        return float((out.astype(np.float64) * cot).sum())

    for name, grad in zip(wrt, got):
        base = feeds[name]
        assert grad.shape == base.shape, (name, grad.shape)
        v = rng.standard_normal(base.shape).astype(np.float32)
        fd = (f(**{name: base + v}) - f(**{name: base - v})) / 2
        analytic = float((grad.astype(np.float64) * v).sum())
        assert abs(fd - analytic) <= 1e-4 * np.linalg.norm(grad) * np.linalg.norm(v), (name, fd, analytic)
