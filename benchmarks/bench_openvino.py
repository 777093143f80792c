"""Explain time in OpenVINO as a ratio to OpenVINO's own forward pass, and openvino-xai's
white-box ReciproCAM beside it, in one process.

    python benchmarks/bench_openvino.py [--models resnet50 mobilenet_v2 efficientnet_lite0]
                                        [--batches 1] [--repeat 7] [--threads 2]

For each model (torchvision resnet50 and mobilenet_v2 with random weights, exported at 224 px with
a dynamic batch; the real ImageNet EfficientNet-Lite0 of examples/real_model.py) and each method
of methods.REGISTRY: `Explainer(model, [method], runtime="openvino")` (the portable graph
compiled by OpenVINO for its CPU, float32, `--threads` inference threads) timed against the
model's own forward pass compiled the same way (`forward_session()`), the two back to back in each
of `--repeat` rounds, the median ratio taken (onnx_saliency.bench.paired_ratio); and the same
paired ratio for openvino-xai's ReciproCAM (its XAI branch inserted into the same ONNX model read
by OpenVINO, compiled with the same configuration: f32, same threads; batch 1 only, the batch its
branch is built for; maps for every class at once, the method's own output). Also the time to
build and compile each explainer.

openvino-xai 1.1.0 (the latest) pins openvino-dev==2024.4 and numpy 1.x, and imports
`openvino.runtime`, which OpenVINO 2026 removed; it is not in the test extra. Install it without
its dependencies beside the pinned OpenVINO and the benchmark aliases `openvino.runtime` to
`openvino` (the names it uses are the same objects):

    pip install --no-deps --target .xai openvino-xai==1.1.0
    PYTHONPATH=.xai python benchmarks/bench_openvino.py

Without it the ReciproCAM column reads "–".
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "examples"))
warnings.simplefilter("ignore")

from onnx_saliency.bench import paired_ratio  # noqa: E402  (the package's own clock)


def openvino_xai():
    """The openvino_xai module (with `openvino.runtime` aliased where OpenVINO dropped it), or
    None where it is not installed."""
    import openvino
    try:
        importlib.import_module("openvino.runtime")
    except ImportError:
        sys.modules["openvino.runtime"] = openvino
        openvino.runtime = openvino
        for sub in ("opset10", "utils", "utils.data_helpers", "utils.data_helpers.wrappers"):
            sys.modules[f"openvino.runtime.{sub}"] = importlib.import_module(f"openvino.{sub}")
    try:
        return importlib.import_module("openvino_xai")
    except ImportError:
        return None


def model_path(name: str, folder: Path) -> Path:
    if name == "efficientnet_lite0":
        from real_model import efficientnet_lite0
        return efficientnet_lite0(folder / "efficientnet_lite0.onnx")
    from conftest import export_torchvision
    path = folder / f"{name}.onnx"
    export_torchvision(name, path, 224)
    return path


def flattened(path: Path, out: Path) -> Path:
    """`path` with each Reshape(GlobalAveragePool(x), computed shape) written as Flatten(·, axis=1)
    (the same values: torch's x.view(x.size(0), -1) of a [N, C, 1, 1] tensor); `out`, or `path`
    itself where there is none."""
    model = onnx.load(str(path))
    consts = {t.name for t in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    pooled = {n.output[0] for n in model.graph.node if n.op_type == "GlobalAveragePool"}
    changed = False
    for node in model.graph.node:
        if node.op_type == "Reshape" and node.input[1] not in consts and node.input[0] in pooled:
            node.op_type = "Flatten"
            del node.input[1:]
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("axis", 1))
            changed = True
    if not changed:
        return path
    onnx.save(model, str(out))
    return out


def reciprocam(path: Path, threads: int):
    """A callable running openvino-xai's ReciproCAM on one image batch, compiled like ours.
    openvino-xai cannot insert its branch into the EfficientNet-Lite0 export as written: its
    classifier's Reshape takes the batch size from Shape(input), and the branch (the network's
    tail run on h·w masked copies of the feature map) then names the input of openvino-xai's
    model copy ("Model references undeclared parameters"); so a Reshape to rank 2 whose shape is
    computed is given to it as the equivalent Flatten(axis=1) (`flattened`)."""
    xai = openvino_xai()
    if xai is None:
        return None
    import openvino as ov
    from openvino_xai.methods.white_box.recipro_cam import ReciproCAM
    core = ov.Core()
    method = ReciproCAM(core.read_model(str(path)), prepare_model=False)
    model = method.prepare_model(load_model=False)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                 "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})


def main():
    import onnx_saliency as osal
    from onnx_saliency.methods import REGISTRY

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+",
                        default=["resnet50", "mobilenet_v2", "efficientnet_lite0"])
    parser.add_argument("--methods", nargs="+", default=list(REGISTRY))
    parser.add_argument("--batches", nargs="+", type=int, default=[1])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import openvino as ov
    print(f"OpenVINO {ov.__version__}; openvino-xai "
          f"{'present' if openvino_xai() is not None else 'absent'}; "
          f"loadavg before: {os.getloadavg()}", flush=True)
    workdir = tempfile.TemporaryDirectory()
    tmp = Path(workdir.name)
    print("| model | batch | method | explain / OpenVINO forward | OpenVINO forward (ms) | "
          "build + compile (s) |")
    print("|---|---|---|---|---|---|", flush=True)
    for name in args.models:
        path = model_path(name, tmp)
        xs = {b: np.random.default_rng(0).standard_normal((b, 3, 224, 224)).astype(np.float32)
              for b in args.batches}
        forward = None
        for method in args.methods:
            start = time.perf_counter()
            ex = osal.Explainer(path, methods=[method], runtime="openvino", threads=args.threads)
            ex.explain(xs[args.batches[0]][:1])   # compiles
            build = time.perf_counter() - start
            forward = forward or ex.forward_session()
            for batch, x in xs.items():
                ratio, t_fwd = paired_ratio(lambda: ex.explain(x, None),
                                            lambda: forward.run(None, {ex.input_name: x}),
                                            args.repeat)
                print(f"| {name} | {batch} | {method} | {ratio:.2f}× | {1e3 * t_fwd:.1f} | "
                      f"{build:.1f} |", flush=True)
            ex = None   # one explainer alive at a time
        if 1 in xs:
            run = reciprocam(flattened(path, tmp / f"{name}_xai.onnx"), args.threads)
            if run is None:
                print(f"| {name} | 1 | openvino-xai ReciproCAM | – | – | – |", flush=True)
            else:
                x = xs[1]
                ratio, t_fwd = paired_ratio(lambda: run(x),
                                            lambda: forward.run(None, {"input": x}), args.repeat)
                print(f"| {name} | 1 | openvino-xai ReciproCAM | {ratio:.2f}× | "
                      f"{1e3 * t_fwd:.1f} | – |", flush=True)
    print(f"\nloadavg after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
