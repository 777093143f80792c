"""Every torchvision classification architecture: the input gradient and Grad-CAM at the default
layer against PyTorch autograd.

For each name in `torchvision.models.list_models(module=torchvision.models)`: the model with
seeded random weights (conftest.export_torchvision: BatchNorm statistics perturbed, BN folded),
exported with the TorchScript exporter at opset 17, two images with targets 3 and 711. Checked:
- ∂s/∂x (s = Σ_n logits[n, t_n]) from `backward_graph` against autograd;
- ∂s/∂A at Grad-CAM's default layer A (`default_layers(...)["gradcam"]`) against autograd's
  gradient at the PyTorch tensor that holds the same values (found by value among every tensor
  the forward pass makes, the last match in call order);
- the Grad-CAM map of an `Explainer` against ReLU(Σ_c mean(∂s/∂A_c) · A_c), resized bilinearly
  to the image, from PyTorch's A and ∂s/∂A. Token layers ([N, T, C]; Swin's [N, H, W, C]) are
  put on their grid first (extra leading tokens dropped).
Tolerance: max |ours − ref| / max |ref| ≤ 1e-4 (fp32 against fp32).

Near-ties: the reference takes ONNX Runtime's decisions at every ReLU, Clip and MaxPool
(conftest.pinned_decisions; Swin-V2: ReLUs only, see the test). The other kinks of these
networks (Hardswish and Hardsigmoid at ±3 in the MobileNetV3s) are not pinned: an activation
within float32 noise (~1e-7 relative) of ±3 is expected in fewer than 1e-3 of runs at these
sizes (a few 1e5 activations, density ≤ 0.01 per unit near ±3), and the inputs are fixed.

The small networks run in CI; the rest carry `slow` (run them with `pytest -m slow
tests/test_torchvision_zoo.py`, about 25 minutes on two cores; docs/coverage.md gives the
counts).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch.overrides import TorchFunctionMode

import onnx_saliency as osal
from onnx_saliency.runtime import make_session, split_weights
from conftest import PIN_KINDS, Decisions, export_torchvision, pinned_decisions, rel_err

TOL = 1e-4
TARGETS = [3, 711]

# image size and builder arguments where 64 px does not fit the architecture
SIZES = {"inception_v3": 96, "maxvit_t": 224, "alexnet": 224, "vit_h_14": 56}
KWARGS = {"vit_b_16": {"image_size": 64}, "vit_l_16": {"image_size": 64},
          "vit_b_32": {"image_size": 64}, "vit_l_32": {"image_size": 64},
          "vit_h_14": {"image_size": 56}, "googlenet": {"aux_logits": False, "init_weights": True},
          "inception_v3": {"aux_logits": False, "init_weights": True}}
# run in CI: under ~10 s each on two cores (export, build, both references)
FAST = {
    "alexnet", "densenet121", "efficientnet_b0", "googlenet", "mnasnet0_5", "mobilenet_v2",
    "mobilenet_v3_large", "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf", "resnet18",
    "resnet50", "resnext50_32x4d", "shufflenet_v2_x1_0", "squeezenet1_0", "squeezenet1_1",
    "convnext_tiny", "swin_t", "vit_b_32", "inception_v3",
}
NAMES = torchvision.models.list_models(module=torchvision.models)


# over 2 GB of weights (exported with external data): one image; run them alone (peak ~14 GB)
OVER_2GB = {"regnet_y_128gf", "vit_h_14"}


def _param(name):
    marks = () if name in FAST else (pytest.mark.slow,)
    return pytest.param(name, marks=marks, id=name)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            path = tmp_path_factory.mktemp("zoo") / f"{name}.onnx"
            size = SIZES.get(name, 64)
            torch.manual_seed(0)
            model = export_torchvision(name, path, size, **KWARGS.get(name, {}))
            cache.clear()   # one model at a time: the largest hold gigabytes
            cache[name] = (path, model, size)
        return cache[name]

    return get


class _Capture(TorchFunctionMode):
    """Records the last tensor of the forward pass whose values equal `target` (same shape, within
    1e-5 of its peak), and keeps its gradient."""

    def __init__(self, target: np.ndarray):
        super().__init__()
        self.target = torch.from_numpy(target)
        self.scale = float(np.abs(target).max()) or 1.0
        self.found = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if (isinstance(out, torch.Tensor) and out.requires_grad and out.shape == self.target.shape
                and out.dtype == torch.float32):
            if float((out.detach() - self.target).abs().max()) <= 1e-5 * self.scale:
                out.retain_grad()
                self.found = out
        return out


def _on_grid(a: np.ndarray, nhwc: bool) -> np.ndarray:
    """A layer tensor as [N, C, h, w]: NCHW as it is; NHWC (Swin's stages) transposed; tokens
    [N, T, C] on their square grid, the extra leading tokens (class, distillation) dropped."""
    if a.ndim == 4:
        return a.transpose(0, 3, 1, 2) if nhwc else a
    side = int(np.sqrt(a.shape[1]))
    return a[:, -side * side:, :].reshape(a.shape[0], side, side, -1).transpose(0, 3, 1, 2)


def _gradcam(a: np.ndarray, g: np.ndarray, size: int, nhwc: bool) -> np.ndarray:
    """ReLU(Σ_c mean_hw(g_c) · a_c), resized bilinearly (half-pixel) to size × size."""
    a, g = _on_grid(a, nhwc), _on_grid(g, nhwc)
    cam = np.maximum((g.mean(axis=(2, 3), keepdims=True) * a).sum(1, keepdims=True), 0)
    cam = F.interpolate(torch.from_numpy(cam), size=(size, size), mode="bilinear",
                        align_corners=False)[:, 0]
    return cam.numpy()


@pytest.mark.parametrize("name", [_param(n) for n in NAMES])
def test_gradient_and_gradcam_match_autograd(exported, name):
    path, model, size = exported(name)
    batch = 1 if name in OVER_2GB else 2        # the largest: one image, one target
    targets = TARGETS[:batch]
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    layer = osal.default_layers(path)["gradcam"]
    explainer = osal.Explainer(path, methods=["gradient", "gradcam"])
    tensor = explainer.layer_names.resolve(layer)
    maps = explainer.run(x, target=targets)
    del explainer       # (one set of weights in memory at a time)

    # the raw gradients at the input and the layer, and the layer's values, from one session;
    # weights kept apart (graphs over 2 GB cannot be one protobuf)
    graph, weights = split_weights(osal.backward_graph(path, ["input", tensor]), {})
    graph.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT,
                                                                 None))
    feeds = {"input": x, "target": np.array(targets)}
    g_input, g_layer, acts = make_session(graph, weights=weights).run(None, feeds)
    decisions = Decisions.from_ort(path, x, graph=graph, target=targets, weights=weights)
    del graph, weights

    xr = torch.from_numpy(x).requires_grad_(True)
    capture = _Capture(acts)
    # Swin-V2's Clips are F.normalize's clamp_min(1e-12) on norms far above it, which PyTorch
    # runs inside C++ (no Python call to pin), and a clamp of a constant: only its ReLUs pinned
    kinds = ("Relu", "MaxPool") if name.startswith("swin_v2") else PIN_KINDS
    with pinned_decisions(decisions, model, kinds=kinds), capture:
        logits = model(xr)
    logits[torch.arange(batch), torch.tensor(targets)].sum().backward()
    assert rel_err(g_input, xr.grad.numpy()) <= TOL
    assert capture.found is not None, f"no PyTorch tensor holds the values of {layer} ({tensor})"
    ref_g = capture.found.grad.numpy()
    assert rel_err(g_layer, ref_g) <= TOL

    ref_cam = _gradcam(acts, ref_g, size, nhwc=name.startswith("swin"))
    (key,) = [k for k in maps if k.startswith("gradcam")]
    assert rel_err(maps[key], ref_cam) <= TOL
