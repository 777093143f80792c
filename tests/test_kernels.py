"""The NormGrad C++ kernel (through pybind11) against NumPy references, over random geometry."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from onnx_saliency import _kernels


def _patch_norm_reference(a, kernel, strides, pads, dilations):
    """‖P_k(a)_v‖ by explicit im2col in NumPy."""
    n, c, h, w = a.shape
    padded = np.pad(a, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    ho = (h + pads[0] + pads[2] - dilations[0] * (kernel[0] - 1) - 1) // strides[0] + 1
    wo = (w + pads[1] + pads[3] - dilations[1] * (kernel[1] - 1) - 1) // strides[1] + 1
    out = np.zeros((n, ho, wo))
    for i in range(ho):
        for j in range(wo):
            ys = i * strides[0] + dilations[0] * np.arange(kernel[0])
            xs = j * strides[1] + dilations[1] * np.arange(kernel[1])
            patch = padded[:, :, ys][:, :, :, xs]
            out[:, i, j] = np.sqrt((patch.astype(np.float64) ** 2).sum((1, 2, 3)))
    return out


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 5), k_out=st.integers(1, 4), h=st.integers(1, 9),
       w=st.integers(1, 9), kh=st.integers(1, 3), kw=st.integers(1, 3), s=st.integers(1, 3),
       d=st.integers(1, 2), p=st.lists(st.integers(0, 2), min_size=4, max_size=4),
       seed=st.integers(0, 2**16))
def test_normgrad_conv_mode_matches_im2col(n, c, k_out, h, w, kh, kw, s, d, p, seed):
    ho = (h + p[0] + p[2] - d * (kh - 1) - 1) // s + 1
    wo = (w + p[1] + p[3] - d * (kw - 1) - 1) // s + 1
    assume(ho >= 1 and wo >= 1)  # a valid conv output
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, c, h, w)).astype(np.float32)
    g = rng.standard_normal((n, k_out, ho, wo)).astype(np.float32)
    out = _kernels.normgrad(g, a, "conv", [kh, kw], [s, s], p, [d, d], threads=2)
    ref = np.linalg.norm(g.astype(np.float64), axis=1) * _patch_norm_reference(a, [kh, kw], [s, s], p, [d, d])
    assert out.shape == (n, 1, ho, wo)
    np.testing.assert_allclose(out[:, 0], ref, rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 6), h=st.integers(1, 7), w=st.integers(1, 7),
       seed=st.integers(0, 2**16))
def test_normgrad_identity_and_selective(n, c, h, w, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, c, h, w)).astype(np.float32)
    g = rng.standard_normal((n, c, h, w)).astype(np.float32)
    ident = _kernels.normgrad(g, a, "identity")[:, 0]
    np.testing.assert_allclose(ident, np.linalg.norm(g, axis=1) * np.linalg.norm(a, axis=1), rtol=1e-5)
    sel = _kernels.normgrad(g, a, "selective")[:, 0]
    np.testing.assert_allclose(sel, np.linalg.norm(np.maximum(a * g, 0), axis=1), rtol=1e-5, atol=1e-7)


def test_normgrad_rejects_bad_input_without_crashing():
    a = np.zeros((1, 2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="same shape"):
        _kernels.normgrad(np.zeros((1, 3, 4, 4), np.float32), a, "identity")
    with pytest.raises(ValueError, match="4-D"):
        _kernels.normgrad(np.zeros((2, 4, 4), np.float32), a)
    with pytest.raises(TypeError, match="float32"):
        _kernels.normgrad(a.astype(np.float64), a)
    with pytest.raises(ValueError, match="mode"):
        _kernels.normgrad(a, a, "bogus")
    with pytest.raises(ValueError, match="spatial size"):
        _kernels.normgrad(np.zeros((1, 2, 3, 3), np.float32), a, "conv", [3, 3])
    with pytest.raises(ValueError, match="positive"):
        _kernels.normgrad(a, a, "conv", [1, 1], [0, 1])


# -- RectifiedConvTranspose ----------------------------------------------------------------

def _rct_reference(g, z, a, kernel, strides, pads, dilations, group, eps=1e-10):
    """TSGB-Conv backward by explicit window loops in float64 NumPy (docs/methods.md §5)."""
    n, c, h, w = a.shape
    k_out, ho, wo = g.shape[1:]
    s = (g.astype(np.float64) * z).reshape(n, group, k_out // group, ho, wo).sum(2)
    absum = np.abs(a.astype(np.float64)).reshape(n, group, c // group, h, w).sum(2)
    out = np.zeros((n, group, h, w))
    for i in range(ho):
        for j in range(wo):
            ys = [i * strides[0] - pads[0] + t * dilations[0] for t in range(kernel[0])]
            xs = [j * strides[1] - pads[1] + t * dilations[1] for t in range(kernel[1])]
            cells = [(y, x) for y in ys for x in xs if 0 <= y < h and 0 <= x < w]
            d = sum(absum[:, :, y, x] for y, x in cells) if cells else np.zeros((n, group))
            r = s[:, :, i, j] / (d + eps)
            for y, x in cells:
                out[:, :, y, x] += r
    return np.sign(a) * np.repeat(out, c // group, axis=1)


geometry = dict(
    n=st.integers(1, 2), h=st.integers(1, 9), w=st.integers(1, 9), kh=st.integers(1, 3),
    kw=st.integers(1, 3), s=st.integers(1, 3), d=st.integers(1, 2),
    p=st.lists(st.integers(0, 2), min_size=4, max_size=4), group=st.sampled_from([1, 2, 3]),
    cg=st.integers(1, 3), kg=st.integers(1, 3), seed=st.integers(0, 2**16))


def _rct_case(n, h, w, kh, kw, s, d, p, group, cg, kg, seed):
    ho = (h + p[0] + p[2] - d * (kh - 1) - 1) // s + 1
    wo = (w + p[1] + p[3] - d * (kw - 1) - 1) // s + 1
    if ho < 1 or wo < 1:
        return None
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, cg * group, h, w)).astype(np.float32)
    z = rng.standard_normal((n, kg * group, ho, wo)).astype(np.float32)
    g = rng.standard_normal((n, kg * group, ho, wo)).astype(np.float32)
    return g, z, a, dict(kernel_shape=[kh, kw], strides=[s, s], pads=p, dilations=[d, d], group=group)


@settings(max_examples=40, deadline=None)
@given(**geometry)
def test_rectified_conv_transpose_matches_numpy(**kw):
    case = _rct_case(**kw)
    assume(case is not None)
    g, z, a, attrs = case
    out = _kernels.rectified_conv_transpose(g, z, a, threads=2, **attrs)
    ref = _rct_reference(g, z, a, attrs["kernel_shape"], attrs["strides"], attrs["pads"],
                         attrs["dilations"], attrs["group"])
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(ref).max()))


def test_rectified_conv_transpose_rejects_bad_input_without_crashing():
    a = np.zeros((1, 4, 5, 5), np.float32)
    g = np.zeros((1, 6, 5, 5), np.float32)
    with pytest.raises(ValueError, match="same shape"):
        _kernels.rectified_conv_transpose(g, g[:, :3], a)
    with pytest.raises(ValueError, match="group"):
        _kernels.rectified_conv_transpose(g, g, a, group=4)
    with pytest.raises(ValueError, match="spatial size"):
        _kernels.rectified_conv_transpose(g, g, a, kernel_shape=[3, 3])
    with pytest.raises(TypeError, match="float32"):
        _kernels.rectified_conv_transpose(g, g, a.astype(np.float16))


# -- the same kernels through an ONNX Runtime session (the custom-op library) --------------

def _session(op, inputs, library=None, global_threads=False, **attrs):
    """A session running one `op` node on `inputs` (names) with the custom-op `library` (the
    package's by default); `global_threads`: on ONNX Runtime's global thread pool."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from onnx_saliency import fused

    node = helper.make_node(op, list(inputs), ["out"], domain=fused.DOMAIN, **attrs)
    graph = helper.make_graph(
        [node], op, [helper.make_tensor_value_info(i, TensorProto.FLOAT, None) for i in inputs],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(fused.DOMAIN, 1)])
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.use_per_session_threads = not global_threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # one node: nothing to do
    opts.register_custom_ops_library(library or fused.library_path())
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def test_custom_op_library_is_built():
    assert _kernels.library_path() is not None
    assert _kernels.ORT_API_VERSION >= 16


