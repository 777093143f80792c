"""The C++ side: the production path (cmake --install, find_package(onnx_saliency), examples/cpp
against the ONNX Runtime library inside the installed wheel) giving the same map as the Python
API, for a class target and for a detection (target_anchor / target_box inputs). The kernel test
binary runs under the sanitizers in test_kernel_fuzz.py."""

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


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    """The explain_map binary, built once per module: the library installed with cmake, the
    example found through find_package(onnx_saliency)."""
    tmp = tmp_path_factory.mktemp("cpp")
    build, prefix, example = tmp / "build", tmp / "prefix", tmp / "example"
    _run(["cmake", "-S", ROOT, "-B", build, "-DOSAL_CUDA=OFF", f"-DCMAKE_INSTALL_PREFIX={prefix}"])
    _run(["cmake", "--build", build, "-j2"])
    _run(["cmake", "--install", build])
    assert (prefix / "lib" / "cmake" / "onnx_saliency" / "onnx_saliencyConfig.cmake").is_file()
    assert (prefix / "include" / "onnx_saliency" / "rectified_conv_transpose.h").is_file()
    _run(["cmake", "-S", ROOT / "examples" / "cpp", "-B", example, f"-DCMAKE_PREFIX_PATH={prefix}",
          f"-DONNXRUNTIME_LIBRARY={_ort_library()}"])
    _run(["cmake", "--build", example, "-j2"])
    return example / "explain_map"


def test_cpp_example_gives_the_python_maps(tmp_path, example):
    from conftest import export_torchvision
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
        _run([example, graph, tmp_path / "image.npy", 5, out, key])
        np.testing.assert_allclose(np.load(out), maps[key], rtol=1e-5,
                                   atol=1e-6 * np.abs(maps[key]).max())
    default = tmp_path / "default.npy"   # no MAP_NAME: the first map, found by its name
    _run([example, graph, tmp_path / "image.npy", 5, default])
    np.testing.assert_array_equal(np.load(default), np.load(tmp_path / "map0.npy"))
    bad = subprocess.run([str(example), str(graph), str(tmp_path / "missing.npy"), "0",
                          str(tmp_path / "x.npy")], capture_output=True, text=True)
    assert bad.returncode == 1 and "cannot open" in bad.stderr
    for target in ("1000", "-5"):          # out of range: the run fails, nothing is written
        bad = subprocess.run([str(example), str(graph), str(tmp_path / "image.npy"),
                              target, str(tmp_path / "y.npy")], capture_output=True, text=True)
        assert bad.returncode == 1 and "out of data bounds" in bad.stderr, bad.stderr
        assert not (tmp_path / "y.npy").exists()
    np.save(tmp_path / "huge.npy", np.full_like(x, 3e38))   # float32 overflow inside: finite false
    bad = subprocess.run([str(example), str(graph), str(tmp_path / "huge.npy"), "5",
                          str(tmp_path / "z.npy")], capture_output=True, text=True)
    assert bad.returncode == 1 and "contain NaN or Inf" in bad.stderr, bad.stderr


def test_cpp_example_explains_a_detection(tmp_path, example):
    """NudeNet's YOLOv8n on the astronaut photo and its mirror image: explainer graphs saved for
    an anchor and for a box target, run by explain_map with target_anchor=A0,A1 (one per image)
    and target_box=x1,y1,x2,y2 (one box for both images), give the Python API's maps for the
    same targets. Tolerance rtol 1e-5 (atol 1e-6 of the map's peak): the same graph in the same
    ONNX Runtime build, so only float32 rounding could differ (here the maps are bitwise equal).
    Bad NAME=... arguments fail with one line and exit 1, writing nothing."""
    import detectors
    from onnx_saliency import targets as T
    model = detectors.nudenet_static_model(tmp_path / "320n_static.onnx")
    x = detectors.nudenet_preprocess(detectors.astronaut())[0]
    x = np.concatenate([x, x[..., ::-1]])                # the photo and its mirror
    np.save(tmp_path / "image.npy", x)
    ex = osal.Explainer(model, methods=["gradient", "gradcam"])
    logits = ex.run(x, T.Detection())["logits"]
    found = T.candidates(logits)
    names = detectors.nudenet_classes()
    faces = [next(c for c in per if names[c.class_].startswith("FACE")) for per in found]
    box = tuple(np.float32(v) for v in faces[0].box)    # as the C++ side reads it: float32

    def check(target, graph_target, target_arg, args):
        graph = tmp_path / f"{graph_target.mode}.onnx"
        ex.save(graph, target=graph_target)
        maps = ex.explain(x, target)
        for key in ex.map_names:
            assert np.abs(maps[key]).max() > 0, key
            out = tmp_path / f"{graph_target.mode}_{key}.npy"
            _run([example, graph, tmp_path / "image.npy", target_arg, out, key, *args])
            np.testing.assert_allclose(np.load(out), maps[key], rtol=1e-5,
                                       atol=1e-6 * np.abs(maps[key]).max())
        return graph

    per_image = [T.Detection(anchor=f.anchor) for f in faces]
    anchor_graph = check(per_image, T.Detection(anchor=faces[0].anchor), -1,
                         ["target_anchor=" + ",".join(str(f.anchor) for f in faces)])
    k = faces[0].class_
    box_target = T.Detection(class_=k, box=box)
    assert box_target.chosen(logits)[0].anchor == faces[0].anchor   # the box picks the face
    box_graph = check(box_target, box_target, k, ["target_box=" + ",".join(map(str, box))])

    bad = [(anchor_graph, [], "input 'target_anchor' (int64 [N]"),
           (anchor_graph, ["target_anchor=1,2,3"], "takes 1 or 2 values, got 3"),
           (anchor_graph, ["target_anchor=12.5"], "'12.5' is not an int64 integer"),
           (anchor_graph, ["target_anchor=1", "target_box=1,2,3,4"],
            "no target input 'target_box'"),
           (box_graph, ["target_box=1,2,3"], "takes 4 values, got 3"),
           (box_graph, ["target_box=1,2,x,4"], "'x' is not a finite number"),
           (box_graph, ["target_box=1,2,3,nan"], "'nan' is not a finite number")]
    for graph, args, message in bad:
        result = subprocess.run([str(a) for a in (example, graph, tmp_path / "image.npy", -1,
                                                  tmp_path / "bad.npy", *args)],
                                capture_output=True, text=True)
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad.npy").exists()
