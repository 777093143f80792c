"""Real single-stage detectors for the Detection target's tests, made available by script.

Two models, nothing of them committed:

* NudeNet 3.4.2 (PyPI `nudenet`, in the test extra): the trained Ultralytics YOLOv8n
  detector it ships, `320n.onnx` (opset 17, 12 MB, inside the installed package). Input
  `images` float32 [N, 3, H, W] (H, W symbolic; trained at 320 x 320), output `output0`
  float32 [N, 4 + 18, A] (A = 2100 at 320 x 320): rows cx, cy, w, h in model-input pixels, then
  18 class scores, sigmoid already applied, no objectness: the "yolov8" layout.
* A YOLOv5n network from PyPI `yolov5` 7.0.14 (models/yolov5n.yaml, 80 classes) with seeded
  random weights (rescaled layer by layer on four photos, `_lsuv`, so that the output depends
  on the image), exported as the package's export.py does (Conv+BN fused, Detect in export
  mode, opset 17): input `images` float32 [1, 3, S, S], output `output0` float32 [1, A, 85]
  (A = 3 * ((S/8)^2 + (S/16)^2 + (S/32)^2), 1575 at S = 160): cx, cy, w, h in input pixels,
  objectness, 80 class probabilities, sigmoids applied: the "yolov5" layout. `yolov5` is
  installed without its dependencies (YOLOV5_INSTALL below; its own pins would pull ultralytics,
  boto3, sahi, roboflow, tensorboard and downgrade huggingface-hub under transformers).

No cv2 here: NudeNet's OpenCV preprocessing is reproduced in NumPy (`nudenet_preprocess`).
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

NUDENET_SIZE = 320
YOLOV5_INSTALL = "pip install --no-deps -r tests/requirements-yolov5.txt"


def _nudenet_dir() -> Path:
    # find_spec locates the package without running its __init__ (which imports cv2)
    spec = importlib.util.find_spec("nudenet")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("nudenet is not installed (pip install nudenet==3.4.2, in the test extra)")
    return Path(next(iter(spec.submodule_search_locations)))


def nudenet_model_path() -> Path:
    """The YOLOv8n detector `320n.onnx` inside the installed nudenet package."""
    path = _nudenet_dir() / "320n.onnx"
    if not path.is_file():
        pytest.skip(f"nudenet is installed but {path} is missing (expected nudenet==3.4.2)")
    return path


def nudenet_static_model(path, size: int = NUDENET_SIZE) -> Path:
    """A copy of 320n.onnx written to `path` with the input's H and W fixed to `size` (batch
    stays symbolic) and the output's anchor dim to its length; onnx_saliency needs this (the
    shipped model's symbolic H, W leave its Resize nodes' lengths unknown)."""
    if size % 32:
        raise ValueError(f"size must be a multiple of 32 (YOLOv8's largest stride), got {size}")
    model = onnx.load(str(nudenet_model_path()))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d in dims[2:]:
        d.Clear()
        d.dim_value = size
    anchors = model.graph.output[0].type.tensor_type.shape.dim[2]
    anchors.Clear()
    anchors.dim_value = sum((size // s) ** 2 for s in (8, 16, 32))
    onnx.save(model, str(path))
    return Path(path)


def nudenet_classes() -> list[str]:
    """The 18 class names in output order, read from nudenet's own source (its `__labels`
    list in nudenet/nudenet.py), without importing it."""
    tree = ast.parse((_nudenet_dir() / "nudenet.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__labels" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError("nudenet/nudenet.py has no __labels list (expected nudenet==3.4.2)")


@dataclass(frozen=True)
class NudenetFrame:
    """Where the model input sits in the image: the image is padded with black on the right
    (`pad_x`) and bottom (`pad_y`) to a square of side max(width, height), then resized to the
    model size, so one model-input pixel is `scale` = max(width, height) / size image pixels."""

    width: int
    height: int
    pad_x: int
    pad_y: int
    scale: float

    def to_image(self, box) -> np.ndarray:
        """Boxes (x1, y1, x2, y2) in model-input pixels -> image pixels, clipped to the image."""
        b = np.asarray(box, dtype=np.float64) * self.scale
        return np.clip(b, 0, [self.width, self.height, self.width, self.height])


def _linear_taps(src: int, dst: int, clamp_weight: bool):
    """OpenCV INTER_LINEAR taps: source position (d + 0.5) * src/dst - 0.5 in float32, its
    floor i and fraction f; along x a position before 0 / past the last pixel is pinned there
    with f = 0, along y only the row indices are clamped (as cv::resize does)."""
    pos = ((np.arange(dst) + 0.5) * (src / dst) - 0.5).astype(np.float32)
    i = np.floor(pos).astype(np.int64)
    f = (pos - i).astype(np.float32)
    if clamp_weight:
        low, high = i < 0, i >= src - 1
        f[low | high] = 0
        i[low] = 0
        i[high] = src - 1
    return np.clip(i, 0, src - 1), np.clip(i + 1, 0, src - 1), f


def _resize_linear_u8(img: np.ndarray, size: int) -> np.ndarray:
    """cv2.resize(img, (size, size)) for uint8 HxWxC, INTER_LINEAR, in OpenCV's fixed point:
    11-bit weights, a horizontal pass in int32, a vertical pass with rounding shifts."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    x0, x1, fx = _linear_taps(img.shape[1], size, clamp_weight=True)
    y0, y1, fy = _linear_taps(img.shape[0], size, clamp_weight=False)
    one = 1 << 11
    ax1 = np.rint(fx * one).astype(np.int64)
    ax0 = np.rint((1 - fx) * one).astype(np.int64)
    by1 = np.rint(fy * one).astype(np.int64)[:, None, None]
    by0 = np.rint((1 - fy) * one).astype(np.int64)[:, None, None]
    a = img.astype(np.int64)
    rows = a[:, x0] * ax0[None, :, None] + a[:, x1] * ax1[None, :, None]
    out = (((by0 * (rows[y0] >> 4)) >> 16) + ((by1 * (rows[y1] >> 4)) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def nudenet_preprocess(rgb_uint8: np.ndarray, size: int = NUDENET_SIZE,
                       channels: str = "bgr") -> tuple[np.ndarray, NudenetFrame]:
    """NudeNet's `_read_image` in NumPy: pad right/bottom with black to a square, resize to
    size x size (cv2 INTER_LINEAR on uint8), x = pixel / 255, NCHW float32 [1, 3, size, size].

    channels "bgr" (default) is what NudeDetector.detect feeds for an image file: cv2.imread
    gives BGR, cvtColor(COLOR_RGBA2BGR) swaps it to RGB and blobFromImage(swapRB=True) swaps
    it back, so the network sees B, G, R. "rgb" is the order Ultralytics trains in (what
    NudeDetector.detect feeds when handed an RGB array)."""
    img = np.asarray(rgb_uint8)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"nudenet_preprocess takes an RGB uint8 array [H, W, 3], "
                         f"got {img.dtype} {list(img.shape)}")
    if channels not in ("bgr", "rgb"):
        raise ValueError(f"channels must be 'bgr' or 'rgb', got {channels!r}")
    h, w = img.shape[:2]
    side = max(h, w)
    padded = np.zeros((side, side, 3), np.uint8)
    padded[:h, :w] = img
    resized = _resize_linear_u8(padded, size)
    if channels == "bgr":
        resized = resized[..., ::-1]
    x = resized.transpose(2, 0, 1)[None].astype(np.float32) * np.float32(1 / 255.0)
    return np.ascontiguousarray(x), NudenetFrame(w, h, side - w, side - h, side / size)


def astronaut() -> np.ndarray:
    """scikit-image's astronaut photo (Eileen Collins; public domain, NASA): RGB uint8
    [512, 512, 3], a real photo with one face."""
    from skimage import data
    return data.astronaut()


def _import_yolov5_yolo():
    """yolov5.models.yolo, imported with its import-time side effects on os.environ and
    torch.save (from yolov5.utils.general and ultralytics) undone."""
    import torch
    env, save = dict(os.environ), torch.save
    try:
        with warnings.catch_warnings():   # yolov5.utils.general imports pkg_resources
            warnings.simplefilter("ignore", UserWarning)
            from yolov5.models import yolo
    except ImportError as e:
        if os.environ.get("OSAL_REQUIRE_YOLOV5"):   # .ci/run installs it: missing is a failure
            raise
        pytest.skip(f"yolov5 is not importable ({e}); install: {YOLOV5_INSTALL}")
    finally:
        torch.save = save
        torch.set_printoptions(profile="default")
        for key in set(os.environ) - set(env):
            del os.environ[key]
        os.environ.update({k: v for k, v in env.items() if os.environ.get(k) != v})
    return yolo


def _calibration_batch(size: int):
    """Four scikit-image photos (astronaut, chelsea, coffee, rocket) as the model sees them:
    RGB, padded to a square and resized as `nudenet_preprocess` does, /255, [4, 3, size, size]."""
    import torch
    from skimage import data
    images = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    return torch.from_numpy(np.concatenate(
        [nudenet_preprocess(im, size=size, channels="rgb")[0] for im in images]))


HEAD_LOGIT_STD = 0.5


def _lsuv(model, batch) -> None:
    """conftest.unit_variance with Detect's three output convs at std HEAD_LOGIT_STD (around
    the package's objectness and class bias priors). Without it the package's initialisation
    gives a YOLOv5n whose output does not depend on the image (relative change from a black
    image 2e-7 at 160 x 160, input gradient ~1e-16)."""
    from conftest import unit_variance
    head = model.model[-1]
    unit_variance(model, batch, lambda m: HEAD_LOGIT_STD if m in head.m else 1.0)


def yolov5_export(path, size: int = 160, seed: int = 0, cfg: str = "yolov5n.yaml"):
    """Build YOLOv5 from the package's bundled `cfg` with weights from torch.manual_seed(seed)
    (the package's own initialisation, Detect biases set from its priors, then each conv
    rescaled by `_lsuv` on four scikit-image photos so the output depends on the image),
    prepare it as yolov5's export.py does (eval, Conv+BN fused, Detect.export = True,
    inplace = False, two warm-up runs) and write it to `path` with torch.onnx.export (TorchScript exporter,
    opset 17, input `images` [1, 3, size, size], output `output0` [1, A, 5 + 80]).

    Returns the torch module in eval mode, same weights: module(x) is a 1-tuple holding the
    [1, A, 85] tensor, differentiable in x."""
    import torch

    if size % 32:
        raise ValueError(f"size must be a multiple of 32 (YOLOv5's largest stride), got {size}")
    yolo = _import_yolov5_yolo()
    cfg_path = Path(yolo.__file__).parent / cfg
    logger = logging.getLogger("yolov5")
    level = logger.level
    logger.setLevel(logging.WARNING)   # the package logs a model summary on build and fuse
    try:
        with torch.no_grad():   # as export.py (inference mode): fusing copies into Conv weights
            torch.manual_seed(seed)
            model = yolo.DetectionModel(str(cfg_path)).eval()
            _lsuv(model, _calibration_batch(size))
            model = model.fuse()
    finally:
        logger.setLevel(level)
    for p in model.parameters():
        p.requires_grad_(False)
    head = model.model[-1]
    head.inplace, head.dynamic, head.export = False, False, True
    im = torch.zeros(1, 3, size, size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)   # on yolov5's Python flags
        for _ in range(2):
            model(im)
        torch.onnx.export(model, (im,), str(path), dynamo=False, opset_version=17,
                          do_constant_folding=True, input_names=["images"],
                          output_names=["output0"])
    proto = onnx.load(str(path))
    for key, value in {"stride": str(int(max(model.stride))), "names": str(dict(enumerate(model.names))),
                       "source": f"yolov5==7.0.14 {cfg}, torch.manual_seed({seed}), random weights"}.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    return model