@settings(max_examples=15, deadline=None)
@given(**geometry)
def test_rectified_conv_transpose_through_onnxruntime(**kw):
    case = _rct_case(**kw)
    assume(case is not None)
    g, z, a, attrs = case
    out = _session("RectifiedConvTranspose", "gza", **attrs).run(None, {"g": g, "z": z, "a": a})[0]
    np.testing.assert_allclose(out, _kernels.rectified_conv_transpose(g, z, a, **attrs), rtol=1e-6)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 5), k_out=st.integers(1, 4), h=st.integers(2, 9),
       w=st.integers(2, 9), kh=st.integers(1, 3), s=st.integers(1, 2),
       p=st.lists(st.integers(0, 1), min_size=4, max_size=4), seed=st.integers(0, 2**16))
def test_normgrad_through_onnxruntime(n, c, k_out, h, w, kh, s, p, seed):
    ho = (h + p[0] + p[2] - kh) // s + 1
    wo = (w + p[1] + p[3] - kh) // s + 1
    assume(ho >= 1 and wo >= 1)  # a valid conv output
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, c, h, w)).astype(np.float32)
    g = rng.standard_normal((n, k_out, ho, wo)).astype(np.float32)
    geo = dict(kernel_shape=[kh, kh], strides=[s, s], pads=p, dilations=[1, 1])
    out = _session("NormGrad", "ga", mode="conv", **geo).run(None, {"g": g, "a": a})[0]
    np.testing.assert_allclose(out, _kernels.normgrad(g, a, "conv", [kh, kh], [s, s], p, [1, 1]),
                               rtol=1e-6)
    sq = rng.standard_normal((n, c, h, w)).astype(np.float32)
    for mode in ("identity", "selective"):
        out = _session("NormGrad", "ga", mode=mode).run(None, {"g": sq, "a": a})[0]
        np.testing.assert_allclose(out, _kernels.normgrad(sq, a, mode), rtol=1e-6)


