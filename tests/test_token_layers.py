"""Token layers (layers.LayerView): a ViT-like [N, 1 + h·w, C] token tensor and a channels-last
[N, h, w, C] map are read as [N, C, h, w] by the layer methods, the grid found in the graph.

The fixtures are built here with onnx.helper; the references are the same nets written in
PyTorch from the same weights (autograd), the maps formed by hand on the grid and resized with
bilinear half-pixel interpolation (as the explainer's Resize). Tolerance 1e-5 relative
(max |ours − ref| / max |ref|): float32 through a dozen ops; the nets are smooth (Tanh, no kinks),
so no near-tie can make ORT and PyTorch differ."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import rel_err

import onnx_saliency as osal
from onnx_saliency.errors import LayerNotFoundError

torch = pytest.importorskip("torch")

C, K, S = 6, 3, 8          # channels, classes, image size; patches 2x2 -> grid 4x4
RNG = np.random.default_rng(0)
W = {"conv": RNG.standard_normal((C, 3, 2, 2)).astype(np.float32) * 0.5,
     "conv_b": RNG.standard_normal(C).astype(np.float32) * 0.1,
     "cls": RNG.standard_normal((1, 1, C)).astype(np.float32),
     "mix": RNG.standard_normal((C, C)).astype(np.float32) * 0.5,
     "fc": RNG.standard_normal((K, C)).astype(np.float32),
     "gamma": RNG.uniform(0.5, 1.5, C).astype(np.float32),
     "beta": RNG.uniform(-0.1, 0.1, C).astype(np.float32)}


def _vit_like() -> onnx.ModelProto:
    """image -> patch Conv -> flatten to tokens -> [cls; patches] -> block (x + tanh(x M),
    named 'block/out') -> LayerNorm -> mean over tokens -> Gemm."""
    n = helper.make_node
    nodes = [
        n("Conv", ["input", "conv", "conv_b"], ["patches"], kernel_shape=[2, 2], strides=[2, 2]),
        n("Reshape", ["patches", "flat_shape"], ["flat"]),                 # [N, C, 16]
        n("Transpose", ["flat"], ["tokens"], perm=[0, 2, 1]),             # [N, 16, C]
        n("ReduceMean", ["tokens", "axis1"], ["pooled_patches"], keepdims=1),
        n("Add", ["pooled_patches", "cls"], ["cls_token"]),                # [N, 1, C]
        n("Concat", ["cls_token", "tokens"], ["seq"], axis=1),            # [N, 17, C]
        n("MatMul", ["seq", "mix"], ["mixed"]),
        n("Tanh", ["mixed"], ["act"]),
        n("Add", ["seq", "act"], ["block/out"], name="/block/Add"),
        n("LayerNormalization", ["block/out", "gamma", "beta"], ["normed"], axis=-1),
        n("ReduceMean", ["normed", "axis1"], ["pooled"], keepdims=0),
        n("Gemm", ["pooled", "fc"], ["logits"], transB=1),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in W.items()] + [
        numpy_helper.from_array(np.array([0, C, -1], np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    graph = helper.make_graph(
        nodes, "vit_like", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, S, S])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", K])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _nhwc_net() -> onnx.ModelProto:
    """image -> patch Conv -> NHWC -> x + tanh(x M) ('stage/out') -> NCHW -> global pool -> Gemm."""
    n = helper.make_node
    nodes = [
        n("Conv", ["input", "conv", "conv_b"], ["patches"], kernel_shape=[2, 2], strides=[2, 2]),
        n("Transpose", ["patches"], ["nhwc"], perm=[0, 2, 3, 1]),
        n("MatMul", ["nhwc", "mix"], ["mixed"]),
        n("Tanh", ["mixed"], ["act"]),
        n("Add", ["nhwc", "act"], ["stage/out"]),
        n("Transpose", ["stage/out"], ["nchw"], perm=[0, 3, 1, 2]),
        n("GlobalAveragePool", ["nchw"], ["gap"]),
        n("Flatten", ["gap"], ["pooled"]),
        n("Gemm", ["pooled", "fc"], ["logits"], transB=1),
    ]
    inits = [numpy_helper.from_array(W[k], k) for k in ("conv", "conv_b", "mix", "fc")]
    graph = helper.make_graph(
        nodes, "nhwc", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, S, S])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", K])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _torch_layer(x, tokens: bool):
    """(logits, the layer (tokens: `seq`; NHWC: `stage/out`), its view as [N, C, h, w])."""
    t = {k: torch.tensor(v) for k, v in W.items()}
    patches = torch.nn.functional.conv2d(x, t["conv"], t["conv_b"], stride=2)
    if tokens:
        seq = patches.flatten(2).transpose(1, 2)
        seq = torch.cat([seq.mean(1, keepdim=True) + t["cls"], seq], 1)
        block = seq + torch.tanh(seq @ t["mix"])
        normed = torch.nn.functional.layer_norm(block, (C,), t["gamma"], t["beta"])
        logits = normed.mean(1) @ t["fc"].T
        return logits, seq, lambda a: a[:, 1:].reshape(-1, 4, 4, C).permute(0, 3, 1, 2)
    nhwc = patches.permute(0, 2, 3, 1)
    layer = nhwc + torch.tanh(nhwc @ t["mix"])
    logits = layer.mean((1, 2)) @ t["fc"].T
    return logits, layer, lambda a: a.permute(0, 3, 1, 2)


def _references(tokens: bool, x: np.ndarray, target: np.ndarray) -> dict:
    xt = torch.tensor(x, requires_grad=True)
    logits, layer, view = _torch_layer(xt, tokens)
    layer.retain_grad()
    logits.gather(1, torch.tensor(target)[:, None]).sum().backward()
    a, g = view(layer.detach()), view(layer.grad)
    maps = {"gradcam": torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1)),
            "linear_approx": (a * g).sum(1),
            "normgrad": g.norm(dim=1) * a.norm(dim=1)}
    return {k: torch.nn.functional.interpolate(m[:, None], size=(S, S), mode="bilinear",
                                               align_corners=False)[:, 0].numpy()
            for k, m in maps.items()}


@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "nhwc"])
def test_layer_methods_on_the_grid_match_autograd(tokens):
    model = _vit_like() if tokens else _nhwc_net()
    # the token layer is the block's input `seq` (made by a Concat with the class token): at
    # the block's output, right before the LayerNorm, Σ_c x_c g_c vanishes (LN's gradient is
    # orthogonal to x − mean and sums to 0 over c), leaving linear_approx only rounding noise
    layer = "seq" if tokens else "stage/out"
    x = RNG.standard_normal((2, 3, S, S)).astype(np.float32)
    target = np.array([0, 2])
    refs = _references(tokens, x, target)
    ex = osal.Explainer(model, methods=["gradcam", "linear_approx", "normgrad"], layers=[layer])
    maps = ex.explain(x, target)
    for method, ref in refs.items():
        assert np.abs(ref).max() > 0
        assert rel_err(maps[f"{method}@{layer}"], ref) < 1e-5, method


def test_grid_and_extra_tokens_are_read_from_the_graph():
    from onnx_saliency.canonical import canonicalize
    from onnx_saliency.graph import GraphIndex
    from onnx_saliency.layers import LayerNames
    canon = canonicalize(_vit_like())
    names = LayerNames(GraphIndex(canon.model), canon.input_name)
    assert names.view("block/out").describe() == "tokens 4x4 +1"
    assert names.view("tokens").describe() == "tokens 4x4"
    assert names.view("flat") is None                 # [N, C, h·w]: channels first, no tokens
    assert names.view("patches").describe() == ""     # NCHW as it is
    canon = canonicalize(_nhwc_net())
    names = LayerNames(GraphIndex(canon.model), canon.input_name)
    assert names.view("stage/out").describe() == "NHWC 4x4"
    assert names.view("nchw").describe() == ""


def test_default_layer_is_the_block_before_the_final_norm():
    assert osal.default_layers(_vit_like())["gradcam"] == "block"   # module path of block/out
    ex = osal.Explainer(_vit_like(), methods=["gradcam"])
    assert ex.map_names == ["gradcam@block"]


def test_a_rank3_layer_off_the_grid_is_refused_in_one_sentence():
    with pytest.raises(LayerNotFoundError, match=r"Layer 'flat' is a tensor \[N,6,16\]"):
        osal.Explainer(_vit_like(), methods=["gradcam"], layers=["flat"])


def test_cli_layers_shows_the_grid(capsys, tmp_path):
    from onnx_saliency.cli import main
    path = tmp_path / "vit_like.onnx"
    onnx.save(_vit_like(), str(path))
    assert main(["layers", str(path)]) == 0
    out = capsys.readouterr().out
    assert "block\tN×17×6\ttokens 4x4 +1" in out
    assert "default layers: gradcam -> block" in out
