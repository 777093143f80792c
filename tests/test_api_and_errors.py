"""Public API behaviour: batches, targets, saved graphs, and one clear error per bad input."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_saliency as osal
from conftest import make_graphs


@pytest.fixture(scope="module")
def small_model():
    return make_graphs.build("maxpool_overlap")


def _images(n=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


def test_batch_targets_are_per_image(small_model):
    ex = osal.Explainer(small_model, methods=["gradient_sum"])
    x = _images(3)
    batch = ex.explain(x, target=[0, 4, 2])["gradient_sum"]
    for i, t in enumerate([0, 4, 2]):
        single = ex.explain(x[i:i + 1], target=t)["gradient_sum"]
        np.testing.assert_allclose(batch[i], single[0], rtol=1e-5, atol=1e-7)
    assert not np.allclose(batch[0], ex.explain(x[:1], target=4)["gradient_sum"][0])


def test_target_none_is_top1(small_model):
    ex = osal.Explainer(small_model, methods=["gradient"])
    x = _images(2)
    out = ex.run(x)
    top1 = out["logits"].argmax(1)
    np.testing.assert_allclose(out["gradient"], ex.explain(x, target=top1)["gradient"])


def test_saved_graph_runs_in_a_bare_session(small_model, tmp_path):
    ex = osal.Explainer(small_model, methods=["gradient", "input_x_gradient",
                                              osal.methods.GradCAM(relu=False)])
    path = tmp_path / "explainer.onnx"
    ex.save(path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x", "target"]
    assert [o.name for o in sess.get_outputs()] == ["logits"] + ex.map_names + ["finite"]
    x = _images(2)
    outs = sess.run(None, {"x": x, "target": np.array([1, 2])})
    maps = ex.explain(x, target=[1, 2])
    for name, value in zip(ex.map_names, outs[1:]):
        np.testing.assert_array_equal(value, maps[name])
        assert value.shape == (2, 8, 8) and value.dtype == np.float32


def test_methods_share_one_forward_and_common_backward(small_model):
    one = osal.Explainer(small_model, methods=["gradient"]).model
    two = osal.Explainer(small_model, methods=["gradient", "gradient_sum", "input_x_gradient"]).model
    # backward convs that carry the signal (not the ReLU masks, which read forward tensors)
    convs = lambda m: sum(n.op_type in ("Conv", "ConvTranspose") and n.name.startswith("osal/")  # noqa: E731
                          and n.input[0].startswith("osal/") for n in m.graph.node)
    fwd = lambda m: sum(n.op_type == "Conv" and not n.name.startswith("osal/") for n in m.graph.node)  # noqa: E731
    assert convs(one) == convs(two) == 1 and fwd(one) == fwd(two) == 1
    guided = osal.Explainer(small_model, methods=["gradient", "guided_backprop"]).model
    # they share the classifier's backward (Gemm) and split at the ReLU
    assert sum(n.op_type == "Gemm" and n.name.startswith("osal/") for n in guided.graph.node) == 1
    assert convs(guided) == 2


def test_fixed_batch_model_explains_a_batch(tmp_path):
    model = make_graphs.build("reshape_family")   # Reshape shapes use 0, batch fixed at 2
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    ex = osal.Explainer(model, methods=["gradient"])
    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    maps = ex.explain(x, target=1)["gradient"]
    assert maps.shape == (5, 8, 8)
    np.testing.assert_allclose(maps[4], ex.explain(x[4:], target=1)["gradient"][0], rtol=1e-5)


def test_meta_refuses_a_model_stuck_at_a_batch_above_one():
    """Meta-saliency steps the weights once per image; a model whose batch cannot be made
    dynamic (here a batch-shaped constant) and is not 1 is refused with one sentence."""
    model = make_graphs.build("maxpool_overlap")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 3
    pin = onnx.numpy_helper.from_array(np.zeros((3, 3, 8, 8), np.float32), "pin")
    model.graph.initializer.append(pin)
    for node in model.graph.node:
        node.input[:] = ["x/pinned" if i == "x" else i for i in node.input]
    model.graph.node.insert(0, onnx.helper.make_node("Add", ["x", "pin"], ["x/pinned"]))
    with pytest.warns(UserWarning, match="fixed to batch 3"):
        ex = osal.Explainer(model, methods=["gradient"])
    assert ex.explain(_images(4), target=0)["gradient"].shape == (4, 8, 8)
    with pytest.warns(UserWarning), pytest.raises(osal.ModelError, match="fixed to batch 3"):
        osal.Explainer(model, methods=["gradient"], meta=True)


def test_fixed_batch_reshape_is_made_dynamic():
    model = make_graphs.build("gemm_trans")       # Reshape to [2, 2, 2, 2] with batch 2
    ex = osal.Explainer(model, methods=["gradient"])
    assert ex.canonical.fixed_batch is None
    assert ex.explain(np.zeros((3, 3, 8, 8), np.float32), target=0)["gradient"].shape == (3, 8, 8)


def test_softmax_output_is_bypassed_with_a_warning(small_model):
    model = onnx.ModelProto()
    model.CopyFrom(small_model)
    model.graph.output[0].name = "probs"
    model.graph.node.append(onnx.helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
    with pytest.warns(UserWarning, match="Softmax"):
        ex = osal.Explainer(model, methods=["gradient_sum"])
    ref = osal.Explainer(small_model, methods=["gradient_sum"])
    x = _images(2)
    np.testing.assert_allclose(ex.explain(x, 1)["gradient_sum"], ref.explain(x, 1)["gradient_sum"])


# --- bad input: one clear sentence, the package's own exception types -------------------

def test_truncated_file(tmp_path, small_model):
    path = tmp_path / "cut.onnx"
    path.write_bytes(small_model.SerializeToString()[:200])
    with pytest.raises(osal.ModelLoadError, match="truncated or not ONNX|not an ONNX|not valid"):
        osal.Explainer(path)


def test_not_onnx(tmp_path):
    path = tmp_path / "x.onnx"
    path.write_text("hello, I am not a model")
    with pytest.raises(osal.ModelLoadError):
        osal.Explainer(path)
    with pytest.raises(osal.ModelLoadError, match="does not exist"):
        osal.Explainer(tmp_path / "missing.onnx")


def test_unsupported_op_names_node_and_op(small_model):
    model = onnx.ModelProto()
    model.CopyFrom(small_model)
    node = next(n for n in model.graph.node if n.op_type == "Relu")
    node.op_type, node.name = "Hardmax", "my_hardmax"
    with pytest.raises(osal.UnsupportedOpError, match=r"Node 'my_hardmax' \(op Hardmax, domain ai.onnx, opset 17\)"):
        osal.Explainer(model)


def test_unknown_layer_and_method(small_model):
    with pytest.raises(osal.LayerNotFoundError, match="Layer 'nope'"):
        osal.Explainer(small_model, methods=["gradcam"], layers=["nope"])
    with pytest.raises(osal.MethodError, match="Unknown method 'magic'"):
        osal.Explainer(small_model, methods=["magic"])


@pytest.mark.parametrize("images,match", [
    (np.zeros((3, 8, 8), np.float32), "rank 3"),
    (np.zeros((1, 3, 8, 8), np.float64), "float32"),
    (np.zeros((1, 4, 8, 8), np.float32), "C = 3"),
    (np.zeros((1, 3, 9, 8), np.float32), "H = 8"),
    (np.full((1, 3, 8, 8), np.nan, np.float32), "NaN or Inf"),
    (np.full((1, 3, 8, 8), np.inf, np.float32), "NaN or Inf"),
    ([[1.0]], "numpy array"),
])
def test_bad_images(small_model, images, match):
    ex = osal.Explainer(small_model)
    with pytest.raises(osal.InputError, match=match):
        ex.explain(images)


@pytest.mark.parametrize("target,match", [(5, r"outside \[0, 5\)"), (-1, "outside"),
                                          ([1, 2, 3], "3 entries for 2 images"), (1.5, "int")])
def test_bad_targets(small_model, target, match):
    ex = osal.Explainer(small_model)
    with pytest.raises(osal.InputError, match=match):
        ex.explain(_images(2), target=target)
