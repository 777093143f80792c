"""Explain time as a ratio to the model's own ONNX Runtime forward pass, in one process.

    python benchmarks/bench_methods.py [--models resnet50 vgg16] [--batches 1 8] [--repeat 5]
                                       [--tsgb-normgrad]

For each torchvision model (random weights, 224x224, exported with a dynamic batch) and batch size,
with 2 threads everywhere: the time of each explainer graph (one method each) divided by the time
of the plain ORT forward pass, the two run back to back in each of `--repeat` rounds and the
median ratio taken (the machine's speed drifts; a forward timed once, apart from the methods,
would skew every ratio); the same paired ratio for Captum on PyTorch (its method over PyTorch's
own forward); and the time to build the explainer graph. Needs the `test` extra.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
warnings.simplefilter("ignore")

from onnx_saliency.bench import paired_ratio  # noqa: E402  (the package's own clock)

LAYER = {"resnet50": "layer4", "vgg16": "features.29"}
LAYERS4 = {"resnet50": ["layer1", "layer2", "layer3", "layer4"],
           "vgg16": ["features.8", "features.15", "features.22", "features.29"]}


def main():
    import onnxruntime as ort
    import torch
    from captum.attr import LayerGradCam, Saliency

    import onnx_saliency as osal
    from conftest import export_torchvision

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["resnet50", "vgg16"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tsgb-normgrad", action="store_true",
                        help="also TSGB, NormGrad at four layers (fused and portable) and meta")
    parser.add_argument("--no-meta", action="store_true", help="leave out the meta-saliency rows")
    args = parser.parse_args()
    torch.set_num_threads(2)
    workdir = tempfile.TemporaryDirectory()    # the exported models (~0.6 GB), removed at exit
    tmp = Path(workdir.name)
    print("| model | batch | method | ours / ORT forward | Captum / PyTorch forward | ORT forward (ms) |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        path = tmp / f"{name}.onnx"
        model = export_torchvision(name, path, 224)
        layer = LAYER[name]
        start = time.perf_counter()
        osal.Explainer(path, methods=["gradient"])
        build = time.perf_counter() - start
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        fwd = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        # label -> (methods, layers, fused, Captum equivalent); meta rows: (…, "meta")
        methods = {"gradient": (["gradient"], None, None, lambda m, x: Saliency(m).attribute(x, target=0)),
                   f"gradcam@{layer}": (["gradcam"], [layer], None, lambda m, x: LayerGradCam(
                       m, m.get_submodule(layer)).attribute(x, target=0)),
                   "guided_backprop": (["guided_backprop"], None, None, None)}
        if args.tsgb_normgrad:
            four = LAYERS4[name]
            for fused in (True, False):
                kind = "fused" if fused else "portable"
                methods[f"tsgb ({kind})"] = (["tsgb"], None, fused, None)
                methods[f"normgrad_selective@4 layers ({kind})"] = (["normgrad_selective"], four, fused, None)
                methods[f"normgrad@4 layers ({kind})"] = (["normgrad"], four, fused, None)
            if not args.no_meta:
                methods["meta gradient"] = (["gradient"], None, "meta", None)
                methods["meta normgrad_selective@4 layers"] = (
                    ["normgrad_selective"], four, "meta", None)
        xs = {batch: np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
              for batch in args.batches}
        rows = []
        for key, (ms, ls, f, captum_fn) in methods.items():   # one explainer alive at a time
            ex = osal.Explainer(path, methods=ms, layers=ls, threads=2,
                                **({"meta": True} if f == "meta" else {"fused": f}))
            for batch, x in xs.items():
                ratio, t_fwd = paired_ratio(lambda: ex.explain(x, target=0),
                                            lambda: fwd.run(None, {"input": x}), args.repeat)
                captum = "–"
                if captum_fn is not None:
                    xt = torch.from_numpy(x)

                    def torch_forward():
                        with torch.no_grad():
                            model(xt)
                    ratio_c, _ = paired_ratio(lambda: captum_fn(model, xt.clone()), torch_forward,
                                              args.repeat)
                    captum = f"{ratio_c:.2f}×"
                rows.append((batch, (f"| {name} | {batch} | {key} | {ratio:.2f}× | {captum} | "
                                     f"{1e3 * t_fwd:.0f} |")))
            ex = None  # one explainer alive at a time
        for _, row in sorted(rows, key=lambda r: r[0]):
            print(row, flush=True)
        print(f"\n{name}: explainer graph built in {build:.2f} s\n", flush=True)


if __name__ == "__main__":
    main()
