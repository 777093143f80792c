"""Loading: what ONNX Runtime loads is explained; what it cannot be is refused with one package
error naming the reason, before anything large is allocated or anything outside the model's
folder is opened. Fixtures: graphs/make_malformed.py (repair_*.onnx are committed)."""

from __future__ import annotations

import sys
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_saliency as osal
from onnx_saliency import canonical

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "graphs"))
import make_malformed  # noqa: E402

X = np.random.default_rng(5).standard_normal((2, 3, 16, 16)).astype(np.float32)


def _gradient(model, target=1) -> np.ndarray:
    return osal.Explainer(model, methods=["gradient"], fused=False).explain(X, target)["gradient"]


# --- issue 14: load what ONNX Runtime loads -----------------------------------------------------

@pytest.mark.parametrize("name", sorted(make_malformed.REPAIRABLE))
def test_repairable_file_explains_like_the_clean_model(name):
    path = make_malformed.HERE / f"repair_{name}.onnx"
    assert path.read_bytes() == make_malformed.REPAIRABLE[name]().SerializeToString(), \
        "stale fixture: run python graphs/make_malformed.py"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        maps = _gradient(path)
    assert len(caught) <= 1, [str(w.message) for w in caught]
    np.testing.assert_allclose(maps, _gradient(make_malformed.clean()), rtol=1e-6, atol=0)


def test_spec_breaches_are_named_in_one_warning():
    model = make_malformed.REPAIRABLE["unsorted_nodes"]()
    make_malformed._ghost_value_info(model)
    with pytest.warns(UserWarning) as caught:
        osal.Explainer(model, methods=["gradient"])
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "topological order" in message and "no_such_tensor" in message


# --- issue 15 item 6: one package error for what a user can cause --------------------------------

@pytest.mark.parametrize("case,error,match", [
    ("microsoft_op_on_path", osal.UnsupportedOpError,
     r"Node 'relu2' \(op SampleOp, domain com.microsoft, opset 1\) lies on the backward path.*"
     "tap a layer"),
    ("if_on_path", osal.UnsupportedOpError, r"Node 'branch' \(op If, domain ai.onnx, opset 17\)"),
    ("unknown_domain", osal.UnsupportedOpError,
     r"Node 'relu2' \(op Swish, domain my.domain, opset 1\).*re-export"),
    ("wrong_weight_type", osal.ModelLoadError, "ONNX Runtime cannot load the model:.*conv2"),
    ("initializer_dims_lie", osal.ModelLoadError, r"'w1' declares shape \[1048576, 3, 3, 3\]"),
    ("zero_size_input", osal.ModelLoadError, "input 'x' declares an empty dimension"),
    ("cycle", osal.ModelLoadError, "cycle: node 'relu1'"),
    ("uint8_input", osal.ModelLoadError, "input 'x' holds uint8 values"),
])
def test_malformed_model_is_one_package_error(case, error, match):
    make, _ = make_malformed.MALFORMED[case]
    with pytest.raises(error, match=match) as caught:
        osal.Explainer(make(), methods=["gradient"])
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", ["utf8_node_name", "utf8_op_type", "utf8_input_name"])
def test_name_that_is_not_utf8_is_a_load_error(name):
    with pytest.raises(osal.ModelLoadError, match="not valid UTF-8"):
        osal.list_layers(make_malformed._bad_utf8_files()[name])


_opened: list[str] | None = None


def _record_open(event, args):
    if event == "open" and _opened is not None and isinstance(args[0], (str, bytes, Path)):
        _opened.append(str(Path(args[0] if not isinstance(args[0], bytes) else args[0].decode())))


sys.addaudithook(_record_open)


@pytest.mark.parametrize("case,match", [
    ("ext_parent_dir", "outside the model's folder"),
    ("ext_absolute", "outside the model's folder"), ("ext_symlink", "outside the model's folder"), ("ext_missing_file", "missing or not a file"),
    ("ext_too_long", "past the end"), ("ext_short_file", "past the end")])
def test_bad_external_data_opens_nothing_outside_the_folder(tmp_path, case, match):
    global _opened
    make_malformed._external_cases(tmp_path / "external")
    folder = (tmp_path / "external" / case).resolve()
    _opened = []
    try:
        with pytest.raises(osal.ModelLoadError, match=match):
            osal.Explainer(folder / "model.onnx")
    finally:
        opened, _opened = _opened, None
    lures = [p for p in opened if tmp_path.resolve() in Path(p).resolve().parents
             and folder not in Path(p).resolve().parents]
    assert not lures, lures


def test_external_data_needs_the_path():
    model = onnx.load(str(make_malformed.HERE / "repair_unnamed_nodes.onnx"))
    tensor = model.graph.initializer[0]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.append(onnx.StringStringEntryProto(key="location", value="w.bin"))
    with pytest.raises(osal.ModelLoadError, match="give the model's path"):
        osal.Explainer(model)


# --- issue 15 item 7: build-time memory does not grow with the input size ------------------------

def test_global_average_pool_backward_does_not_grow_with_the_input():
    """The old rule stored a [C,1,H,W] kernel: 8×256×256 floats (2 MB) for this 2 KB model."""
    model = make_malformed.clean(size=512, width=4)
    ex = osal.Explainer(model, methods=["gradient"], fused=False)
    assert ex.model.ByteSize() < 100_000
    x = np.random.default_rng(0).standard_normal((1, 3, 512, 512)).astype(np.float32)
    assert np.isfinite(ex.explain(x)["gradient"]).all()


def test_global_average_pool_gradient_is_the_weight_over_hw():
    """x → GlobalAveragePool → Flatten → Gemm: ∂logit_t/∂x[c,h,w] = W[t,c] / (H·W)."""
    h, w = 5, 7
    weight = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("GlobalAveragePool", ["x"], ["p"]),
         onnx.helper.make_node("Flatten", ["p"], ["f"]),
         onnx.helper.make_node("Gemm", ["f", "W"], ["logits"], transB=1)], "gap",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, h, w])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 2])],
        [onnx.numpy_helper.from_array(weight, "W")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    backward = osal.backward_graph(model, "x")
    import onnxruntime as ort
    sess = ort.InferenceSession(backward.SerializeToString(), providers=["CPUExecutionProvider"])
    grad = sess.run(None, {"x": np.ones((2, 3, h, w), np.float32), "target": np.array([0, 1])})[0]
    expected = np.broadcast_to(weight[:, :, None, None] / (h * w), (2, 3, h, w))
    np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_declared_size_beyond_memory_is_refused_before_allocating():
    for batch in ("N", 1):
        model = make_malformed.clean(size=make_malformed.HUGE)
        dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
        dim0.Clear()
        if batch == 1:
            dim0.dim_value = 1
        else:
            dim0.dim_param = batch
        tracemalloc.start()
        try:
            with pytest.raises(osal.ModelLoadError, match="GiB of memory free"):
                osal.Explainer(model)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 50 * 2**20


def test_size_guard_compares_with_the_memory_free(monkeypatch):
    model = make_malformed.clean(size=64)
    monkeypatch.setattr(canonical, "available_memory", lambda: 200_000)
    with pytest.raises(osal.ModelLoadError, match=r"\['N', 3, 64, 64\].*GiB of memory free"):
        osal.list_layers(model)
    monkeypatch.setattr(canonical, "available_memory", lambda: 2**30)
    assert osal.list_layers(model)


def test_available_memory_is_known_here():
    free = canonical.available_memory()
    assert free is not None and 2**20 < free < 2**50
