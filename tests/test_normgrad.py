"""NormGrad family, the extraction framework, multi-layer combination and class sensitivity,
against PyTorch autograd, unfold and NumPy references (tolerance: 1e-4 of the map's peak).
Every autograd reference is pinned to the ORT graph's decisions (ReLU masks, ReLU6 = Clip
sides, MaxPool argmaxes: conftest.pinned_decisions); the NumPy references read ORT's own
signals, so they share its decisions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

import onnx_saliency as osal
from onnx_saliency import methods
from onnx_saliency.metrics import class_sensitivity

from conftest import Decisions, export_torchvision, pinned_decisions

TOL = 1e-4


def _images(n, size, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def _close(ours, ref, tol=TOL):
    assert np.abs(ours - ref).max() <= tol * np.abs(ref).max(), np.abs(ours - ref).max() / np.abs(ref).max()


def _torch_signals(model, module, x, target, pins, take_input=False):
    """(x at the module's output — or input —, ∂y_t/∂ that tensor) from autograd, the forward
    pass pinned to `pins`."""
    import torch
    saved = {}

    def hook(mod, inputs, output):
        t = inputs[0] if take_input else output
        t.retain_grad()
        saved["x"] = t

    handle = module.register_forward_hook(hook)
    with pinned_decisions(pins, model):
        logits = model(torch.tensor(x))
    handle.remove()
    seed = torch.zeros_like(logits)
    seed[torch.arange(len(x)), torch.as_tensor(target)] = 1
    logits.backward(seed)
    return saved["x"].detach().double().numpy(), saved["x"].grad.double().numpy()


def _upsample(m, size):
    import torch
    import torch.nn.functional as F
    return F.interpolate(torch.tensor(m)[:, None], size=(size, size), mode="bilinear",
                         align_corners=False)[:, 0].numpy()


def test_normgrad_and_selective_match_autograd(tmp_path):
    """normgrad = ‖g_u‖·‖x_u‖ and selective = ‖ReLU(x ⊙ g)‖ from autograd at resnet18 layer3;
    Σ_u g_u x_uᵀ equals the weight gradient of a really inserted 1×1 identity conv."""
    import torch
    path = tmp_path / "r18.onnx"
    model = export_torchvision("resnet18", path, 64)
    x, target = _images(2, 64), [3, 8]
    ex = osal.Explainer(path, methods=["normgrad", "normgrad_selective"], layers=["layer3"])
    maps = ex.explain(x, target)
    pins = Decisions.from_ort(path, x, graph=ex.model, target=target)
    act, g = _torch_signals(model, model.layer3, x, target, pins)
    _close(maps["normgrad@layer3"], _upsample(np.linalg.norm(g, axis=1) * np.linalg.norm(act, axis=1), 64))
    _close(maps["normgrad_selective@layer3"], _upsample(np.linalg.norm(np.maximum(act * g, 0), axis=1), 64))

    # the 1×1 identity conv really inserted after layer3: its dW is Σ_u g_u x_uᵀ
    channels = act.shape[1]
    ident = torch.nn.Conv2d(channels, channels, 1, bias=False)
    with torch.no_grad():
        ident.weight.copy_(torch.eye(channels)[:, :, None, None])
    handle = model.layer3.register_forward_hook(lambda m, i, o: ident(o))
    with pinned_decisions(pins, model):
        logits = model(torch.tensor(x))
    handle.remove()
    seed = torch.zeros_like(logits)
    seed[torch.arange(2), torch.as_tensor(target)] = 1
    logits.backward(seed)
    dw = ident.weight.grad[:, :, 0, 0].double().numpy()
    np.testing.assert_allclose(np.einsum("nchw,ndhw->cd", g, act), dw, rtol=1e-4,
                               atol=1e-6 * np.abs(dw).max())


def test_normgrad_conv_matches_unfold_and_weight_gradient(tmp_path):
    """normgrad_conv at VGG11 features.8 (3×3, pad 1): ‖g_v‖·‖P(a)_v‖ with the patch norm from
    torch.nn.functional.unfold, and Σ_v g_v P(a)_vᵀ equals the conv's autograd dW."""
    import torch
    import torch.nn.functional as F
    path = tmp_path / "vgg11.onnx"
    model = export_torchvision("vgg11", path, 64)
    conv = model.features[8]
    x, target = _images(2, 64, seed=1), [1, 5]
    ex = osal.Explainer(path, methods=[methods.NormGradConv(at="features.8")])
    maps = ex.explain(x, target)
    pins = Decisions.from_ort(path, x, graph=ex.model, target=target)
    a, _ = _torch_signals(model, conv, x, target, pins, take_input=True)
    model.zero_grad()
    _, g = _torch_signals(model, conv, x, target, pins)
    patches = F.unfold(torch.tensor(a), conv.kernel_size, padding=conv.padding,
                       stride=conv.stride).numpy()                      # [N, C·k·k, L]
    n, k_out, ho, wo = g.shape
    ref = np.linalg.norm(g, axis=1) * np.linalg.norm(patches, axis=1).reshape(n, ho, wo)
    _close(maps["normgrad_conv@features.8"], _upsample(ref, 64))
    dw = conv.weight.grad.double().numpy().reshape(k_out, -1)
    np.testing.assert_allclose(np.einsum("nkl,ncl->kc", g.reshape(n, k_out, -1), patches), dw,
                               rtol=1e-4, atol=1e-6 * np.abs(dw).max())


def _small_cnn(tmp_path):
    """A CNN whose first block keeps the input resolution (maps there need no resize)."""
    import torch
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 5, 3, padding=1),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(5, 6)).eval()
    path = tmp_path / "small.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 9, 9),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return path


