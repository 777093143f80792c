"""Hugging Face `transformers` vision models against PyTorch autograd: tiny random-weight
configurations (seeded; 1-2 blocks, hidden 16-64, 32-64 px images) of ViT, DeiT, Swin, BEiT,
ConvNeXt, MobileViT and SegFormer (its image-classification head), exported with the
TorchScript exporter at opset 18 (eager attention).

For each: the logits, the raw input gradient (`backward_graph`) and Grad-CAM at the default
layer (the layer is checked too: a ViT's last block output before the final LayerNorm, read as
tokens on the patch grid with its class/distillation tokens dropped; Swin's last stage; the
CNN-like models' last stage) equal PyTorch. The Grad-CAM reference is computed from the torch
activation A at that module (a forward hook) and its gradient: A viewed as [N, C, h, w] by hand
(extra tokens dropped, row-major grid), ReLU(Σ_c mean_hw(∂s/∂A)_c · A_c), resized to the image
by bilinear interpolation (half-pixel centres, as the explainer's Resize).

Tolerance: 1e-4 relative (max |ours − ref| / max |ref|): float32 on both sides through a few
hundred ops; the observed errors are ~1e-6. No pinning: these nets have no kinks (GELU, SiLU,
Softmax, LayerNorm; no ReLU or max-pooling on the path), so ORT and PyTorch cannot take
different branches at near-ties."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

from conftest import rel_err

torch = pytest.importorskip("torch")
T = pytest.importorskip("transformers")

import onnx_saliency as osal  # noqa: E402

TARGETS = np.array([1, 3])


def _configs():
    """name -> (model factory, image size, default layer (the module path in the exported
    `_Logits` wrapper), view: (extra tokens, h, w), or None for an [N, C, H, W] layer)."""
    vit = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
               num_attention_heads=4, intermediate_size=64, num_labels=5)
    return {
        "vit": (lambda: T.ViTForImageClassification(T.ViTConfig(**vit)), 32,
                "model.vit.layers.1.layernorm_before", (1, 4, 4)),
        "deit": (lambda: T.DeiTForImageClassificationWithTeacher(T.DeiTConfig(**vit)), 32,
                 "model.deit.layers.1.layernorm_before", (2, 4, 4)),
        "beit": (lambda: T.BeitForImageClassification(T.BeitConfig(
            **vit, use_mean_pooling=True, use_relative_position_bias=True)), 32,
            "model.beit.layers.1", (1, 4, 4)),
        "swin": (lambda: T.SwinForImageClassification(T.SwinConfig(
            image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
            window_size=4, num_labels=5)), 32, "model.swin.encoder", (0, 8, 8)),
        "convnext": (lambda: T.ConvNextForImageClassification(T.ConvNextConfig(
            num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5)), 32,
            "model.convnext.encoder", None),
        "mobilevit": (lambda: T.MobileViTForImageClassification(T.MobileViTConfig(
            image_size=64, patch_size=2, hidden_sizes=[16, 24, 32],
            neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 32], num_attention_heads=2,
            initializer_range=0.3,   # at HF's 0.02 the activations vanish: input-blind logits
            num_labels=5)), 64, "model.mobilevit.conv_1x1_exp", None),
        "segformer": (lambda: T.SegformerForImageClassification(T.SegformerConfig(
            num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
            num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2],
            decoder_hidden_size=32, num_labels=5)), 32, "model.segformer.stages.1.blocks.0",
            (0, 4, 4)),
    }


CONFIGS = _configs()


class _Logits(torch.nn.Module):
    """The model with one output, its logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).logits


@pytest.fixture(scope="session")
def hf_model():
    """name -> (ONNX bytes, eval-mode torch model returning the logits), exported once per
    session."""
    cache = {}

    def get(name):
        if name not in cache:
            factory, size, _, _ = CONFIGS[name]
            torch.manual_seed(0)
            model = factory().eval()
            with torch.no_grad():   # non-trivial norms (HF's init leaves MobileViT's BNs near 0)
                for module in model.modules():
                    if isinstance(module, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                        module.weight.uniform_(0.5, 1.5)
                        module.bias.uniform_(-0.1, 0.1)
                    if isinstance(module, torch.nn.BatchNorm2d):
                        module.running_mean.uniform_(-0.1, 0.1)
                        module.running_var.uniform_(0.5, 1.5)
            model = _Logits(model).eval()
            buf = io.BytesIO()
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (torch.randn(2, 3, size, size),), buf,
                                  dynamo=False, opset_version=18, input_names=["input"],
                                  output_names=["logits"],
                                  dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
            cache[name] = (buf.getvalue(), model.eval())   # the export restores train mode
        return cache[name]

    return get


def _reference(model, layer, view, x):
    """Logits, input gradient and Grad-CAM (resized to the image) by PyTorch autograd."""
    acts = []

    def hook(module, inputs, output):
        a = output if isinstance(output, torch.Tensor) else output[0]
        a.retain_grad()
        acts.append(a)

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        xt = torch.tensor(x, requires_grad=True)
        logits = model(xt)
        logits.gather(1, torch.tensor(TARGETS)[:, None]).sum().backward()
    finally:
        handle.remove()
    a = acts[-1]
    act, grad = a.detach(), a.grad

    def as_map(t):   # [N, C, h, w], by hand
        if view is None:
            return t
        extra, h, w = view
        return t[:, extra:].reshape(t.shape[0], h, w, t.shape[-1]).permute(0, 3, 1, 2)

    act, grad = as_map(act), as_map(grad)
    cam = torch.relu((grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=x.shape[2:], mode="bilinear",
                                          align_corners=False)[:, 0]
    return logits.detach().numpy(), xt.grad.numpy(), cam.numpy()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradient_and_gradcam_match_autograd(hf_model, name):
    data, model = hf_model(name)
    _, size, layer, view = CONFIGS[name]
    assert osal.default_layers(data)["gradcam"] == layer
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    ref_logits, ref_grad, ref_cam = _reference(model, layer, view, x)
    assert np.abs(ref_grad).max() > 0 and np.abs(ref_logits[0] - ref_logits[1]).max() > 1e-3

    ex = osal.Explainer(data, methods=["gradcam"])
    assert ex.map_names == [f"gradcam@{layer}"]
    out = ex.run(x, TARGETS)
    assert rel_err(out["logits"], ref_logits) < 1e-4
    assert np.abs(ref_cam).max() > 0
    assert rel_err(out[f"gradcam@{layer}"], ref_cam) < 1e-4

    import onnxruntime as ort
    graph = osal.backward_graph(data, ["input"])
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    (grad,) = sess.run(["grad:input"], {"input": x, "target": TARGETS})
    assert rel_err(grad, ref_grad) < 1e-4
