"""Excitation backprop against its probabilistic properties and a clean PyTorch reference of the
equations in docs/methods.md §1 (tolerance 1e-4 of the map's peak; the reference is pinned to the ORT
graph's MaxPool argmaxes and ReLU zeros, conftest.pinned_decisions)."""

from __future__ import annotations

import numpy as np
import pytest

import onnx_saliency as osal
from onnx_saliency import methods
from onnx_saliency.runtime import make_session

from conftest import Decisions, export_torchvision, pinned_decisions


def _small_net():
    import torch
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2, 1),
        torch.nn.Conv2d(6, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 1), torch.nn.ReLU(), torch.nn.AvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 16), torch.nn.ReLU(),
        torch.nn.Linear(16, 5)).eval()


def _export(model, path, size):
    import torch
    torch.onnx.export(model, (torch.randn(1, 3, size, size),), str(path), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})


def _torch_ebp(model, x, target, tap, pins, negate_last=False):
    """EBP in PyTorch: conv2d/linear/avg_pool2d get autograd Functions whose backward is
    p_in = x ⊙ f*(W⁺, p / f(x, W⁺)); ReLU passes p; MaxPool is autograd's argmax routing.
    `pins`: ORT's decisions (the argmax, and which ReLU outputs are 0: a window of zeros makes
    f(x, W⁺) = 0, where the ratio is taken as 0)."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]

    def ratio(p, z):
        return torch.where(z > 0, p / torch.where(z > 0, z, torch.ones_like(z)), torch.zeros_like(z))

    class Excite(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, fn_pos, fn_real):
            ctx.x, ctx.fn_pos = x.detach(), fn_pos
            return fn_real(x)

        @staticmethod
        def backward(ctx, p):
            x = ctx.x.clone().requires_grad_(True)
            with torch.enable_grad():
                z = ctx.fn_pos(x)
                (back,) = torch.autograd.grad(z, x, ratio(p, z.detach()))
            return x.detach() * back, None, None

    class PassRelu(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clamp(min=0)

        @staticmethod
        def backward(ctx, p):
            return p

    class Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is F.conv2d:
                x, w = args[0], args[1]
                rest = list(args[3:])
                pos = lambda t: F.conv2d(t, w.clamp(min=0), None, *rest, **kwargs)
                return Excite.apply(x, pos, lambda t: func(*((t,) + tuple(args[1:])), **kwargs))
            if func is F.linear:
                x, w = args[0], args[1]
                wp = (-w if negate_last and w is last.weight else w).clamp(min=0)
                return Excite.apply(x, lambda t: F.linear(t, wp),
                                    lambda t: func(*((t,) + tuple(args[1:])), **kwargs))
            if func is F.avg_pool2d:
                return Excite.apply(args[0], lambda t: func(t, *args[1:], **kwargs),
                                    lambda t: func(t, *args[1:], **kwargs))
            if func is F.relu:
                return PassRelu.apply(args[0])
            return func(*args, **kwargs)

    saved = {}

    def keep(module, inputs, output):
        output.retain_grad()
        saved["t"] = output

    handle = tap.register_forward_hook(keep)
    with Mode(), pinned_decisions(pins, model):   # the pins see each call first
        logits = model(torch.tensor(x, requires_grad=True))
    handle.remove()
    seed = torch.zeros_like(logits)
    seed[torch.arange(len(x)), torch.as_tensor(target)] = 1
    logits.backward(seed)
    return saved["t"].grad.double().numpy()


def test_ebp_and_cebp_match_pytorch_reference(tmp_path):
    import torch.nn.functional as F
    import torch
    model = _small_net()
    path = tmp_path / "small.onnx"
    _export(model, path, 32)
    x = np.abs(np.random.default_rng(0).standard_normal((2, 3, 32, 32))).astype(np.float32)
    target = [1, 3]
    tap = "/4/Relu_output_0"       # second ReLU, 8×8 grid
    graph = osal.backward_graph(path, [tap], rule="ebp")
    p = make_session(graph).run(None, {"input": x, "target": np.asarray(target)})[0]
    pins = Decisions.from_ort(path, x, graph=graph, target=target)
    ref = _torch_ebp(model, x, target, model[4], pins)
    assert np.abs(p - ref).max() <= 1e-4 * np.abs(ref).max()

    ex = osal.Explainer(path, methods=[methods.EBP(at=tap), methods.ContrastiveEBP(at=tap)])
    maps = ex.explain(x, target)
    ex_pins = Decisions.from_ort(path, x, graph=ex.model, target=target)
    if ex_pins != pins:       # the explainer's forward broke a near-tie the other way
        pins, ref = ex_pins, _torch_ebp(model, x, target, model[4], ex_pins)
    up = lambda m: F.interpolate(torch.tensor(m)[:, None], size=(32, 32), mode="bilinear",
                                 align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(maps[f"ebp@{tap}"], up(ref.sum(1)), rtol=1e-4, atol=1e-6)
    # c-EBP: p⁺ − p⁻ at the classifier's input, walked on to the tap (the reference splits the
    # walk the same way: the difference is linear in the seed once the forward pass is fixed)
    neg = _torch_ebp(model, x, target, model[4], pins, negate_last=True)
    expected = np.maximum((ref - neg).sum(1), 0)
    np.testing.assert_allclose(maps[f"cebp@{tap}"], up(expected), rtol=1e-4,
                               atol=1e-6 * np.abs(expected).max())


def test_ebp_is_positive_and_conserves_probability_mass(tmp_path):
    """With non-negative activations and a one-hot seed, p ≥ 0 everywhere and Σ p = 1 at every
    layer that all of the signal crosses (resnet18: residual Adds split it proportionally)."""
    path = tmp_path / "r18.onnx"
    export_torchvision("resnet18", path, 64)
    layers = ["layer1", "layer2", "layer3", "layer4"]
    from onnx_saliency.canonical import canonicalize
    from onnx_saliency.graph import GraphIndex
    from onnx_saliency.layers import LayerNames
    canon = canonicalize(path)
    names = LayerNames(GraphIndex(canon.model), canon.input_name)
    tensors = [names.resolve(l) for l in layers]
    graph = osal.backward_graph(path, tensors, rule="ebp")
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    outs = make_session(graph).run(None, {"input": x, "target": np.array([5, 0])})
    for p in outs:
        assert p.min() >= 0
        np.testing.assert_allclose(p.sum((1, 2, 3)), 1.0, rtol=1e-4)


def test_ebp_default_layer_is_resnet_layer3(tmp_path):
    path = tmp_path / "r18.onnx"
    export_torchvision("resnet18", path, 32)
    assert osal.Explainer(path, methods=["ebp", "cebp"]).map_names == ["ebp@layer3", "cebp@layer3"]


# (architecture, Grad-CAM/NormGrad default, EBP default, normgrad_conv default): the table in
# docs/methods.md §1; VGG at 64 px classifies the feature map directly (conftest), its features are the same
DEFAULTS = [
    ("resnet18", "layer4", "layer3", "layer4.1.conv2"),
    ("vgg11", "features.19", "features.15", "features.18"),
    ("vgg11_bn", "features.27", "features.21", "features.25"),
    ("mobilenet_v2", "features", "features", "features.18.0"),
    ("squeezenet1_1", "classifier.2", "classifier.2", "classifier.1"),
    ("efficientnet_b0", "features", "features", "features.8.0"),   # squeeze-excitation pools
    ("convnext_tiny", "features", "features", "features.7.2.block.0"),  # channels-last head
]


@pytest.mark.parametrize("name,cam,ebp,conv", DEFAULTS)
def test_default_layers_follow_the_presets(torchvision_model, name, cam, ebp, conv):
    path, _ = torchvision_model(name, 64)
    defaults = osal.default_layers(path)
    assert defaults["gradcam"] == defaults["normgrad"] == defaults["normgrad_selective"] == cam
    assert defaults["ebp"] == defaults["cebp"] == ebp
    assert defaults["normgrad_conv"] == conv
