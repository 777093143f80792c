"""Parity with PyTorch autograd and Captum on torchvision models with seeded random weights.

Tolerance: relative error max|ours − ref| / max|ref| ≤ 1e-4 (fp32). Each batch holds two images
with different targets, so per-image seeding is checked too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import (Deconvolution, GuidedBackprop, InputXGradient, LayerGradCam,
                         LayerGradientXActivation, Saliency)

import onnx_saliency as osal
from conftest import pinned_maxpools, rel_err

# (model, image size, an intermediate layer)
MODELS = [
    ("resnet18", 64, "layer3"),
    ("vgg11", 64, "features.10"),    # classifier on the 2x2 feature map (see conftest)
    ("mobilenet_v2", 64, "features.7"),
    ("densenet121", 64, "features.denseblock2"),
    ("squeezenet1_1", 64, "features.6"),
]
TOL = 1e-4
TARGETS = [3, 711]


def _module(model, path):
    return model.get_submodule(path)


def _images(size, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((2, 3, size, size))
                            .astype(np.float32))


@pytest.mark.parametrize("name,size,layer", MODELS)
def test_backward_graph_matches_autograd(torchvision_model, name, size, layer):
    path, model = torchvision_model(name, size)
    x = _images(size)
    graph = osal.backward_graph(path, ["input", layer])
    import onnxruntime as ort
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    g_input, g_layer = sess.run(None, {"input": x.numpy(), "target": np.array(TARGETS)})

    saved = {}
    hook = _module(model, layer).register_forward_hook(
        lambda m, i, o: (o.retain_grad(), saved.__setitem__("act", o)) and None)
    xr = x.clone().requires_grad_(True)
    with pinned_maxpools(path, model, x):
        logits = model(xr)
    hook.remove()
    logits[torch.arange(2), torch.tensor(TARGETS)].sum().backward()
    assert rel_err(g_input, xr.grad.numpy()) <= TOL
    assert rel_err(g_layer, saved["act"].grad.numpy()) <= TOL


def _captum_input(method_cls, model, x, **kw):
    return method_cls(model).attribute(x.clone(), target=TARGETS, **kw).detach().numpy()


# densenet121 ends in a functional F.relu, which Captum's module hooks cannot rectify
RECTIFIED = [m for m in MODELS if m[0] != "densenet121"]


@pytest.mark.parametrize("name,size,layer", MODELS)
def test_gradient_family_matches_captum(torchvision_model, name, size, layer):
    path, model = torchvision_model(name, size)
    x = _images(size, seed=1)
    ex = osal.Explainer(path, methods=["gradient", "gradient_sum", "input_x_gradient",
                                       osal.methods.GradCAM(at=layer), "linear_approx"],
                        layers=[layer])
    maps = ex.explain(x.numpy(), target=TARGETS)
    assert set(maps) == {"gradient", "gradient_sum", "input_x_gradient", f"gradcam@{layer}",
                         f"linear_approx@{layer}"}
    with pinned_maxpools(path, model, x):
        _compare_gradient_family(maps, model, x, size, layer)


def _compare_gradient_family(maps, model, x, size, layer):
    grad = _captum_input(Saliency, model, x, abs=False)
    assert rel_err(maps["gradient"], np.abs(grad).max(1)) <= TOL
    assert rel_err(maps["gradient_sum"], grad.sum(1)) <= TOL
    ixg = _captum_input(InputXGradient, model, x)
    assert rel_err(maps["input_x_gradient"], ixg.sum(1)) <= TOL

    module = _module(model, layer)
    cam = LayerGradCam(model, module).attribute(x, target=TARGETS, relu_attributions=True)
    cam = F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)
    assert rel_err(maps[f"gradcam@{layer}"], cam[:, 0].detach().numpy()) <= TOL
    lin = LayerGradientXActivation(model, module).attribute(x, target=TARGETS).sum(1, keepdim=True)
    lin = F.interpolate(lin, size=(size, size), mode="bilinear", align_corners=False)
    assert rel_err(maps[f"linear_approx@{layer}"], lin[:, 0].detach().numpy()) <= TOL


@pytest.mark.parametrize("name,size,layer", RECTIFIED)
def test_guided_backprop_and_deconvnet_match_captum(torchvision_model, name, size, layer):
    path, model = torchvision_model(name, size)
    x = _images(size, seed=2)
    for rule, cls in [("guided_backprop", GuidedBackprop), ("deconvnet", Deconvolution)]:
        graph = osal.backward_graph(path, ["input"], rule=rule)
        import onnxruntime as ort
        raw = ort.InferenceSession(graph.SerializeToString()).run(
            None, {"input": x.numpy(), "target": np.array(TARGETS)})[0]
        with pinned_maxpools(path, model, x):
            ref = _captum_input(cls, model, x)
        assert rel_err(raw, ref) <= TOL, rule
        maps = osal.Explainer(path, methods=[rule]).explain(x.numpy(), target=TARGETS)
        assert rel_err(maps[rule], np.abs(ref).max(1)) <= TOL, rule


def test_guided_gradients_are_nonnegative_after_every_relu(torchvision_model):
    path, _ = torchvision_model("resnet18", 64)
    relus = [n for n in osal.list_layers(path) if n.endswith("relu") or "relu_" in n]
    graph = osal.backward_graph(path, relus, rule="guided_backprop")
    import onnxruntime as ort
    outs = ort.InferenceSession(graph.SerializeToString()).run(
        None, {"input": _images(64).numpy(), "target": np.array(TARGETS)})
    # the signal entering each ReLU from above is what the next layer sent back; the signal
    # leaving a ReLU downwards (at its input) is max(g, 0)·mask ≥ 0: check at the ReLU inputs
    assert len(outs) == len(relus) > 5
    graph_in = osal.backward_graph(path, ["layer1.0.conv2", "layer4.1.conv2"], rule="guided_backprop")
    for out in ort.InferenceSession(graph_in.SerializeToString()).run(
            None, {"input": _images(64).numpy(), "target": np.array(TARGETS)}):
        assert out.min() >= 0.0


def test_gradcam_at_resnet_last_block_is_the_cam(torchvision_model):
    """At resnet18 layer4 (then GAP, FC): Grad-CAM = ReLU(Σ_c W_fc[t,c] A_c) / HW."""
    path, model = torchvision_model("resnet18", 64)
    x = _images(64, seed=3)
    ex = osal.Explainer(path, methods=[osal.methods.GradCAM(at="layer4")])
    ex_map = ex.run(x.numpy(), target=TARGETS)
    saved = {}
    hook = model.layer4.register_forward_hook(lambda m, i, o: saved.__setitem__("a", o))
    with torch.no_grad():
        model(x)
    hook.remove()
    a = saved["a"]
    w = model.fc.weight[TARGETS]                                  # [2, C]
    cam = torch.relu((w[:, :, None, None] * a).sum(1, keepdim=True)) / (a.shape[2] * a.shape[3])
    cam = F.interpolate(cam, size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    assert rel_err(ex_map["gradcam@layer4"], cam.detach().numpy()) <= TOL
