"""The GPU check of the CUDA kernels (tests/cuda), as far as a machine without a GPU can take it.

- The PyTorch routes that tests/cuda/time_torch_routes.py times beside each CUDA kernel compute
  what the kernel computes: checked here against the CPU kernels over random geometries (the
  timing table compares like with like).
- The harness itself (check_cuda_kernels.cpp) runs in its host emulation under the sanitizers
  in test_kernel_fuzz.py.
- Slow: the dry run of tests/cuda/run_on_device.sh (host emulation, PyTorch on the CPU), and the
  CUDA build of the check, which without a GPU must say so and exit 2.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnx_saliency import _kernels

torch = pytest.importorskip("torch")
F = torch.nn.functional
ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("time_torch_routes",
                                               ROOT / "tests" / "cuda" / "time_torch_routes.py")
routes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(routes)

CONV_KERNELS = ("NormGrad(conv)", "NormGrad(identity)", "NormGrad(selective)",
                "RectifiedConvTranspose")


def _out_size(size, k, s, p0, p1, d):
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1


def _geometry(row: dict) -> dict:
    """The row's geometry as the _kernels bindings take it."""
    return {k: row[k] for k in ("kernel_shape", "strides", "pads", "dilations")}


def _peak_relative(ours, theirs) -> float:
    return float(np.abs(ours - theirs).max() / max(np.abs(ours).max(), 1e-30))


@st.composite
def conv_cases(draw):
    kernel = draw(st.sampled_from(CONV_KERNELS))
    k = [draw(st.integers(1, 4)) for _ in range(2)]
    s = [draw(st.integers(1, 3)) for _ in range(2)]
    d = [draw(st.integers(1, 2)) for _ in range(2)]
    pads = [draw(st.integers(0, 2)) for _ in range(4)]
    H, W = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    out = [_out_size(H, k[0], s[0], pads[0], pads[2], d[0]),
           _out_size(W, k[1], s[1], pads[1], pads[3], d[1])]
    if min(out) < 1:
        H, W = H + d[0] * k[0], W + d[1] * k[1]
        out = [_out_size(H, k[0], s[0], pads[0], pads[2], d[0]),
               _out_size(W, k[1], s[1], pads[1], pads[3], d[1])]
    N, G = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    C, K = G * draw(st.integers(1, 3)), G * draw(st.integers(1, 3))
    if kernel == "RectifiedConvTranspose":
        in0, in1 = [N, K, *out], [N, C, H, W]
    elif kernel == "NormGrad(conv)":
        in0, in1, G = [N, K, *out], [N, C, H, W], 1
    else:
        in0 = in1 = [N, C, H, W]
        G = 1
    return dict(kernel=kernel, layer="random", in0=in0, in1=in1, kernel_shape=k, strides=s,
                pads=pads, dilations=d, group=G, epsilon=1e-10)


@settings(max_examples=80, deadline=None)
@given(conv_cases(), st.integers(0, 2**31 - 1))
def test_conv_routes_compute_the_kernels_math(row, seed):
    """NormGrad's three modes and RectifiedConvTranspose (groups, asymmetric pads, strides,
    dilations): PyTorch's route against the CPU kernel, within 1e-5 of the peak."""
    rng = np.random.default_rng(seed)
    arrays = [rng.uniform(-2, 2, s).astype(np.float32) for s in routes.input_shapes(row)]
    geometry = _geometry(row)
    with torch.no_grad():
        if row["kernel"] == "RectifiedConvTranspose":
            ours = _kernels.rectified_conv_transpose(*arrays, group=row["group"], **geometry)
            theirs = routes.rectified_conv_transpose(row, *map(torch.from_numpy, arrays))
        else:
            ours = _kernels.normgrad(*arrays, mode=routes.normgrad_mode(row), **geometry)
            theirs = routes.normgrad(row, *map(torch.from_numpy, arrays))
    assert theirs.shape == ours.shape
    assert _peak_relative(ours, theirs.numpy()) < 1e-5


