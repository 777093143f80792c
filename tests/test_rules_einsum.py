"""Einsum refusals (the gradient forms are checked by the `einsum` fixture's finite
differences): a diagonal and an ellipsis broadcast between operands each get one sentence."""

from __future__ import annotations

import pytest
from onnx import TensorProto, helper

from onnx_saliency.backward.rules import GRADIENT
from onnx_saliency.backward.rules.einsum import parse
from onnx_saliency.backward.walk import backward
from onnx_saliency.errors import UnsupportedOpError
from onnx_saliency.graph import GraphBuilder, GraphIndex


def test_implicit_output_and_ellipsis_parse():
    assert parse("bqd,de") == (["bqd", "de"], "beq")
    assert parse("...qd, ...kd") == ([".qd", ".kd"], ".kq")
    assert parse("bhqd,bhkd->bhqk") == (["bhqd", "bhkd"], "bhqk")


@pytest.mark.parametrize("equation, shapes, why", [
    ("ii->i", [[3, 3]], r"takes a diagonal \(equation 'ii->i'"),
    ("...ij,...jk->...ik", [[2, 3, 4], [1, 4, 5]], r"broadcasts along the ellipsis"),
])
def test_refusals(equation, shapes, why):
    inputs = [f"a{i}" for i in range(len(shapes))]
    graph = helper.make_graph(
        [helper.make_node("Einsum", inputs, ["y"], name="ein", equation=equation)], "einsum",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in zip(inputs, shapes)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    index = GraphIndex(model)
    with pytest.raises(UnsupportedOpError, match=r"Node 'ein' \(op Einsum, opset 17\) " + why):
        backward(GraphBuilder(index), index, GRADIENT, {"y": "cot"}, inputs)
