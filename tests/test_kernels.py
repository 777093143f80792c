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