def test_custom_ops_return_errors_not_crashes():
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument, RuntimeException

    sess = _session("RectifiedConvTranspose", "gza", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    a = np.zeros((1, 2, 4, 4), np.float32)
    g = np.zeros((1, 3, 4, 4), np.float32)
    with pytest.raises(InvalidArgument, match="same shape"):
        sess.run(None, {"g": g, "z": g[:, :2], "a": a})
    with pytest.raises(InvalidArgument, match="4-D"):
        sess.run(None, {"g": g, "z": g, "a": a[0]})
    with pytest.raises(InvalidArgument, match="spatial size"):
        sess.run(None, {"g": g[:, :, :3], "z": g[:, :, :3], "a": a})
    with pytest.raises(RuntimeException, match="mode must be"):
        _session("NormGrad", "ga", mode="bogus")
    with pytest.raises(InvalidArgument, match="same shape"):
        _session("NormGrad", "ga").run(None, {"g": g, "a": a})


# -- MaxPoolGradient: against ONNX Runtime's own MaxPool Indices ------------------------------

def _max_pool_case(n, c, h, w, kh, kw, s, d, p, ceil, seed):
    """x with many ties (small integers, as after ReLU), g, attrs, and the reference dx: g
    scatter-added at the Indices of ONNX Runtime's MaxPool (None when the pool is invalid)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    pads = [min(v, (kh if i % 2 == 0 else kw) - 1) for i, v in enumerate(p)]
    attrs = dict(kernel_shape=[kh, kw], strides=[s, s], pads=pads, dilations=[d, d])
    if (h + pads[0] + pads[2] - d * (kh - 1) - 1 < 0) or (w + pads[1] + pads[3] - d * (kw - 1) - 1 < 0):
        return None
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, (n, c, h, w)).astype(np.float32)
    node = helper.make_node("MaxPool", ["x"], ["y", "i"], ceil_mode=ceil, **attrs)
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("i", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    y, idx = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    for size, out, k, pad in ((h, y.shape[2], kh, pads[0]), (w, y.shape[3], kw, pads[1])):
        if any(all(not 0 <= o * s - pad + t * d < size for t in range(k)) for o in range(out)):
            return None    # a window entirely in the padding: no input to route to
    g = rng.standard_normal(y.shape).astype(np.float32)
    return x, g, attrs, _route(idx, g, x.shape), (y, idx)


def _route(idx, g, shape):
    """g scatter-added at MaxPool Indices (flat positions in x)."""
    out = np.zeros(int(np.prod(shape)), np.float64)
    np.add.at(out, idx.ravel(), g.ravel())
    return out.reshape(shape)


pool_geometry = dict(
    n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 10), w=st.integers(1, 10),
    kh=st.integers(1, 3), kw=st.integers(1, 3), s=st.integers(1, 3), d=st.integers(1, 2),
    p=st.lists(st.integers(0, 1), min_size=4, max_size=4), ceil=st.integers(0, 1),
    seed=st.integers(0, 2**16))


@settings(max_examples=60, deadline=None)
@given(**pool_geometry)
def test_max_pool_gradient_matches_onnxruntime_indices(**kw):
    case = _max_pool_case(**kw)
    assume(case is not None)
    x, g, attrs, ref, _ = case
    np.testing.assert_allclose(_kernels.max_pool_gradient(x, g, threads=2, **attrs), ref,
                               rtol=1e-6, atol=1e-6)
    out = _session("MaxPoolGradient", "xg", **attrs).run(None, {"x": x, "g": g})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_max_pool_gradient_rejects_bad_input_without_crashing():
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    x = np.zeros((1, 2, 6, 6), np.float32)
    g = np.zeros((1, 2, 3, 3), np.float32)
    geo = dict(kernel_shape=[2, 2], strides=[2, 2])
    with pytest.raises(ValueError, match="share batch and channels"):
        _kernels.max_pool_gradient(x, g[:, :1], **geo)
    with pytest.raises(ValueError, match="pooling x gives 3"):
        _kernels.max_pool_gradient(x, g[:, :, :2], **geo)
    with pytest.raises(ValueError, match="must be positive"):
        _kernels.max_pool_gradient(x, g, kernel_shape=[0, 2], strides=[2, 2])
    with pytest.raises(TypeError, match="float32"):
        _kernels.max_pool_gradient(x.astype(np.float64), g, **geo)
    sess = _session("MaxPoolGradient", "xg", **geo)
    with pytest.raises(InvalidArgument, match="pooling x gives 3"):
        sess.run(None, {"x": x, "g": np.zeros((1, 2, 4, 3), np.float32)})
    with pytest.raises(InvalidArgument, match="4-D"):
        sess.run(None, {"x": x[0], "g": g})


@settings(max_examples=60, deadline=None)
@given(**pool_geometry)
def test_max_pool_relevance_matches_onnxruntime_indices(**kw):
    """Σ_c x ⊙ route(sign(p) ⊙ s) with ONNX Runtime's Indices doing the routing."""
    case = _max_pool_case(**kw)
    assume(case is not None)
    x, _, attrs, _, (y, idx) = case
    s = np.random.default_rng(kw["seed"] + 1).standard_normal(
        (y.shape[0], 1) + y.shape[2:]).astype(np.float32)
    ref = (x * _route(idx, np.sign(y) * s, x.shape)).sum(1, keepdims=True)
    np.testing.assert_allclose(_kernels.max_pool_relevance(x, s, threads=2, **attrs), ref,
                               rtol=1e-5, atol=1e-5)
    out = _session("MaxPoolRelevance", "xs", **attrs).run(None, {"x": x, "s": s})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kh,kw,s,d,p", [(3, 3, 2, 1, 1), (2, 2, 2, 1, 0), (3, 2, 1, 2, 1),
                                         (5, 4, 3, 1, 1)])
