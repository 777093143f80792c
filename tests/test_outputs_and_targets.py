"""Which output is explained, and what a saved graph answers: several outputs, out-of-range
targets, non-finite maps."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_saliency as osal
from onnx_saliency.errors import InputError, ModelLoadError, NumericError
from onnx_saliency.runtime import run_session

METHODS = ["gradient", "gradcam", "tsgb"]
X = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)


def _maps(model, **kwargs) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return osal.Explainer(model, methods=METHODS, fused=False, **kwargs).run(X, [1, 2])


def _only_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """The same model with one graph output: the reference for explaining that output."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = [o for o in out.graph.output if o.name == name]
    del out.graph.output[:]
    out.graph.output.extend(keep)
    return out


def test_two_unrelated_heads_need_a_choice(graphs):
    model = graphs.with_outputs("two_heads")
    with pytest.raises(ModelLoadError, match=r"2 outputs \('logits' \[2,5\], 'aux' \[2,3\]\); "
                                             r"choose the one to explain with output=NAME"):
        osal.Explainer(model)
    for name, classes in (("logits", 5), ("aux", 3)):
        got = _maps(model, output=name)
        want = _maps(_only_output(model, name))
        assert list(got) == list(want) == ["logits", "gradient", "gradcam@relu13_0", "tsgb"]
        assert got["logits"].shape == (2, classes)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    with pytest.raises(InputError, match=r"target 4 is outside \[0, 3\)"):
        osal.Explainer(model, output="aux").run(X, 4)
    with pytest.raises(ModelLoadError, match="output='probs' is neither an output of the model "
                                             "nor a tensor a node makes; its outputs are 'logits'"):
        osal.Explainer(model, output="probs")


def test_keras_shaped_probabilities_and_logits_explain_the_logits(graphs):
    """A converted Keras classifier: NHWC input, outputs (predictions_softmax, logits)."""
    model = graphs.with_outputs("probs_logits")
    assert [o.name for o in model.graph.output] == ["predictions_softmax", "logits"]
    want = _maps(graphs.build("mini_cnn"))
    for output in (None, "logits", "predictions_softmax"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ex = osal.Explainer(model, methods=METHODS, fused=False, layout="NHWC", output=output)
        got = ex.run(X, [1, 2])
        assert list(got) == list(want) and got["logits"].shape == (2, 5)
        for key in want:   # the two transposes of the channels-last input: last-bit differences
            np.testing.assert_allclose(got[key], want[key], rtol=0,
                                       atol=1e-5 * np.abs(want[key]).max())
        notes = [str(w.message) for w in caught if "Softmax" in str(w.message)]
        if output == "predictions_softmax":   # the bypass names the node, never ''
            assert notes == ["The output 'predictions_softmax' is the Softmax of 'logits' (node "
                             "'Softmax_10'); the saliency seed is put on 'logits' (the logits) "
                             "instead."]
        else:
            assert notes == []


def test_an_integer_output_is_refused(graphs):
    model = graphs.build("mini_cnn")
    model.graph.node.append(onnx.helper.make_node("ArgMax", ["logits"], ["label"], axis=1))
    model.graph.output.append(onnx.helper.make_tensor_value_info("label", onnx.TensorProto.INT64,
                                                                 [2, 1]))
    with pytest.raises(ModelLoadError, match="Output 'label' holds int64 values; saliency needs "
                                             "a float score output"):
        osal.Explainer(model, output="label")


@pytest.fixture(scope="module")
def saved(graphs, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "explainer.onnx"
    ex = osal.Explainer(graphs.build("mini_cnn"), methods=METHODS, fused=False)
    ex.save(path)
    return ex, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("bad", [5, 10**9, 2**63 - 1, -2, -5, -10**9, -2**63])
def test_a_saved_graph_fails_on_a_target_out_of_range(saved, bad):
    ex, session = saved
    with pytest.raises(Exception, match="out of data bounds"):
        session.run(None, {"x": X, "target": np.array([1, bad])})
    with pytest.raises(InputError, match=r"A target is outside \[0, K\) for this model"):
        run_session(session, ["logits"], {"x": X, "target": np.array([bad, 1])})


def test_a_saved_graph_answers_valid_targets_and_top1(saved):
    ex, session = saved
    names = [o.name for o in session.get_outputs()]
    assert names == ["logits", *ex.map_names, "finite"]
    out = dict(zip(names, session.run(None, {"x": X, "target": np.array([-1, 4])})))
    top1 = int(out["logits"][0].argmax())
    want = ex.explain(X, [top1, 4])
    for key, value in want.items():
        np.testing.assert_array_equal(out[key], value)
    assert out["finite"].tolist() == [True, True]


def test_overflow_inside_the_model_is_reported(saved):
    """Finite inputs of 3e38 overflow float32 inside: the graph flags the image, explain raises."""
    ex, session = saved
    x = X.copy()
    x[0] = 3e38
    out = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {"x": x, "target": np.array([1, 2])})))
    assert out["finite"].tolist() == [False, True]
    with pytest.raises(NumericError, match="The maps of image 0 contain NaN or Inf"):
        ex.explain(x, [1, 2])


def test_the_command_line_chooses_the_output(graphs, tmp_path, capsys):
    from PIL import Image

    from onnx_saliency.cli import main

    model = tmp_path / "two_heads.onnx"
    onnx.save(graphs.with_outputs("two_heads"), str(model))
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    assert main(["explain", str(model), str(image), "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "choose the one to explain" in err and "--model-output" in err
    assert main(["explain", str(model), str(image), "--out", str(tmp_path / "b"),
                 "--model-output", "aux", "--target", "2"]) == 0
    assert np.load(tmp_path / "b" / "img_gradient.npy").shape == (8, 8)
    assert main(["layers", str(model), "--model-output", "aux"]) == 0
    assert "default layers: gradcam -> relu13_0" in capsys.readouterr().out
    out = tmp_path / "explainer.onnx"
    assert main(["export", str(model), "-o", str(out), "--model-output", "aux"]) == 0
    saved = onnx.load(str(out))
    assert [o.name for o in saved.graph.output] == ["aux", "gradient", "finite"]


@pytest.mark.parametrize("target", [2**63, -2**63 - 1, [1, 2**70], 2**64])
def test_targets_beyond_int64_are_refused(graphs, target):
    ex = osal.Explainer(graphs.build("mini_cnn"), methods=["gradient"], fused=False)
    with pytest.raises(InputError, match=r"target -?\d+ is not a class index \(beyond int64\)"):
        ex.explain(X, target)


def test_a_runtime_that_does_not_check_gather_still_flags_a_bad_target(saved):
    """ORT's CUDA provider and OpenVINO do not raise on an out-of-bounds Gather: the graph then
    gives that image NaN maps and finite = False (simulated by taking the Gather out)."""
    ex, _ = saved
    model = onnx.ModelProto()
    model.CopyFrom(ex.model)
    gathers = [n for n in model.graph.node if n.op_type == "Gather" and "Range" in n.input[0]]
    assert len(gathers) == 1
    node = gathers[0]
    node.op_type = "Identity"        # the index passes unchecked, as such a runtime lets it
    del node.input[0]
    del node.attribute[:]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for bad in (5, -5, 2**63 - 1):
        out = dict(zip(names, session.run(None, {"x": X, "target": np.array([bad, 2])})))
        assert out["finite"].tolist() == [False, True]
        for key in ex.map_names:
            assert np.isnan(out[key][0]).all() and np.isfinite(out[key][1]).all()
