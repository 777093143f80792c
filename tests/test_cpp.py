"""The C++ side: the production path (cmake --install, find_package(onnx_saliency), examples/cpp
against the ONNX Runtime library inside the installed wheel) giving the same map as the Python
API. The kernel test binary runs under the sanitizers in test_kernel_fuzz.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

import onnx_saliency as osal

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("c++") is None,
                                reason="needs cmake and a C++ compiler")


def _run(cmd, **kw):
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))}\n{result.stdout}\n{result.stderr}"
    return result


def _ort_library() -> Path:
    capi = Path(onnxruntime.__file__).parent / "capi"
    libs = sorted(capi.glob("libonnxruntime.so*")) + sorted(capi.glob("libonnxruntime.*.dylib"))
    assert libs, f"no ONNX Runtime library in {capi}"
    return libs[0]


def test_cpp_example_gives_the_python_maps(tmp_path):
    from conftest import export_torchvision
    build, prefix, example = tmp_path / "build", tmp_path / "prefix", tmp_path / "example"
    _run(["cmake", "-S", ROOT, "-B", build, "-DOSAL_CUDA=OFF", f"-DCMAKE_INSTALL_PREFIX={prefix}"])
    _run(["cmake", "--build", build, "-j2"])
    _run(["cmake", "--install", build])
    assert (prefix / "lib" / "cmake" / "onnx_saliency" / "onnx_saliencyConfig.cmake").is_file()
    assert (prefix / "include" / "onnx_saliency" / "rectified_conv_transpose.h").is_file()
    _run(["cmake", "-S", ROOT / "examples" / "cpp", "-B", example, f"-DCMAKE_PREFIX_PATH={prefix}",
          f"-DONNXRUNTIME_LIBRARY={_ort_library()}"])
    _run(["cmake", "--build", example, "-j2"])

    model = tmp_path / "r18.onnx"
    export_torchvision("resnet18", model, 32)
    ex = osal.Explainer(model, methods=["tsgb", "normgrad"], layers=None, fused=True)
    graph = tmp_path / "explainer.onnx"
    ex.save(graph)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "image.npy", x)
    maps = ex.explain(x, 5)
    assert ex.map_names[0] == "tsgb" and ex.map_names[1].startswith("normgrad@")
    for i, key in enumerate(ex.map_names):
        out = tmp_path / f"map{i}.npy"
        _run([example / "explain_map", graph, tmp_path / "image.npy", 5, out, key])
        np.testing.assert_allclose(np.load(out), maps[key], rtol=1e-5,
                                   atol=1e-6 * np.abs(maps[key]).max())
    default = tmp_path / "default.npy"   # no MAP_NAME: the first map, found by its name
    _run([example / "explain_map", graph, tmp_path / "image.npy", 5, default])
    np.testing.assert_array_equal(np.load(default), np.load(tmp_path / "map0.npy"))
    bad = subprocess.run([str(example / "explain_map"), str(graph), str(tmp_path / "missing.npy"), "0",
                          str(tmp_path / "x.npy")], capture_output=True, text=True)
    assert bad.returncode == 1 and "cannot open" in bad.stderr
    for target in ("1000", "-5"):          # out of range: the run fails, nothing is written
        bad = subprocess.run([str(example / "explain_map"), str(graph), str(tmp_path / "image.npy"),
                              target, str(tmp_path / "y.npy")], capture_output=True, text=True)
        assert bad.returncode == 1 and "out of data bounds" in bad.stderr, bad.stderr
        assert not (tmp_path / "y.npy").exists()
    np.save(tmp_path / "huge.npy", np.full_like(x, 3e38))   # float32 overflow inside: finite false
    bad = subprocess.run([str(example / "explain_map"), str(graph), str(tmp_path / "huge.npy"), "5",
                          str(tmp_path / "z.npy")], capture_output=True, text=True)
    assert bad.returncode == 1 and "contain NaN or Inf" in bad.stderr, bad.stderr
