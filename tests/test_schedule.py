"""schedule.py on small hand-built graphs: `interleave_early` moves a backward node next to the
forward node it waits for, keeping a valid order and the same nodes; `copy_fused_sum_operands`
copies a residual Add's skip tensor exactly when a backward node reads it after the seed."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_saliency.graph import GraphIndex
from onnx_saliency.schedule import copy_fused_sum_operands, interleave_early

TARGET = "target"   # made by nothing in these graphs, like the explainer's target input


def _forward(channels: int = 16) -> onnx.ModelProto:
    """x → Relu → s; s → Conv 1×1 → c; y = Add(c, s) (a residual block); out = Neg(y)."""
    weight = numpy_helper.from_array(np.ones((channels, channels, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Relu", ["x"], ["s"], name="relu"),
             helper.make_node("Conv", ["s", "w"], ["c"], name="conv"),
             helper.make_node("Add", ["c", "s"], ["y"], name="add"),
             helper.make_node("Neg", ["y"], ["out"], name="neg")]
    graph = helper.make_graph(
        nodes, "forward",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", channels, 4, 4])],
        [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def _node(op: str, inputs: list[str], output: str) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [output], name=output)


def _names(nodes) -> list[str]:
    return [n.name for n in nodes]


def _assert_topological(graph: onnx.GraphProto, nodes) -> None:
    made = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {TARGET, ""}
    for node in nodes:
        assert set(node.input) <= made, f"{node.name} reads {set(node.input) - made} too early"
        made.update(node.output)


# --- interleave_early --------------------------------------------------------------------------

def test_backward_node_goes_right_after_the_forward_node_it_reads():
    graph = _forward().graph
    mask = _node("Sign", ["s"], "mask")               # reads a forward tensor only
    late = _node("Mul", [TARGET, "mask"], "late")     # waits on the target: stays at the end
    merged = interleave_early(graph, [mask, late])
    assert _names(merged) == ["relu", "mask", "conv", "add", "neg", "late"]
    _assert_topological(graph, merged)


def test_a_node_waits_for_the_last_of_its_inputs_and_added_order_is_kept():
    graph = _forward().graph
    both = _node("Mul", ["s", "c"], "both")           # after conv, not after relu
    first = _node("Sign", ["s"], "first")
    second = _node("Abs", ["s"], "second")
    chained = _node("Neg", ["first"], "chained")     # after `first`, among the added
    merged = interleave_early(graph, [both, first, second, chained])
    assert _names(merged) == ["relu", "first", "second", "chained", "conv", "both", "add", "neg"]
    _assert_topological(graph, merged)


def test_nodes_that_read_only_inputs_and_constants_go_first():
    graph = _forward().graph
    scaled = _node("Mul", ["x", "w"], "scaled")
    merged = interleave_early(graph, [scaled])
    assert _names(merged)[0] == "scaled"


def test_interleaving_keeps_the_same_nodes():
    graph = _forward().graph
    added = [_node("Sign", ["y"], "a"), _node("Mul", [TARGET, "a"], "b"),
             _node("Abs", ["c"], "d"), _node("Sum", ["b", "d", "s"], "e")]
    merged = interleave_early(graph, added)
    assert sorted(n.SerializeToString() for n in merged) == sorted(
        n.SerializeToString() for n in [*graph.node, *added])
    _assert_topological(graph, merged)


# --- copy_fused_sum_operands -----------------------------------------------------------------

def _copy(model: onnx.ModelProto, added: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    return copy_fused_sum_operands(model.graph, added, GraphIndex(model))


def test_skip_tensor_read_after_the_seed_is_copied_for_the_add():
    model = _forward()
    late = _node("Mul", [TARGET, "s"], "late")     # Σ ĝ ⊙ s: s read after the seed
    nodes = _copy(model, [late])
    assert [n.op_type for n in nodes] == ["MaxPool", "Mul"]
    copy = nodes[0]
    assert list(copy.input) == ["s"] and list(copy.attribute[0].ints) == [1, 1]
    add = next(n for n in model.graph.node if n.name == "add")
    assert list(add.input) == ["c", copy.output[0]]           # the Add takes the copy
    assert list(late.input) == [TARGET, "s"]                   # the late reader keeps s
    merged = interleave_early(model.graph, nodes)
    _assert_topological(model.graph, merged)
    assert _names(merged)[:2] == ["relu", copy.name]          # copied while s is fresh


def test_skip_operand_is_found_on_either_side_of_the_add():
    model = _forward()
    add = next(n for n in model.graph.node if n.name == "add")
    add.input[:] = ["s", "c"]
    nodes = _copy(model, [_node("Mul", [TARGET, "s"], "late")])
    assert list(add.input) == [nodes[0].output[0], "c"]


def _unchanged(model: onnx.ModelProto, added: list[onnx.NodeProto]) -> None:
    before = [n.SerializeToString() for n in model.graph.node]
    assert _copy(model, added) == added
    assert [n.SerializeToString() for n in model.graph.node] == before


def test_skip_tensor_read_only_beside_the_forward_pass_is_not_copied():
    _unchanged(_forward(), [_node("Sign", ["s"], "mask")])   # interleave_early moves it early


def test_no_copy_when_no_backward_node_reads_the_skip_tensor():
    _unchanged(_forward(), [_node("Mul", [TARGET, "y"], "late")])


def test_no_copy_when_the_conv_output_has_another_reader():
    # the Conv then does not fuse into the Add: nothing to keep in place
    _unchanged(_forward(), [_node("Mul", [TARGET, "s"], "late"), _node("Sign", ["c"], "peek")])


def test_no_copy_outside_the_blocked_layout():
    _unchanged(_forward(channels=8), [_node("Mul", [TARGET, "s"], "late")])
