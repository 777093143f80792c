"""The NormGrad C++ kernel (through pybind11) against NumPy references, over random geometry."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
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
    if ho < 1 or wo < 1:
        return
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
    """TSGB-Conv backward by explicit window loops in float64 NumPy (METHODS.md §5)."""
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
    if case is None:
        return
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

def _session(op, inputs, **attrs):
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
    opts.register_custom_ops_library(fused.library_path())
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def test_custom_op_library_is_built():
    assert _kernels.library_path() is not None
    assert _kernels.ORT_API_VERSION >= 16


@settings(max_examples=15, deadline=None)
@given(**geometry)
def test_rectified_conv_transpose_through_onnxruntime(**kw):
    case = _rct_case(**kw)
    if case is None:
        return
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
    if ho < 1 or wo < 1:
        return
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
    if case is None:
        return
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
    if case is None:
        return
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
