"""canonical.py pass by pass, on small hand-built models: what each pass requires and ensures,
and the postcondition check catching a model that is not canonical."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_saliency import ModelLoadError, canonical
from onnx_saliency.canonical import Canonicalization, canonicalize


def _model(nodes, initializers=(), inputs=None, outputs=None, opset=17) -> onnx.ModelProto:
    """A graph over x [N,3,4,4] → … → logits [N,5] unless told otherwise."""
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])]
    outputs = outputs or [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])]
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v, np.float32), k)
                               if not isinstance(v, onnx.TensorProto) else v
                               for k, v in dict(initializers).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _classifier(**kwargs) -> onnx.ModelProto:
    """x → GlobalAveragePool → Flatten → Gemm → logits."""
    rng = np.random.default_rng(0)
    return _model([helper.make_node("GlobalAveragePool", ["x"], ["pooled"], name="pool"),
                   helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
                   helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], name="fc", transB=1)],
                  {"w": rng.standard_normal((5, 3)), "b": np.zeros(5)}, **kwargs)


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


# --- the passes --------------------------------------------------------------------------------

def test_name_nodes_makes_every_name_unique_and_keeps_unique_ones():
    model = _classifier()
    pool, flatten, fc = model.graph.node
    pool.name, flatten.name, fc.name = "Flatten_1", "", "Flatten_1"   # '' would become Flatten_1
    state = Canonicalization(model)
    canonical.name_nodes(state)
    names = [n.name for n in state.model.graph.node]
    assert names[0] == "Flatten_1" and all(names) and len(set(names)) == 3


def test_choose_output_keeps_the_logits_of_a_probabilities_and_logits_export():
    model = _classifier()
    model.graph.node.append(helper.make_node("Softmax", ["logits"], ["probs"], name="softmax"))
    model.graph.output.insert(0, helper.make_tensor_value_info("probs", TensorProto.FLOAT,
                                                               ["N", 5]))
    state = Canonicalization(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                    # the logits themselves: no bypass
        canonical.choose_output(state)
    assert [o.name for o in state.model.graph.output] == ["logits"]
    assert (state.original_output, state.output_name) == ("logits", "logits")
    assert "Softmax" not in _ops(state.model)            # only what the output needs is left


def test_choose_output_bypasses_a_trailing_softmax_with_a_warning():
    model = _classifier(outputs=[helper.make_tensor_value_info("probs", TensorProto.FLOAT,
                                                               ["N", 5])])
    model.graph.node.append(helper.make_node("Softmax", ["logits"], ["probs"], name="softmax"))
    state = Canonicalization(model)
    with pytest.warns(UserWarning, match="'probs' is the Softmax of 'logits'"):
        canonical.choose_output(state)
    assert [o.name for o in state.model.graph.output] == ["logits"]
    assert (state.original_output, state.output_name) == ("probs", "logits")
    assert _ops(state.model) == ["GlobalAveragePool", "Flatten", "Gemm"]


def test_choose_output_refuses_an_output_the_model_does_not_have():
    with pytest.raises(ModelLoadError, match=r"output='scores' is neither an output of the model "
                                             r"nor a tensor a node makes; its outputs are "
                                             r"'logits' \[N,5\]"):
        canonical.choose_output(Canonicalization(_classifier(), output="scores"))


def test_remove_dead_code_keeps_what_the_outputs_need_in_order():
    model = _classifier()
    model.graph.node.insert(1, helper.make_node("Relu", ["pooled"], ["unused"], name="dead"))
    model.graph.initializer.append(numpy_helper.from_array(np.ones(2, np.float32), "spare"))
    canonical.remove_dead_code(model)
    assert [n.name for n in model.graph.node] == ["pool", "flatten", "fc"]
    assert sorted(t.name for t in model.graph.initializer) == ["b", "w"]


def test_check_runtime_loads_refuses_an_opset_out_of_range():
    with pytest.raises(ModelLoadError, match="opset 24; onnx-saliency supports opsets 7 to 23"):
        canonical.check_runtime_loads(Canonicalization(_classifier(opset=24)))


def test_convert_opset_converts_old_models_and_leaves_new_ones():
    state = Canonicalization(_classifier(opset=13))
    canonical.convert_opset(state)
    assert canonical.opset_version(state.model) == canonical.CONVERT_TO
    model = _classifier(opset=16)
    state = Canonicalization(model)
    canonical.convert_opset(state)
    assert state.model is model and canonical.opset_version(model) == 16


def test_constants_to_initializers_leaves_no_constant_node():
    model = _classifier()
    bias = numpy_helper.from_array(np.arange(5, dtype=np.float32), "bias")
    model.graph.node.insert(0, helper.make_node("Constant", [], ["bias"], name="c", value=bias))
    model.graph.node[-1].input[2] = "bias"
    state = Canonicalization(model)
    canonical.constants_to_initializers(state)
    assert "Constant" not in _ops(state.model)
    values = {t.name: numpy_helper.to_array(t) for t in state.model.graph.initializer}
    np.testing.assert_array_equal(values["bias"], np.arange(5))


def test_find_image_input_records_the_one_image_and_refuses_two_inputs():
    state = Canonicalization(_classifier())
    canonical.find_image_input(state)
    assert state.input_name == "x"
    two = _classifier(inputs=[helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3, 4, 4])
                              for n in ("x", "y")])
    with pytest.raises(ModelLoadError, match=r"2 runtime inputs \(x, y\)"):
        canonical.find_image_input(Canonicalization(two))


def test_channels_first_input_puts_a_transpose_in_front_of_an_nhwc_model():
    nhwc = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 3])
    state = Canonicalization(_classifier(inputs=[nhwc]), layout="NHWC", input_name="x")
    canonical.channels_first_input(state)
    dims = state.model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, 4, 6]
    first = state.model.graph.node[0]
    assert (first.op_type, list(first.input), list(first.attribute[0].ints)) == (
        "Transpose", ["x"], [0, 2, 3, 1])
    assert state.model.graph.node[1].input[0] == first.output[0]
    nchw = Canonicalization(_classifier(), input_name="x")
    canonical.channels_first_input(nchw)
    assert _ops(nchw.model) == ["GlobalAveragePool", "Flatten", "Gemm"]


def _fixed(shape: list[int]) -> onnx.ModelProto:
    """x [1,3,4,4] → Reshape(shape) → Gemm → logits [1,5], batch fixed to 1."""
    w = np.random.default_rng(1).standard_normal((5, shape[-1]))
    return _model([helper.make_node("Reshape", ["x", "shape"], ["flat"], name="reshape"),
                   helper.make_node("Gemm", ["flat", "w"], ["logits"], name="fc", transB=1)],
                  {"w": w, "shape": numpy_helper.from_array(np.array(shape, np.int64), "shape")},
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])])


def test_make_batch_dynamic_frees_a_fixed_batch_and_its_reshape_shapes():
    state = Canonicalization(_fixed([1, 48]), input_name="x")
    canonical.make_batch_dynamic(state)
    assert state.fixed_batch is None
    graph = state.model.graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == canonical.BATCH
    assert graph.output[0].type.tensor_type.shape.dim[0].dim_param == canonical.BATCH
    shape = next(t for t in graph.initializer if t.name == "shape")
    assert numpy_helper.to_array(shape).tolist() == [0, 48]
    assert {v.name for v in graph.value_info} == {"flat"}   # shapes inferred again


def test_make_batch_dynamic_keeps_a_batch_the_graph_fixes_with_a_warning():
    state = Canonicalization(_fixed([3, 16]), input_name="x")   # Reshape to [3,16]: batch 1 only
    with pytest.warns(UserWarning, match="fixed to batch 1 and could not be made dynamic"):
        canonical.make_batch_dynamic(state)
    assert state.fixed_batch == 1
    assert state.model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


def test_fold_constants_evaluates_constant_nodes_and_keeps_random_ops():
    model = _classifier()
    model.graph.node[-1].input[2] = "b3"     # the Gemm's bias: b + b + noise
    for node in reversed([helper.make_node("Add", ["b", "b"], ["b2"], name="double"),
                          helper.make_node("RandomNormal", [], ["noise"], name="noise", shape=[5]),
                          helper.make_node("Add", ["b2", "noise"], ["b3"], name="noisy")]):
        model.graph.node.insert(0, node)
    state = Canonicalization(model)
    canonical.fold_constants(state)
    assert [n.name for n in state.model.graph.node] == ["noise", "noisy", "pool", "flatten", "fc"]
    values = {t.name: numpy_helper.to_array(t) for t in state.model.graph.initializer}
    assert "b" not in values                                 # only the folded sum is needed
    np.testing.assert_array_equal(values["b2"], np.zeros(5))
    assert {v.name for v in state.model.graph.value_info} >= {"pooled", "flat"}


def _padded_conv_model(pad_node, *extra_inits, opset=17, readers=1, conv_pads=(1, 1, 1, 1),
                       auto_pad=None) -> onnx.ModelProto:
    """x [N,3,6,7] → pad_node (→ "p") → Conv 3×3 stride 2 (+ a second Conv reading p when
    readers = 2) → GlobalAveragePool → Flatten → Gemm → logits [N,5]."""
    rng = np.random.default_rng(1)
    conv_attrs = {"strides": [2, 2]}
    conv_attrs.update({"auto_pad": auto_pad} if auto_pad else {"pads": list(conv_pads)})
    nodes = [pad_node, helper.make_node("Conv", ["p", "w"], ["c"], name="conv", **conv_attrs)]
    summed = "c"
    if readers == 2:
        nodes += [helper.make_node("Conv", ["p", "w"], ["c2"], name="conv2", **conv_attrs),
                  helper.make_node("Add", ["c", "c2"], ["c3"], name="both")]
        summed = "c3"
    nodes += [helper.make_node("GlobalAveragePool", [summed], ["pooled"], name="pool"),
              helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fw"], ["logits"], name="fc", transB=1)]
    inits = {"w": rng.standard_normal((4, 3, 3, 3)), "fw": rng.standard_normal((5, 4))}
    inits.update(dict(extra_inits))
    return _model(nodes, inits, inputs=[helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 3, 6, 7])], opset=opset)


def _ints(name, values):
    return name, numpy_helper.from_array(np.asarray(values, np.int64), name)


@pytest.mark.parametrize("case, folded", [
    ("zeros", True), ("zeros, opset 18 axes", True), ("zero value given", True),
    ("auto_pad VALID", True), ("value 1", False), ("reflect", False), ("pads C", False),
    ("crops", False), ("two readers", False), ("auto_pad SAME_UPPER", False)])
def test_fold_zero_pads_moves_a_convs_zero_padding_into_its_pads(case, folded):
    """A zero-filling Pad of H, W read only by a Conv disappears into the Conv's pads (added to
    its own, asymmetric ones included), and the conv's output keeps the batch symbol (ONNX
    infers a Pad's N + 0 as a new one); any other Pad stays. Either way the gradient equals the
    original file's, by central differences through ONNX Runtime (the model is affine in x, so
    ε = 1 is exact up to float32 rounding of the logits: 1e-4 relative). A reflecting Pad has no
    backward rule: the explainer refuses it, as before."""
    import onnxruntime as ort
    import onnx_saliency as osal
    spatial = [0, 0, 1, 2, 0, 0, 2, 1]            # N, C, H, W begins, then ends
    pad, inits, opset, extra = "pad", [_ints("pads", spatial)], 17, {}
    if case == "zeros, opset 18 axes":
        inits, opset = [_ints("pads", [1, 2, 2, 1]), _ints("axes", [2, 3])], 18
    if case == "zero value given":
        inits.append(("zero", numpy_helper.from_array(np.float32(0.0), "zero")))
    if case == "value 1":
        inits.append(("zero", numpy_helper.from_array(np.float32(1.0), "zero")))
    if case == "pads C":
        inits = [_ints("pads", [0, 1, 1, 2, 0, 0, 2, 1])]
    if case == "crops":
        inits = [_ints("pads", [0, 0, 1, -1, 0, 0, 2, 1])]
    names = ["x", "pads"] + (["zero"] if case in ("zero value given", "value 1") else []) \
        + (["", "axes"] if case == "zeros, opset 18 axes" else [])
    attrs = {"mode": "reflect"} if case == "reflect" else {}
    node = helper.make_node("Pad", names, ["p"], name=pad, **attrs)
    auto = {"auto_pad VALID": "VALID", "auto_pad SAME_UPPER": "SAME_UPPER"}.get(case)
    model = _padded_conv_model(node, *inits, opset=opset, readers=2 if case == "two readers" else 1,
                               auto_pad=auto)
    if case == "pads C":       # the conv then reads 4 channels
        model.graph.initializer[0].CopyFrom(numpy_helper.from_array(
            np.random.default_rng(2).standard_normal((4, 4, 3, 3)).astype(np.float32), "w"))
    canon = canonicalize(model)
    assert ("Pad" not in _ops(canon.model)) == folded
    if folded:
        conv = next(n for n in canon.model.graph.node if n.op_type == "Conv")
        pads = helper.get_attribute_value(next(a for a in conv.attribute if a.name == "pads"))
        assert pads == ([1 + 1, 1 + 2, 1 + 2, 1 + 1] if not auto else [1, 2, 2, 1])
        shapes = {v.name: v.type.tensor_type.shape.dim for v in canon.model.graph.value_info}
        assert shapes["c"][0].dim_param == "N"   # the batch symbol, not the Pad's unk__k
    x = np.random.default_rng(3).standard_normal((1, 3, 6, 7)).astype(np.float32)
    if case == "reflect":
        with pytest.raises(osal.UnsupportedOpError, match="mode 'reflect'"):
            osal.gradient(model, x, target=2)
        return
    got = osal.gradient(model, x, target=2)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = np.zeros(x.size)
    for i in range(x.size):
        step = np.zeros(x.size, np.float32)
        step[i] = 1.0
        up, down = (session.run(None, {"x": x + d.reshape(x.shape)})[0][0, 2] for d in (step, -step))
        want[i] = (up - down) / 2.0
    np.testing.assert_allclose(got.reshape(-1), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_a_folded_pad_named_as_a_layer_says_where_its_values_went():
    """The output of a Pad folded into its Conv, by tensor name or by the exporter's module
    path, is refused with the fold and the names to use instead; those names work."""
    import onnx_saliency as osal
    node = helper.make_node("Pad", ["x", "pads"], ["p"], name="/stem/static_padding/Pad")
    model = _padded_conv_model(node, _ints("pads", [0, 0, 1, 2, 0, 0, 2, 1]))
    assert "Pad" not in _ops(canonicalize(model).model)
    for layer in ("p", "stem.static_padding"):
        with pytest.raises(osal.LayerNotFoundError) as refused:
            osal.Explainer(model, methods=["gradcam"], layers=[layer])
        assert str(refused.value) == (
            f"Layer '{layer}' is the output of Pad '/stem/static_padding/Pad', which was folded "
            "into the pads of Conv 'conv' (a zero pad read only by a conv): name its input 'x' "
            "(the same values unpadded) or the Conv's output 'c'.")
    x = np.random.default_rng(0).standard_normal((1, 3, 6, 7)).astype(np.float32)
    maps = osal.Explainer(model, methods=["gradcam"], layers=["x", "c"]).explain(x, 1)
    assert sorted(maps) == ["gradcam@c", "gradcam@x"]
    with pytest.raises(osal.LayerNotFoundError, match="neither a module path nor a tensor"):
        osal.Explainer(model, methods=["gradcam"], layers=["stem.padding"])


# --- the postcondition -------------------------------------------------------------------------

def _canonical_state() -> Canonicalization:
    canon = canonicalize(_classifier())
    return Canonicalization(canon.model, input_name=canon.input_name,
                            output_name=canon.output_name, original_output=canon.original_output)


def test_canonicalize_leaves_a_canonical_model():
    state = _canonical_state()
    assert canonical.not_canonical(state) is None
    assert [n.name for n in state.model.graph.node] == ["pool", "flatten", "fc"]


def _constant_node(model):
    model.graph.node.insert(0, helper.make_node("Constant", [], ["k"], name="k", value_float=1.0))


def _twin_names(model):
    model.graph.node[1].name = model.graph.node[0].name


def _unsorted(model):
    model.graph.node.reverse()


def _second_output(model):
    model.graph.output.append(helper.make_tensor_value_info("pooled", TensorProto.FLOAT, None))


def _dead_node(model):
    model.graph.node.append(helper.make_node("Relu", ["pooled"], ["r"], name="dead"))


def _fixed_input(model):
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = 2


def _stale_value_info(model):
    model.graph.value_info.append(helper.make_tensor_value_info("gone", TensorProto.FLOAT, None))


def _old_opset(model):
    model.opset_import[0].version = 13


@pytest.mark.parametrize("violate,problem", [
    (_constant_node, "Constant node 'k'"),
    (_twin_names, "two nodes with one name"),
    (_unsorted, "node 'fc' before the node that makes its input 'flat'"),
    (_second_output, "outputs ['logits', 'pooled']"),
    (_dead_node, "node 'dead', which the output does not need"),
    (_fixed_input, "dim 0 is not the batch 'N'"),
    (_stale_value_info, "value_info for 'gone'"),
    (_old_opset, "opset 13"),
])
def test_postcondition_check_catches_a_model_that_is_not_canonical(violate, problem):
    state = _canonical_state()
    violate(state.model)
    assert problem in canonical.not_canonical(state)
    with pytest.raises(canonical.NotCanonicalError, match="a bug in onnx-saliency"):
        canonical.check_canonical(state)
