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


def export_torchvision(name: str, path: Path, size: int, seed: int = 0, **kwargs) -> "torch.nn.Module":
    """Export torchvision `name` with seeded random weights (ReLUs made not in-place, so Captum's
    hooks see every one) to `path`; batch dimension dynamic. Returns the eval-mode module."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None, **kwargs).eval()
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
                          input_names=["input"], output_names=["logits"],
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