def test_max_pool_ops_match_onnxruntime_indices_across_row_blocks(kh, kw, s, d, p):
    """Planes taller than MaxPoolRelevance's 16-row task blocks (windows shared by two blocks)
    and wider than any window: both ops against ONNX Runtime's Indices."""
    x, g, attrs, ref, (y, idx) = _max_pool_case(2, 8, 53, 29, kh, kw, s, d, [p] * 4, 0, seed=kh)
    np.testing.assert_allclose(_kernels.max_pool_gradient(x, g, threads=2, **attrs), ref,
                               rtol=1e-6, atol=1e-6)
    sm = np.random.default_rng(7).standard_normal((2, 1) + y.shape[2:]).astype(np.float32)
    rel = (x * _route(idx, np.sign(y) * sm, x.shape)).sum(1, keepdims=True)
    np.testing.assert_allclose(_kernels.max_pool_relevance(x, sm, threads=2, **attrs), rel,
                               rtol=1e-5, atol=1e-5)


def test_max_pool_relevance_rejects_bad_input_without_crashing():
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    x = np.zeros((2, 3, 6, 6), np.float32)
    s = np.zeros((2, 1, 3, 3), np.float32)
    geo = {"kernel_shape": [2, 2], "strides": [2, 2]}
    with pytest.raises(ValueError, match="one channel"):
        _kernels.max_pool_relevance(x, np.zeros((2, 3, 3, 3), np.float32), **geo)
    with pytest.raises(ValueError, match="batch"):
        _kernels.max_pool_relevance(x, s[:1], **geo)
    with pytest.raises(ValueError, match="s's spatial dim 1 is 2"):
        _kernels.max_pool_relevance(x, s[..., :2], **geo)
    sess = _session("MaxPoolRelevance", "xs", **geo)
    with pytest.raises(InvalidArgument, match="one channel"):
        sess.run(None, {"x": x, "s": np.zeros((2, 3, 3, 3), np.float32)})
    with pytest.raises(InvalidArgument, match="4-D"):
        sess.run(None, {"x": x[0], "s": s})


