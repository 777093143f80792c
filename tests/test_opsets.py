"""Opsets 7 to 23: the same network written with each opset's own forms of its ops explains to
the same maps.

The network (`_network(opset)`): Conv → BatchNormalization → Relu → Clip(0, 6) → MaxPool →
bilinear ×2 upsampling → Pad → Slice → Conv → x·Sigmoid(x) → Dropout → GlobalAveragePool →
Squeeze → Gemm, with seeded weights that do not depend on the opset. Each opset writes the ops
the way exporters of its time did: BatchNormalization with `spatial` (7, 8), `Upsample` with a
`scales` attribute (7, 8) or input (9) and `Resize` from 10 (roi input from 11; the old ops' asymmetric coordinates, which the converter
to opset 17 must keep), Clip and Pad
with attributes (before 11), Slice with attributes (before 10), Squeeze with `axes` as an
attribute (before 13), Dropout's `ratio` as an attribute (before 12). Files below opset 16 are
converted on load (canonical.convert_opset).

Checked: the logits and the input gradient of every opset's file equal opset 17's (≤ 1e-5
relative: the same float32 kernels on the same values; a conversion that changed the math
moves them by orders more), and opset 17's gradient equals central finite differences of its
float64 twin in the ONNX reference evaluator (1e-3 of |∇f|·|v|, as in
test_rules_finite_differences.py). No near-tie: the test asserts every Relu and Clip input is
at least 1e-3 from its bound and every MaxPool window's maximum leads by 1e-3, against FD moves
below 1e-5.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import onnx_saliency as osal

OPSETS = list(range(7, 24))
SHAPE = (2, 3, 12, 12)
TARGETS = np.array([1, 3], np.int64)


def _weights(dtype):
    rng = np.random.default_rng(7)
    w = {
        "w1": rng.standard_normal((4, 3, 3, 3)) * 0.5, "b1": rng.standard_normal(4) * 0.1,
        "scale": rng.uniform(0.5, 1.5, 4), "bias": rng.uniform(-0.3, 0.3, 4),
        "mean": rng.uniform(-0.2, 0.2, 4), "var": rng.uniform(0.5, 1.5, 4),
        "w2": rng.standard_normal((6, 4, 3, 3)) * 0.4, "b2": rng.standard_normal(6) * 0.1,
        "wf": rng.standard_normal((5, 6)) * 0.5, "bf": rng.standard_normal(5) * 0.1,
    }
    return {k: v.astype(dtype) for k, v in w.items()}


def _network(opset: int, dtype=np.float32, mode: str = "linear") -> onnx.ModelProto:
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [numpy_helper.from_array(v, k) for k, v in _weights(dtype).items()]
    nodes = []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    t = node("Conv", ["x", "w1", "b1"], "conv1", pads=[1, 1, 1, 1])
    bn_attrs = {"spatial": 1} if opset < 9 else {}
    t = node("BatchNormalization", [t, "scale", "bias", "mean", "var"], "bn", **bn_attrs)
    t = node("Relu", [t], "relu")
    if opset < 11:
        t = node("Clip", [t], "clip", min=0.0, max=6.0)
    else:
        t = node("Clip", [t, const("lo", np.array(0, dtype)), const("hi", np.array(6, dtype))],
                 "clip")
    t = node("MaxPool", [t], "pool", kernel_shape=[2, 2], strides=[2, 2])
    scales = np.array([1, 1, 2, 2], np.float32)
    if opset < 9:
        t = node("Upsample", [t], "up", mode=mode, scales=scales.tolist())
    elif opset == 9:
        t = node("Upsample", [t, const("scales", scales)], "up", mode=mode)
    elif opset == 10:
        t = node("Resize", [t, const("scales", scales)], "up", mode=mode)
    else:
        t = node("Resize", [t, const("roi", np.array([], np.float32)), const("scales", scales)],
                 "up", mode=mode, coordinate_transformation_mode="asymmetric",
                 **({"nearest_mode": "floor"} if mode == "nearest" else {}))
    pads = [0, 0, 1, 1, 0, 0, 1, 1]
    if opset < 11:
        t = node("Pad", [t], "pad", pads=pads, value=0.0)
    else:
        t = node("Pad", [t, const("pads", np.array(pads, np.int64))], "pad")
    if opset < 10:
        t = node("Slice", [t], "slice", starts=[1, 0], ends=[13, 13], axes=[2, 3])
    else:
        t = node("Slice", [t, const("starts", np.array([1, 0], np.int64)),
                           const("ends", np.array([13, 13], np.int64)),
                           const("axes", np.array([2, 3], np.int64))], "slice")
    t = node("Conv", [t, "w2", "b2"], "conv2", pads=[1, 1, 1, 1])
    t = node("Mul", [t, node("Sigmoid", [t], "sig")], "silu")
    if opset < 12:
        t = node("Dropout", [t], "drop", ratio=0.5)
    else:
        t = node("Dropout", [t], "drop")
    t = node("GlobalAveragePool", [t], "gap")
    if opset < 13:
        t = node("Squeeze", [t], "squeeze", axes=[2, 3])
    else:
        t = node("Squeeze", [t, const("axes23", np.array([2, 3], np.int64))], "squeeze")
    node("Gemm", [t, "wf", "bf"], "logits", transB=1)
    graph = helper.make_graph(
        nodes, f"opset{opset}",
        [helper.make_tensor_value_info("x", elem, ["N", *SHAPE[1:]])],
        [helper.make_tensor_value_info("logits", elem, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=min(onnx.IR_VERSION, 10 if opset <= 22 else 11))
    onnx.checker.check_model(model, full_check=True)
    return model


def _images():
    return np.random.default_rng(3).standard_normal(SHAPE).astype(np.float32)


def _logits_and_gradient(model):
    graph = osal.backward_graph(model, ["x"])
    grad = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"]
                                ).run(None, {"x": _images(), "target": TARGETS})[0]
    logits = osal.Explainer(model, methods=["gradient"]).run(_images(), target=TARGETS)["logits"]
    return logits, grad


@pytest.fixture(scope="module")
def references():
    return {mode: _logits_and_gradient(_network(17, mode=mode)) for mode in ("linear", "nearest")}


@pytest.fixture
def reference(references):
    return references["linear"]


@pytest.mark.parametrize("mode", ["linear", "nearest"])
@pytest.mark.parametrize("opset", OPSETS)
def test_every_opset_explains_like_opset_17(references, opset, mode):
    model = _network(opset, mode=mode)
    # ONNX Runtime runs the file as written
    ort_logits = ort.InferenceSession(model.SerializeToString(),
                                      providers=["CPUExecutionProvider"]).run(None, {"x": _images()})[0]
    logits, grad = _logits_and_gradient(model)
    ref_logits, ref_grad = references[mode]
    np.testing.assert_allclose(logits, ort_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-6)
    assert np.abs(grad - ref_grad).max() <= 1e-5 * np.abs(ref_grad).max()


def _margins(model64, x):
    """(min distance of a Relu/Clip input to its bounds, min lead of a MaxPool window's max)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model64)
    for name in ("bn", "relu"):
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.DOUBLE, None))
    _, bn, relu = ReferenceEvaluator(probe).run(None, {"x": x})
    gate = min(np.abs(bn).min(), np.abs(np.minimum(bn, 6 - bn)).min())
    clipped = np.minimum(relu, 6)
    windows = clipped.reshape(2, 4, 6, 2, 6, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 4, 6, 6, 4)
    top = np.sort(windows, axis=-1)
    # windows whose maximum is 0 or 6 pass no gradient (Relu, Clip), whichever tap wins
    active = (top[..., -1] > 0) & (top[..., -1] < 6)
    lead = (top[..., -1] - top[..., -2])[active].min()
    return gate, lead


def test_opset_17_gradient_matches_finite_differences(reference):
    model64 = _network(17, np.float64)
    x = _images().astype(np.float64)
    gate, lead = _margins(model64, x)
    assert gate >= 1e-3 and lead >= 1e-3, (gate, lead)
    ref = ReferenceEvaluator(model64)

    def f(z):
        return ref.run(None, {"x": z})[0][[0, 1], TARGETS].sum()

    grad = reference[1].astype(np.float64)
    rng = np.random.default_rng(11)
    h = 1e-6
    for _ in range(4):
        v = rng.standard_normal(x.shape)
        v /= np.linalg.norm(v)
        fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
        assert abs(fd - (grad * v).sum()) <= 1e-3 * np.linalg.norm(grad)