@st.composite
def pool_cases(draw):
    kernel = draw(st.sampled_from(("MaxPoolGradient", "MaxPoolRelevance")))
    k = [draw(st.integers(1, 4)) for _ in range(2)]
    s = [draw(st.integers(1, 3)) for _ in range(2)]
    d = [draw(st.integers(1, 2)) for _ in range(2)]
    p = [draw(st.integers(0, k[i] // 2)) for i in range(2)]   # PyTorch's bound on pads
    H = draw(st.integers(d[0] * (k[0] - 1) + 1, 14))
    W = draw(st.integers(d[1] * (k[1] - 1) + 1, 14))
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    ceil = draw(st.booleans())
    x = torch.zeros(N, C, H, W)   # PyTorch's own grid for the mode (ceil may drop a window)
    out = F.max_pool2d(x, k, s, p, d, ceil_mode=ceil).shape[2:]
    in1 = [N, C, *out] if kernel == "MaxPoolGradient" else [N, 1, *out]
    return dict(kernel=kernel, layer="random", in0=[N, C, H, W], in1=in1, kernel_shape=k,
                strides=s, pads=[p[0], p[1], p[0], p[1]], dilations=d, group=1,
                epsilon=1e-10), draw(st.booleans())


@settings(max_examples=60, deadline=None)
@given(pool_cases(), st.integers(0, 2**31 - 1))
def test_pool_routes_compute_the_kernels_math(case, seed):
    """MaxPoolGradient and MaxPoolRelevance (ceil mode, dilations, tied data: PyTorch's first
    maximum is the kernels'): PyTorch's routes, with and without the saved indices, against the
    CPU kernel."""
    row, ties = case
    rng = np.random.default_rng(seed)
    x = (rng.integers(-2, 3, row["in0"]) if ties else rng.uniform(-2, 2, row["in0"]))
    x = x.astype(np.float32)
    g = rng.uniform(-2, 2, row["in1"]).astype(np.float32)
    geometry = _geometry(row)
    tx, tg = torch.from_numpy(x), torch.from_numpy(g)
    with torch.no_grad():
        if row["kernel"] == "MaxPoolGradient":
            ours = _kernels.max_pool_gradient(x, g, **geometry)
            theirs = routes.max_pool_gradient(row, tx, tg)
        else:
            ours = _kernels.max_pool_relevance(x, g, **geometry)
            theirs = routes.max_pool_relevance(row, tx, tg)
        timed = {name: fn() for name, fn in routes.routes(dict(row), "cpu").items()}
    assert _peak_relative(ours, theirs.numpy()) < 1e-5
    assert set(timed) == {"PyTorch", "PyTorch with forward"}   # the table's two routes agree
    torch.testing.assert_close(timed["PyTorch"], timed["PyTorch with forward"])


def test_routes_refuse_what_pytorch_cannot_pool():
    row = dict(kernel="MaxPoolGradient", in0=[1, 1, 6, 6], in1=[1, 1, 3, 3], kernel_shape=[2, 2],
               strides=[2, 2], pads=[0, 0, 1, 1], dilations=[1, 1])
    with pytest.raises(ValueError, match="symmetric pads"):
        routes.max_pool_gradient(row, torch.zeros(1, 1, 6, 6), torch.zeros(1, 1, 3, 3))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_run_on_device_dry_run(tmp_path):
    """The device script end to end in its host emulation: build, check, timing, PyTorch's
    table (on the CPU)."""
    import sys
    env = dict(os.environ, OUT=str(tmp_path / "out"), OSAL_CUDA_BUILD=str(tmp_path / "build"),
               OSAL_CUDA_EMULATE="1", PYTHON=sys.executable)
    result = subprocess.run(["bash", str(ROOT / "tests" / "cuda" / "run_on_device.sh")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "0 failures" in log and "refused by the checks: 32 of 32" in log
    table = (tmp_path / "out" / "table.md").read_text()
    assert table.count("\n| ") == 1 + 14   # the header and the 14 real layers at batch 1


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None or shutil.which("cmake") is None,
                    reason="needs nvcc and cmake")
def test_cuda_check_builds(tmp_path):
    """The CUDA build of the check compiles and links; without a visible GPU it says so and
    exits 2 (checked nothing)."""
    build = tmp_path / "build"
    for cmd in (["cmake", "-S", ROOT, "-B", build, "-DOSAL_CUDA_TESTS=ON", "-DOSAL_ORT_LIB=OFF",
                 "-DCMAKE_CUDA_ARCHITECTURES=90"],
                ["cmake", "--build", build, "-j2", "--target", "check_cuda_kernels"]):
        result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    if shutil.which("nvidia-smi") is None:
        result = subprocess.run([str(build / "check_cuda_kernels")], capture_output=True,
                                text=True)
        assert result.returncode == 2
        assert "no CUDA device is visible" in result.stderr
