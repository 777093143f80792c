"""The kernels under AddressSanitizer + UndefinedBehaviorSanitizer, built into a temporary
directory with -fsanitize=address,undefined (kernels, pybind11 module and ONNX Runtime custom-op
library): the C++ kernel test, the CUDA check's harness in its host emulation, and a hypothesis
fuzz over extreme attribute values and small shapes through both bindings, which must agree. The fuzz runs in a child interpreter with the
sanitizer runtimes preloaded (`python tests/test_kernel_fuzz.py BUILD_DIR` is that child); a
sanitizer report, a crash, a hang or a disagreement fails the test."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pybind11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_cpp import ROOT, _run
from test_kernels import BINDINGS, outcome

CASES = 10_000
pytestmark = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("c++") is None,
                                reason="needs cmake and a C++ compiler")


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory) -> Path:
    """The sanitized build: test_kernels, the _kernels module and the custom-op library."""
    tmp = tmp_path_factory.mktemp("sanitized")
    build = tmp / "build"
    _run(["cmake", "-S", ROOT, "-B", build, "-DOSAL_SANITIZE=ON", "-DOSAL_BUILD_TESTS=ON",
          "-DOSAL_PYTHON_MODULE=ON", "-DOSAL_CUDA=OFF", "-DCMAKE_BUILD_TYPE=Debug",
          f"-DPython_EXECUTABLE={sys.executable}",
          f"-Dpybind11_DIR={pybind11.get_cmake_dir()}"])   # the test extra brings pybind11
    _run(["cmake", "--build", build, "-j2"])
    return build


def _sanitizer_report(stderr: str) -> str:
    """The head of the first sanitizer report in `stderr` (what and where), or ""."""
    found = re.search(r"^.*(runtime error|ERROR: \w+Sanitizer)", stderr, re.MULTILINE)
    return stderr[found.start():found.start() + 4000] if found else ""


def test_kernels_under_sanitizers(sanitized):
    result = _run([sanitized / "test_kernels"])
    assert "0 failures" in result.stdout
    assert not _sanitizer_report(result.stderr), _sanitizer_report(result.stderr)


def test_cuda_check_harness_under_sanitizers(sanitized):
    """tests/cuda/check_cuda_kernels.cpp in its host emulation (the CPU kernels standing in for
    the device): every generated geometry valid, every malformed input refused, every planted
    difference caught, no sanitizer report."""
    result = _run([sanitized / "check_cuda_kernels_host", "--cases", "60"])
    assert "0 failures" in result.stdout and "refused by the checks: 32 of 32" in result.stdout
    assert "INVALID" not in result.stdout and "NOT REFUSED" not in result.stdout
    assert not _sanitizer_report(result.stderr), _sanitizer_report(result.stderr)


def _sanitizer_env(module: Path) -> dict:
    """The environment of a Python child that loads `module`: the sanitizer runtimes it links
    preloaded (the interpreter itself is not instrumented), leak checks off (the interpreter
    keeps its memory at exit)."""
    ldd = subprocess.run(["ldd", str(module)], capture_output=True, text=True, check=True).stdout
    runtimes = re.findall(r"=> (\S*lib(?:asan|ubsan)\S*)", ldd)
    assert len(runtimes) == 2, ldd
    return dict(os.environ, LD_PRELOAD=" ".join(runtimes), ASAN_OPTIONS="detect_leaks=0",
                UBSAN_OPTIONS="print_stacktrace=1")


def test_fuzz_both_bindings_under_sanitizers(sanitized):
    module = next(sanitized.glob("_kernels*.so"))
    result = subprocess.run([sys.executable, __file__, str(sanitized)], capture_output=True,
                            text=True, timeout=900, env=_sanitizer_env(module))
    report = _sanitizer_report(result.stderr)
    assert not report, report
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-8000:]
    assert f"{CASES} cases" in result.stdout, result.stdout


# -- the fuzz (run in the child) -------------------------------------------------------------

EXTREMES = (0, -1, 1, 2, 2**31 - 1, 2**31, 2**62, 2**63 - 1)
dim = st.integers(0, 4)


def _out_size(size, k, s, p0, p1, d):
    """The output size the geometry gives (exact integers), or None."""
    if min(k, s, d) < 1 or min(p0, p1) < 0:
        return None
    span = size + p0 + p1 - d * (k - 1) - 1
    return span // s + 1 if span >= 0 else None


@st.composite
def cases(draw):
    """(op, {input: array}, attributes): in half the cases valid attributes (the largest allowed
    among them) and output-side spatial sizes the geometry gives when small; in the other half
    also extreme or invalid attributes (EXTREMES, small ones) and any sizes."""
    valid = draw(st.booleans())

    def pick(valid_values, other_values):
        return draw(st.sampled_from(valid_values if valid else valid_values + other_values))

    op = draw(st.sampled_from(["NormGrad", "RectifiedConvTranspose", "MaxPoolGradient",
                               "MaxPoolRelevance"]))
    attrs = {}
    for name, size, lowest in (("kernel_shape", 2, 1), ("strides", 2, 1), ("pads", 4, 0),
                               ("dilations", 2, 1)):
        small = [lowest] * 3 + list(range(lowest + 1, 4))  # mostly the smallest
        attrs[name] = [pick(small + [2**31 - 1], list(EXTREMES) + [-1, 3, 4]) for _ in range(size)]
    n, c, h, w = (draw(dim) for _ in range(4))
    out = []
    for i, size in enumerate((h, w)):
        want = _out_size(size, attrs["kernel_shape"][i], attrs["strides"][i], attrs["pads"][i],
                          attrs["pads"][i + 2], attrs["dilations"][i])
        fits = want is not None and want <= 6 and (valid or draw(st.booleans()))
        out.append(want if fits else draw(dim))
    if op == "NormGrad":
        attrs["mode"] = pick(["identity", "conv", "selective"], ["bogus"])
        k = draw(dim)
        like_a = attrs["mode"] != "conv" and (valid or draw(st.booleans()))
        shapes = {"g": (n, c, h, w) if like_a else (n, k, *out), "a": (n, c, h, w)}
    elif op == "RectifiedConvTranspose":
        attrs["group"] = group = pick([1, 2, 3], [0, -1, 2**31, 2**62, 2**63 - 1])
        attrs["epsilon"] = pick([0.0, 1e-9], [math.nan, math.inf, -1.0])
        per = min(max(group, 1), 3)  # channels: multiples of a small group
        c, k = draw(st.integers(0, 2)) * per, draw(st.integers(0, 2)) * per
        shapes = {"g": (n, k, *out), "z": (n, k, *out), "a": (n, c, h, w)}
    elif op == "MaxPoolGradient":
        shapes = {"x": (n, c, h, w), "g": (n, c, *out)}
    else:
        shapes = {"x": (n, c, h, w), "s": (n, 1, *out)}
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    inputs = {name: rng.integers(-2, 3, shape).astype(np.float32) for name, shape in shapes.items()}
    return op, inputs, attrs


def fuzz(kernels):
    count = 0

    @settings(max_examples=CASES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=cases())
    def one(case):
        nonlocal count
        count += 1
        op, inputs, attrs = case
        (pybind, p_out), (ort, o_out) = (outcome(kernels, b, op, inputs, attrs, global_threads=True)
                                         for b in BINDINGS)
        where = (op, {k: v.shape for k, v in inputs.items()}, attrs, p_out, o_out)
        assert pybind == ort, where
        if pybind == "ok":
            np.testing.assert_allclose(o_out, p_out, rtol=1e-6, equal_nan=True, err_msg=str(where))
        else:  # one sentence naming the op (ORT checks the attributes first, at session start)
            assert p_out.startswith(f"{op}: ") and f": {op}: " in o_out, where

    one()
    print(f"{count} cases")


if __name__ == "__main__":
    sys.path.insert(0, sys.argv[1])  # the sanitized _kernels (a top-level module there)
    import _kernels
    from onnxruntime.capi import _pybind_state

    _pybind_state.set_global_thread_pool_sizes(2, 1)  # before the first session: 2 threads
    fuzz(_kernels)
