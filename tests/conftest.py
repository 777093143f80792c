"""Shared test helpers: fixture graphs, torchvision exports with seeded weights."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "graphs"))

import make_graphs  # noqa: E402


@pytest.fixture(scope="session")
def graphs():
    return make_graphs


def export_torchvision(name: str, path: Path, size: int, seed: int = 0, keep_bn: bool = False,
                       **kwargs) -> "torch.nn.Module":
    """Export torchvision `name` with seeded random weights (ReLUs made not in-place, so Captum's
    hooks see every one) to `path`; batch dimension dynamic. BatchNormalization is folded into
    the convolutions unless `keep_bn`. Returns the eval-mode module."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None, **kwargs).eval()
    if name.startswith("vgg") and size < 224:
        # VGG's AdaptiveAvgPool2d(7) cannot be exported below 224 px; classify the feature
        # map directly instead (same layers otherwise, and 12x cheaper than 224 px)
        cells = (size // 32) ** 2
        model.avgpool = torch.nn.Identity()
        model.classifier[0] = torch.nn.Linear(512 * cells, 4096)
    for module in model.modules():
        if isinstance(module, (torch.nn.ReLU, torch.nn.ReLU6)):
            module.inplace = False
    # break BN's identity statistics so BN rules are exercised with non-trivial values
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    x = torch.randn(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"], do_constant_folding=not keep_bn,
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return model


@pytest.fixture(scope="session")
def torchvision_model(tmp_path_factory):
    """Factory: (name, size) -> (onnx path, torch module); cached per session."""
    cache = {}

    def get(name: str, size: int = 64):
        key = (name, size)
        if key not in cache:
            path = tmp_path_factory.mktemp("tv") / f"{name}_{size}.onnx"
            cache[key] = (path, export_torchvision(name, path, size))
        return cache[key]

    return get


def rapidocr_classifier() -> Path:
    """The text-direction classifier shipped in rapidocr-onnxruntime (a real trained model)."""
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    assert spec is not None and spec.submodule_search_locations, "rapidocr-onnxruntime missing"
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / \
        "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    assert path.is_file(), path
    return path


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    """max |a - ref| / max |ref|."""
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-30))


class pinned_maxpools:
    """Make the PyTorch reference take ONNX Runtime's decisions at kinks for images `x`: the
    argmax of every MaxPool window and the sign of every ReLU input.

    Two engines compute conv outputs that differ in the last bit, so a near-tie in a pooling
    window, or a ReLU input within 1e-7 of zero, can go either way; each engine then
    differentiates its own (correct) forward. Pinning the reference to ORT's decisions makes the
    comparison exact. MaxPools are matched by module path, ReLUs by call order (the exporter
    keeps execution order; each forward pass of the model replays them). On exit it asserts that the engines disagreed on at most 1 decision
    in 1,000 (pinning only settles near-ties).
    """

    def __init__(self, onnx_path, model, x):
        import onnx
        import onnxruntime as ort

        from onnx_saliency.layers import _scopes_from_name

        proto = onnx.load(str(onnx_path))
        pools, pool_outputs, relu_outputs = [], [], []
        for node in proto.graph.node:
            if node.op_type == "MaxPool":
                if len(node.output) < 2:
                    node.output.append(node.output[0] + "_indices")
                pools.append(_scopes_from_name(node.name)[-1])
                pool_outputs.append(node.output[1])
            elif node.op_type == "Relu":
                relu_outputs.append(node.output[0])
        existing = {o.name for o in proto.graph.output}
        for name in pool_outputs + relu_outputs:
            if name not in existing:
                elem = onnx.TensorProto.INT64 if name in pool_outputs else onnx.TensorProto.FLOAT
                proto.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        values = sess.run(pool_outputs + relu_outputs, {"input": x.numpy()})
        self.model, self.patched = model, []
        self.indices = dict(zip(pools, values[:len(pools)]))
        self.relu_masks = [v > 0 for v in values[len(pools):]]
        self.flips = self.total = 0

    def __enter__(self):
        import torch
        import torch.nn.functional as F
        from torch.overrides import TorchFunctionMode

        for path, idx in self.indices.items():
            module = self.model.get_submodule(path)

            def forward(x, idx=idx, m=module):
                n, c, h, w = x.shape
                local = torch.from_numpy(idx % (h * w)).reshape(n, c, -1)
                own = F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation,
                                   m.ceil_mode, return_indices=True)[1]
                self._count(own.reshape(n, c, -1) != local)
                return x.flatten(2).gather(2, local).reshape(idx.shape)

            self.patched.append(module)
            module.forward = forward

        pin = self
        relus = (F.relu, torch.relu, torch.Tensor.relu)

        class ReluPin(TorchFunctionMode):
            calls = 0

            def __torch_function__(self, func, types, args=(), kwargs=None):
                if func not in relus:
                    return func(*args, **(kwargs or {}))
                x = args[0]
                mask = torch.from_numpy(pin.relu_masks[ReluPin.calls % len(pin.relu_masks)])
                mask = mask.reshape(x.shape)
                ReluPin.calls += 1
                pin._count(mask != (x > 0))
                return torch.where(mask, x, torch.zeros_like(x))

        self.mode = ReluPin()  # active only inside the model's forward (not Captum's own relus)
        def start(*_):
            self.mode.__enter__()

        def stop(*_):
            self.mode.__exit__(None, None, None)

        self.hooks = [self.model.register_forward_pre_hook(start),
                      self.model.register_forward_hook(stop)]
        return self

    def _count(self, disagreements):
        self.flips += int(disagreements.sum())
        self.total += disagreements.numel()

    def __exit__(self, *exc):
        for hook in self.hooks:
            hook.remove()
        for module in self.patched:
            del module.forward  # back to the class's forward
        if exc[0] is None:
            assert self.mode.calls % max(1, len(self.relu_masks)) == 0, "ReLU calls do not match"
            assert self.flips <= max(1, self.total // 1000), (self.flips, self.total)
        return False