def _outer_reference(g, x, k, how):
    """Aggregate of g_u vec(P_k(x)_u)ᵀ (stride 1, pad k//2), by explicit matrices."""
    n, c, h, w = x.shape
    pad = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((n, h, w))
    for i in range(h):
        for j in range(w):
            p = xp[:, :, i:i + k, j:j + k].reshape(n, -1)
            m = g[:, :, i, j][:, :, None] * p[:, None, :]
            out[:, i, j] = {"sum": m.sum((1, 2)), "max": m.max((1, 2)),
                            "max_abs": np.abs(m).max((1, 2)),
                            "l2": np.sqrt((m ** 2).sum((1, 2))),
                            "pos_l2": np.sqrt((np.maximum(m, 0) ** 2).sum((1, 2)))}[how]
    return out


@pytest.mark.parametrize("extract,k", [("identity", 1), ("identity3x3", 3)])
def test_every_framework_row_matches_explicit_matrices(extract, k, tmp_path):
    path = _small_cnn(tmp_path)
    layer = "/1/Relu_output_0"   # first ReLU: input resolution
    x, target = _images(2, 9, seed=2), [1, 4]
    graph = osal.backward_graph(path, [layer])
    from onnx import TensorProto, helper
    graph.graph.output.append(helper.make_tensor_value_info(layer, TensorProto.FLOAT, None))
    from onnx_saliency.runtime import make_session
    g, act = make_session(graph).run(None, {"input": x, "target": np.asarray(target)})
    g, act = g.astype(np.float64), act.astype(np.float64)
    aggs = ["sum", "max", "max_abs", "l2", "pos_l2"]
    ex = osal.Explainer(path, methods=[methods.Extraction(extract, how) for how in aggs],
                        layers=[layer])
    maps = ex.explain(x, target)
    for how in aggs:
        _close(maps[f"{extract}_{how}@{layer}"], _outer_reference(g, act, k, how))
    ex = osal.Explainer(path, methods=[methods.Extraction("bias", "max_abs"),
                                       methods.Extraction("scaling", "sum")], layers=[layer])
    maps = ex.explain(x, target)
    _close(maps[f"bias_max_abs@{layer}"], np.abs(g).max(1))
    _close(maps[f"scaling_sum@{layer}"], (g * act).sum(1))