# -- hostile attributes (issue #15): one sentence naming the op and attribute, never a crash or
# a hang, through pybind11 and through an ONNX Runtime session alike ------------------------

PYBIND_NAMES = {"NormGrad": "normgrad", "RectifiedConvTranspose": "rectified_conv_transpose",
                "MaxPoolGradient": "max_pool_gradient", "MaxPoolRelevance": "max_pool_relevance"}
BINDINGS = ("pybind", "ort")


def outcome(kernels, binding, op, inputs, attrs, global_threads=False):
    """`op` on `inputs` ({name: array} in the op's input order) with `attrs` through `binding`:
    the pybind11 module `kernels`, or an ONNX Runtime session with its custom-op library.
    ("ok", output) or ("error", message); any other exception propagates."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

    try:
        if binding == "pybind":
            return "ok", getattr(kernels, PYBIND_NAMES[op])(*inputs.values(), threads=2, **attrs)
        sess = _session(op, list(inputs), kernels.library_path(), global_threads, **attrs)
        return "ok", sess.run(None, inputs)[0]
    except (ValueError, Fail, InvalidArgument, RuntimeException) as e:
        return "error", str(e)


BIG = 2**62
# (op, {input: shape}, attributes, the error expected: a regex, or None for a result; bindings)
HOSTILE = [
    # 1. segfaults: d·(k − 1) overflowing past the geometry check
    ("MaxPoolGradient", {"x": (1, 2, 4, 4), "g": (1, 2, 8, 4)},
     {"kernel_shape": [BIG, 1], "dilations": [4, 1]},
     r"MaxPoolGradient: kernel_shape\[0\] must be positive and at most 2147483647", BINDINGS),
    ("RectifiedConvTranspose", {"g": (1, 4, 4, 8), "z": (1, 4, 4, 8), "a": (1, 2, 4, 4)},
     {"kernel_shape": [1, BIG], "dilations": [1, 4]},
     r"RectifiedConvTranspose: kernel_shape\[1\] must be positive", BINDINGS),
    # 2. hangs: ~2^62 kernel taps
    ("NormGrad", {"g": (1, 2, 8, 4), "a": (1, 3, 4, 4)},
     {"mode": "conv", "kernel_shape": [BIG, 1], "dilations": [4, 1]},
     r"NormGrad: kernel_shape\[0\] must be positive", BINDINGS),
    ("RectifiedConvTranspose", {"g": (1, 4, 8, 4), "z": (1, 4, 8, 4), "a": (1, 2, 4, 4)},
     {"kernel_shape": [BIG, 1], "dilations": [4, 1]},
     r"RectifiedConvTranspose: kernel_shape\[0\] must be positive", BINDINGS),
    # 3. invalid geometry accepted: pads of 2^63 − 1 (the sum wrapped around to 2: zeros came back)
    ("NormGrad", {"g": (1, 1, 2, 2), "a": (1, 1, 4, 4)}, {"mode": "conv", "pads": [2**63 - 1] * 4},
     r"NormGrad: pads\[0\] must be non-negative and at most 2147483647", BINDINGS),
    ("RectifiedConvTranspose", {"g": (1, 1, 2, 2), "z": (1, 1, 2, 2), "a": (1, 1, 4, 4)},
     {"pads": [2**63 - 1] * 4}, r"RectifiedConvTranspose: pads\[0\] must be non-negative",
     BINDINGS),
    ("MaxPoolGradient", {"x": (1, 1, 4, 4), "g": (1, 1, 2, 2)}, {"pads": [2**63 - 1] * 4},
     r"MaxPoolGradient: pads\[0\] must be non-negative", BINDINGS),
    # a kernel larger than the padded input (C++ division truncated -1/2 to 0: a 1x1 output)
    ("NormGrad", {"g": (1, 1, 1, 1), "a": (1, 1, 2, 2)},
     {"mode": "conv", "kernel_shape": [3, 3], "strides": [2, 2]},
     r"NormGrad: on axis 2 the dilated kernel .* is larger than the padded input", BINDINGS),
    ("RectifiedConvTranspose", {"g": (1, 1, 1, 1), "z": (1, 1, 1, 1), "a": (1, 1, 2, 2)},
     {"kernel_shape": [3, 3], "strides": [2, 2]},
     r"RectifiedConvTranspose: on axis 2 the dilated kernel .* larger than the padded", BINDINGS),
    ("MaxPoolGradient", {"x": (1, 1, 2, 2), "g": (1, 1, 1, 1)},
     {"kernel_shape": [3, 3], "strides": [2, 2]},
     r"MaxPoolGradient: on axis 2 the dilated kernel .* larger than the padded", BINDINGS),
    ("MaxPoolRelevance", {"x": (1, 2, 2, 2), "s": (1, 1, 1, 1)},
     {"kernel_shape": [3, 3], "strides": [2, 2]},
     r"MaxPoolRelevance: on axis 2 the dilated kernel .* larger than the padded", BINDINGS),
    # epsilon: finite and non-negative
    *[("RectifiedConvTranspose", {"g": (1, 1, 2, 2), "z": (1, 1, 2, 2), "a": (1, 1, 2, 2)},
       {"epsilon": eps}, r"RectifiedConvTranspose: epsilon must be finite and non-negative",
       BINDINGS)
      for eps in (float("nan"), float("inf"), -1.0)],
    ("RectifiedConvTranspose", {"g": (1, 0, 2, 2), "z": (1, 0, 2, 2), "a": (1, 0, 2, 2)},
     {"group": BIG}, r"RectifiedConvTranspose: group must be positive and at most", BINDINGS),
    ("NormGrad", {"g": (1, 1, 2, 2), "a": (1, 1, 2, 2)}, {"mode": "bogus"},
     r"NormGrad: mode must be identity, conv or selective, not 'bogus'", BINDINGS),
    # typed attributes (pybind11 types its arguments itself): mode=3 ran identity mode
    ("NormGrad", {"g": (1, 1, 2, 2), "a": (1, 1, 2, 2)}, {"mode": 3},
     r"NormGrad: attribute mode must be a string", ("ort",)),
    ("RectifiedConvTranspose", {"g": (1, 1, 2, 2), "z": (1, 1, 2, 2), "a": (1, 1, 2, 2)},
     {"epsilon": 1}, r"RectifiedConvTranspose: attribute epsilon must be a float", ("ort",)),
    ("RectifiedConvTranspose", {"g": (1, 1, 2, 2), "z": (1, 1, 2, 2), "a": (1, 1, 2, 2)},
     {"group": 1.0}, r"RectifiedConvTranspose: attribute group must be an int", ("ort",)),
    ("MaxPoolGradient", {"x": (1, 1, 4, 4), "g": (1, 1, 2, 2)},
     {"kernel_shape": [2.0, 2.0], "strides": [2, 2]},
     r"MaxPoolGradient: attribute kernel_shape must be a list of ints", ("ort",)),
    ("MaxPoolGradient", {"x": (1, 1, 4, 4), "g": (1, 1, 2, 2)}, {"kernel_shape": [2, 2, 2]},
     r"MaxPoolGradient: attribute kernel_shape needs 2 values", ("ort",)),
    # valid extreme geometry computes, over the taps inside the input only: window (1, 1) reads
    # a[0, 0] and no other window reads anything (loops of 2^62 taps before)
    ("NormGrad", {"g": (1, 1, 2, 2), "a": (1, 1, 1, 1)},
     {"mode": "conv", "kernel_shape": [2**31 - 1] * 2, "strides": [2**31 - 1] * 2,
      "pads": [2**31 - 1] * 4}, None, BINDINGS),
    ("RectifiedConvTranspose", {"g": (1, 1, 2, 2), "z": (1, 1, 2, 2), "a": (1, 1, 1, 1)},
     {"kernel_shape": [2**31 - 1] * 2, "strides": [2**31 - 1] * 2, "pads": [2**31 - 1] * 4},
     None, BINDINGS),
    ("MaxPoolGradient", {"x": (1, 1, 1, 1), "g": (1, 1, 2, 2)},
     {"kernel_shape": [2**31 - 1] * 2, "strides": [2**31 - 1] * 2, "pads": [2**31 - 1] * 4},
     None, BINDINGS),
]
# what the valid extreme cases give on inputs of ones
EXTREME_RESULTS = {"NormGrad": [[0, 0], [0, 1]], "RectifiedConvTranspose": [[1]],
                   "MaxPoolGradient": [[1]]}


def _hostile_outcomes(binding):
    """Runs HOSTILE's cases for `binding` in a child interpreter (so a crash fails the test
    instead of killing pytest, and a hang times out): one JSON outcome per case."""
    cases = [i for i, case in enumerate(HOSTILE) if binding in case[4]]
    code = ("import json, sys\nimport numpy as np\nimport test_kernels as t\n"
            f"for i in {cases}:\n"
            "    op, shapes, attrs, expected, _ = t.HOSTILE[i]\n"
            "    print('case', i, op, attrs, file=sys.stderr, flush=True)\n"
            "    fill = 0.0 if expected else 1.0\n"
            "    inputs = {k: np.full(s, fill, np.float32) for k, s in shapes.items()}\n"
            f"    status, out = t.outcome(t._kernels, {binding!r}, op, inputs, attrs)\n"
            "    out = out if status == 'error' else out.tolist()\n"
            "    print(json.dumps([i, status, out]), flush=True)\n")
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                timeout=120, cwd=Path(__file__).parent)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"a case hung; finished before it:\n{e.stdout}")
    assert result.returncode == 0, \
        f"crashed ({result.returncode}) after:\n{result.stdout}\n{result.stderr[-3000:]}"
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize("binding", BINDINGS)
def test_hostile_attributes_are_errors_not_crashes_or_hangs(binding):
    outcomes = _hostile_outcomes(binding)
    assert len(outcomes) == sum(binding in case[4] for case in HOSTILE)
    for i, status, out in outcomes:
        op, shapes, attrs, expected, _ = HOSTILE[i]
        if expected is None:
            assert status == "ok", (op, attrs, out)
            np.testing.assert_array_equal(np.asarray(out)[0, 0], EXTREME_RESULTS[op])
        else:
            assert status == "error" and re.search(expected, out), (op, attrs, status, out)
