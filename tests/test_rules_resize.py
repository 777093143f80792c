"""The Resize rule (the transpose of the interpolation, backward/rules/resize.py) in every mode
and coordinate mode it supports.

Per case, two checks on x [2, 3, 4, 6] (H, W of different lengths; up- and downscaling):
- the interpolation matrices reproduce ONNX Runtime's own Resize: y = M_H·x·M_Wᵀ against ORT's
  float32 output within 5e-6 (float32 rounding of sums of ≤ 16 terms of size ≤ ~4);
- the rule's signal against central finite differences of Σ c⊙y through the ONNX reference
  evaluator in float64 (c a random cotangent). Resize is linear in x (nearest's picks and the
  weights do not depend on x's values), so the central difference with step 1 is exact up to
  float64 rounding: tolerance 1e-5 relative to |∇|·|v|, the float32 rounding of the rule's
  MatMuls. tf_half_pixel_for_nn (Resize-11 only) is missing from the reference evaluator: its
  differences are ONNX Runtime's, in float32 (tolerance 1e-4: float32 sums of ~100 terms).
Scales are chosen with out = scale·in exactly in float32 (1.75·4, 1.5·6): ONNX Runtime's align_corners and
pytorch_half_pixel divide by the integer output length, the reference evaluator by scale·in.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnx_saliency.backward.rules import GRADIENT
from onnx_saliency.backward.rules.resize import interpolation_matrix
from onnx_saliency.backward.walk import backward
from onnx_saliency.errors import UnsupportedOpError
from onnx_saliency.graph import GraphBuilder, GraphIndex

SHAPE = (2, 3, 4, 6)
COORDS = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
          "tf_half_pixel_for_nn", "half_pixel_symmetric"]
# (H, W) scales: enlarge both; enlarge H, shrink W; and sizes given (scale = out/in)
GEOMETRY = [("scales", (2.0, 1.5)), ("scales", (1.75, 0.5)), ("sizes", (7, 4))]

CASES = []
for coord in COORDS:
    for form, hw in GEOMETRY:
        for nearest in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
            CASES.append(("nearest", coord, form, hw, {"nearest_mode": nearest}))
        CASES.append(("linear", coord, form, hw, {}))
        CASES.append(("cubic", coord, form, hw, {}))
        CASES.append(("cubic", coord, form, hw, {"exclude_outside": 1, "cubic_coeff_a": -0.5}))
for mode in ("nearest", "linear", "cubic"):
    for form, hw in GEOMETRY:
        CASES.append((mode, "tf_crop_and_resize", form, hw,
                      {"roi": [0, 0, 0.15, -0.1, 1, 1, 0.9, 0.85], "extrapolation_value": 0.7}))


def _ids(case):
    mode, coord, form, hw, extra = case
    tags = "-".join(f"{k}={v}" for k, v in extra.items() if k != "roi")
    return f"{mode}-{coord}-{form}{hw[0]}x{hw[1]}" + (f"-{tags}" if tags else "")


def _model(dtype, mode, coord, form, hw, extra, out_shape=None):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    extra = dict(extra)
    roi = extra.pop("roi", None)
    if roi is None and coord == "tf_half_pixel_for_nn":
        roi = []   # Resize-11 requires the roi input
    inits = []
    if roi is not None:
        inits.append(numpy_helper.from_array(np.asarray(roi, np.float32), "roi"))
    if form == "scales":
        inits.append(numpy_helper.from_array(np.asarray([1, 1, *hw], np.float32), "scales"))
        inputs = ["x", "roi" if roi is not None else "", "scales"]
        out_hw = [int(np.floor(np.float32(s) * np.float32(n))) for s, n in zip(hw, SHAPE[2:])]
    else:
        inits.append(numpy_helper.from_array(np.asarray([*SHAPE[:2], *hw], np.int64), "sizes"))
        inputs = ["x", "roi" if roi is not None else "", "", "sizes"]
        if coord == "tf_half_pixel_for_nn":   # and an (empty) scales input
            inits.append(numpy_helper.from_array(np.zeros(0, np.float32), "no_scales"))
            inputs[2] = "no_scales"
        out_hw = list(hw)
    y_shape = out_shape or [*SHAPE[:2], *out_hw]
    node = helper.make_node("Resize", inputs, ["y"], mode=mode,
                            coordinate_transformation_mode=coord, **extra)
    graph = helper.make_graph(
        [node], "resize",
        [helper.make_tensor_value_info("x", elem, SHAPE),
         helper.make_tensor_value_info("cot", elem, y_shape)],
        [helper.make_tensor_value_info("y", elem, y_shape)], inits)
    opset = 11 if coord == "tf_half_pixel_for_nn" else 19   # removed from Resize-13 on
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model, y_shape


def _signal(model, feeds):
    """The rule's signal at x, walked back from y seeded with the input `cot`."""
    index = GraphIndex(model)
    b = GraphBuilder(index)
    dx = backward(b, index, GRADIENT, {"y": "cot"}, ["x"])["x"]
    explainer = model.__deepcopy__()
    explainer.graph.node.extend(b.nodes)
    explainer.graph.initializer.extend(b.initializers)
    explainer.graph.output.append(helper.make_tensor_value_info(dx, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(explainer.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([dx], {k: v.astype(np.float32) for k, v in feeds.items()})[0]


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_resize_gradient_matches_finite_differences(case):
    mode, coord, form, hw, extra = case
    rng = np.random.default_rng(5)
    x = rng.standard_normal(SHAPE)
    model32, y_shape = _model(np.float32, *case)
    model64, _ = _model(np.float64, *case)
    cot = rng.standard_normal(y_shape)

    # the matrices are ONNX Runtime's interpolation
    ours = _matrices(case, y_shape)
    y_ort = ort.InferenceSession(model32.SerializeToString()).run(
        None, {"x": x.astype(np.float32), "cot": cot.astype(np.float32)})[0]
    y_mat = np.einsum("hH,ncHW,wW->nchw", ours[0], x, ours[1])
    if coord == "tf_crop_and_resize":   # extrapolated where either axis' row is empty
        empty = (ours[0].sum(1) == 0)[:, None] | (ours[1].sum(1) == 0)[None, :]
        y_mat = np.where(empty, extra["extrapolation_value"], y_mat)
    np.testing.assert_allclose(y_ort, y_mat, atol=5e-6, rtol=0)

    grad = _signal(model32, {"x": x, "cot": cot}).astype(np.float64)
    assert grad.shape == x.shape

    if coord == "tf_half_pixel_for_nn":   # not in the reference evaluator: ORT in float32
        sess, tol = ort.InferenceSession(model32.SerializeToString()), 1e-4
        run = lambda z: sess.run(None, {"x": z.astype(np.float32), "cot": cot.astype(np.float32)})[0]
    else:
        ref, tol = ReferenceEvaluator(model64), 1e-5
        run = lambda z: ref.run(None, {"x": z, "cot": cot})[0]

    for _ in range(2):
        v = rng.standard_normal(SHAPE)
        fd = float(((run(x + v) - run(x - v)) * cot).sum()) / 2
        analytic = float((grad * v).sum())
        assert abs(fd - analytic) <= tol * np.linalg.norm(grad) * np.linalg.norm(v), (fd, analytic)


def _matrices(case, y_shape):
    mode, coord, form, hw, extra = case
    roi = extra.get("roi", [0, 0, 0, 0, 1, 1, 1, 1])
    out = []
    for k, ax in enumerate((2, 3)):
        n, m = SHAPE[ax], y_shape[ax]
        scale = hw[k] if form == "scales" else float(np.float32(m) / np.float32(n))
        out.append(interpolation_matrix(
            n, m, scale, mode, coord, extra.get("nearest_mode", "round_prefer_floor"),
            extra.get("cubic_coeff_a", -0.75), bool(extra.get("exclude_outside", 0)),
            (roi[ax], roi[4 + ax])))
    return out


@pytest.mark.parametrize("opset", [13, 18])
def test_older_forms_and_runtime_sizes(opset):
    """Resize-13 (no half_pixel_symmetric) and Resize-18 with `axes` and
    keep_aspect_ratio_policy, and sizes computed at run time (the output's declared shape gives
    the lengths): the same finite-difference check (tolerance as above)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal(SHAPE)
    elem = TensorProto.DOUBLE
    if opset == 18:   # sizes (10, 10) of H, W, not larger: one scale min(10/4, 10/6) = 5/3
        node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                                axes=[2, 3], keep_aspect_ratio_policy="not_larger")
        sizes = numpy_helper.from_array(np.asarray([10, 10], np.int64), "sizes")
        nodes, inits, y_shape = [node], [sizes], [2, 3, 7, 10]
    else:             # sizes = Concat(Shape(x)[:2], [10, 3]) at run time
        nodes = [helper.make_node("Shape", ["x"], ["full"]),
                 helper.make_node("Slice", ["full", "zero", "two"], ["s"]),
                 helper.make_node("Concat", ["s", "hw"], ["sizes"], axis=0),
                 helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="cubic")]
        inits = [numpy_helper.from_array(np.asarray(v, np.int64), k)
                 for k, v in (("hw", [10, 3]), ("zero", [0]), ("two", [2]))]
        y_shape = [2, 3, 10, 3]
    cot = rng.standard_normal(y_shape)

    def model(elem):
        graph = helper.make_graph(nodes, "resize", [
            helper.make_tensor_value_info("x", elem, SHAPE),
            helper.make_tensor_value_info("cot", elem, y_shape)],
            [helper.make_tensor_value_info("y", elem, y_shape)], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])

    m32 = model(TensorProto.FLOAT)
    y_ort = ort.InferenceSession(m32.SerializeToString()).run(
        None, {"x": x.astype(np.float32), "cot": cot.astype(np.float32)})[0]
    assert list(y_ort.shape) == y_shape
    grad = _signal(m32, {"x": x, "cot": cot}).astype(np.float64)
    ref = ReferenceEvaluator(model(elem))
    np.testing.assert_allclose(ref.run(None, {"x": x, "cot": cot})[0], y_ort, atol=2e-6)

    def f(z):
        return float((ref.run(None, {"x": z, "cot": cot})[0] * cot).sum())

    v = rng.standard_normal(SHAPE)
    fd = (f(x + v) - f(x - v)) / 2
    assert abs(fd - float((grad * v).sum())) <= 1e-5 * np.linalg.norm(grad) * np.linalg.norm(v)


def test_upsample_rule_matches_onnx_runtime():
    """Upsample-9 (asymmetric coordinates; nearest rounds down), the rule on the opset-9 node
    itself, against central differences of ONNX Runtime's own Upsample (float32, linear in x:
    step 1, tolerance 1e-4 relative for float32 sums of ~100 terms)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal(SHAPE)
    for mode, scales in (("nearest", [1, 1, 2, 3]), ("linear", [1, 1, 2, 1.5])):
        y_shape = [2, 3, int(SHAPE[2] * scales[2]), int(SHAPE[3] * scales[3])]
        graph = helper.make_graph(
            [helper.make_node("Upsample", ["x", "scales"], ["y"], mode=mode)], "up",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE),
             helper.make_tensor_value_info("cot", TensorProto.FLOAT, y_shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
            [numpy_helper.from_array(np.asarray(scales, np.float32), "scales")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
        model.ir_version = 7
        cot = rng.standard_normal(y_shape)
        grad = _signal(model, {"x": x, "cot": cot}).astype(np.float64)
        sess = ort.InferenceSession(model.SerializeToString())

        def f(z):
            return float((sess.run(None, {"x": z.astype(np.float32),
                                          "cot": cot.astype(np.float32)})[0] * cot).sum())

        v = rng.standard_normal(SHAPE)
        fd = (f(x + v) - f(x - v)) / 2
        assert abs(fd - float((grad * v).sum())) <= 1e-4 * np.linalg.norm(grad) * np.linalg.norm(v)


def test_antialias_is_refused():
    model, _ = _model(np.float32, "linear", "half_pixel", "scales", (0.5, 0.5), {"antialias": 1})
    with pytest.raises(UnsupportedOpError, match=r"Node '.*' \(op Resize, opset 19\) uses antialias=1"):
        _signal(model, {"x": np.zeros(SHAPE), "cot": np.zeros([2, 3, 2, 3])})