def test_combination_sum_product_and_one_hot_weights(tmp_path):
    path = tmp_path / "r18.onnx"
    export_torchvision("resnet18", path, 64)
    layers = ["layer1", "layer2", "layer3"]
    x, target = _images(2, 64, seed=4), [0, 9]
    single = osal.Explainer(path, methods=["normgrad_selective"], layers=layers).explain(x, target)

    def minmax(m):
        lo, hi = m.min((1, 2), keepdims=True), m.max((1, 2), keepdims=True)
        return (m - lo) / np.maximum(hi - lo, 1e-30)

    per_layer = [minmax(single[f"normgrad_selective@{name}"]) for name in layers]
    w = np.arange(1, 4) / 3
    w = w / w.sum()
    for rule, ref in [("sum", sum(wi * m for wi, m in zip(w, per_layer))),
                      ("product", np.prod([m ** wi for wi, m in zip(w, per_layer)], axis=0))]:
        ex = osal.Explainer(path, methods=["normgrad_selective"], layers=layers, combine=rule,
                            weights="linear")
        assert ex.map_names == ["normgrad_selective@combined"]
        out = ex.explain(x, target)["normgrad_selective@combined"]
        np.testing.assert_allclose(out, ref, atol=1e-5)
    for i in range(3):
        onehot = [0.0] * 3
        onehot[i] = 1.0
        out = osal.Explainer(path, methods=["normgrad_selective"], layers=layers, combine="sum",
                             weights=onehot).explain(x, target)["normgrad_selective@combined"]
        assert out.min() >= 0 and out.max() <= 1 + 1e-6
        np.testing.assert_allclose(out, per_layer[i], atol=1e-5)
    with pytest.raises(osal.MethodError, match="one per layer"):
        osal.Explainer(path, methods=["normgrad"], layers=layers, combine="sum", weights=[1, 2])
    with pytest.raises(osal.MethodError, match="combine"):
        osal.Explainer(path, methods=["normgrad"], layers=layers, combine="mean")


def test_stage_layer_sets(torchvision_model):
    """layers="stages" (docs/methods.md §2): ResNets layer1–layer4, VGGs the input of each of their
    five MaxPools (checked against the torch module), other networks refused."""
    import torch
    path, _ = torchvision_model("resnet18", 64)
    ex = osal.Explainer(path, methods=["normgrad_selective"], layers="stages")
    assert ex.map_names == [f"normgrad_selective@layer{i}" for i in range(1, 5)]
    path, vgg = torchvision_model("vgg11", 64)
    keys = osal.Explainer(path, methods=["normgrad_selective"], layers="stages").map_names
    stages = [k.split("@")[1] for k in keys]
    pools = [i for i, m in enumerate(vgg.features) if isinstance(m, torch.nn.MaxPool2d)]
    assert stages == [f"features.{i - 1}" for i in pools] and len(stages) == 5
    path, _ = torchvision_model("mobilenet_v2", 64)
    with pytest.raises(osal.LayerNotFoundError, match="stages"):
        osal.Explainer(path, methods=["normgrad_selective"], layers="stages", combine="sum")


def test_class_sensitivity_equals_scipy(tmp_path):
    path = tmp_path / "r18.onnx"
    export_torchvision("resnet18", path, 64)
    ex = osal.Explainer(path, methods=["normgrad_selective"], layers=["layer3"])
    x = _images(3, 64, seed=5)
    result = class_sensitivity(ex, x)
    logits = ex.run(x)["logits"]
    hi = ex.explain(x, logits.argmax(1))["normgrad_selective@layer3"]
    lo = ex.explain(x, logits.argmin(1))["normgrad_selective@layer3"]
    ref = [spearmanr(a.ravel() + 1e-6, b.ravel() + 1e-6).statistic for a, b in zip(hi, lo)]
    np.testing.assert_allclose(result.per_image, ref, rtol=1e-12)
    assert result.mean == pytest.approx(np.mean(ref)) and result.std == pytest.approx(np.std(ref))
    assert (result.per_image < 1).all()


def test_normgrad_at_resnet50_layer4_is_class_independent(tmp_path):
    """The documented degenerate case: after layer4 come GAP and FC, so g is spatially constant
    and NormGrad ∝ ‖x_u‖ for every class: ρ = 1."""
    path = tmp_path / "r50.onnx"
    export_torchvision("resnet50", path, 64)
    ex = osal.Explainer(path, methods=["normgrad"], layers=["layer4"])
    result = class_sensitivity(ex, _images(2, 64, seed=6))
    np.testing.assert_allclose(result.per_image, 1.0, atol=1e-6)


@pytest.mark.parametrize("name", ["resnet18", "vgg11"])
def test_fused_and_portable_graphs_agree(name, tmp_path):
    path = tmp_path / f"{name}.onnx"
    export_torchvision(name, path, 64)
    layer = "layer3" if name == "resnet18" else "features.15"
    conv = "layer4.1.conv2" if name == "resnet18" else "features.8"
    ms = ["tsgb", "normgrad", "normgrad_selective", methods.NormGradConv(at=conv)]
    x, target = _images(2, 64, seed=7), [2, 6]
    fused = osal.Explainer(path, methods=ms, layers=[layer], fused=True)
    portable = osal.Explainer(path, methods=ms, layers=[layer], fused=False)
    assert any(n.domain == "ai.onnx_saliency" for n in fused.model.graph.node)
    assert not any(n.domain == "ai.onnx_saliency" for n in portable.model.graph.node)
    a, b = fused.explain(x, target), portable.explain(x, target)
    for key in b:
        assert np.abs(a[key] - b[key]).max() <= 1e-5 * np.abs(b[key]).max(), key
    saved = tmp_path / "portable.onnx"
    fused.save(saved, portable=True)
    import onnx
    model = onnx.load(saved)
    assert not any(n.domain == "ai.onnx_saliency" for n in model.graph.node)
    fused.save(tmp_path / "fused.onnx")
    model = onnx.load(tmp_path / "fused.onnx")
    assert any(o.domain == "ai.onnx_saliency" for o in model.opset_import)
    onnx.checker.check_model(model)   # custom domains are tolerated by the checker


def test_normgrad_conv_of_a_depthwise_conv(tmp_path):
    """Grouped convs: the weight gradient is block-diagonal, so the map is
    sqrt(Σ_j ‖g_j‖² ‖P(a_j)‖²); mobilenet_v2's depthwise 3×3 against unfold (BN is folded into
    the ONNX conv, so g is taken at the torch BN's output)."""
    import torch
    import torch.nn.functional as F
    path = tmp_path / "mnv2.onnx"
    model = export_torchvision("mobilenet_v2", path, 64)
    block = model.features[2].conv
    conv, bn = block[1][0], block[1][1]
    assert conv.groups == conv.in_channels > 1
    x, target = _images(2, 64, seed=8), [3, 1]
    ex = osal.Explainer(path, methods=[methods.NormGradConv(at="features.2.conv.1.0")])
    maps = ex.explain(x, target)
    pins = Decisions.from_ort(path, x, graph=ex.model, target=target)   # ReLU6 = Clip(0, 6)
    a, _ = _torch_signals(model, conv, x, target, pins, take_input=True)
    model.zero_grad()
    _, g = _torch_signals(model, bn, x, target, pins)
    n, c, ho, wo = g.shape
    patches = F.unfold(torch.tensor(a), conv.kernel_size, padding=conv.padding,
                       stride=conv.stride).numpy().reshape(n, c, -1, ho * wo)
    ref = np.sqrt(((g.reshape(n, c, -1) ** 2) * (patches ** 2).sum(2)).sum(1)).reshape(n, ho, wo)
    _close(maps["normgrad_conv@features.2.conv.1.0"], _upsample(ref, 64))
