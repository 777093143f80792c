"""Print docs/methods.md's table of default layers: `onnx_saliency.default_layers` on torchvision
architectures exported at 224 px (random weights; the names do not depend on them).

    python examples/default_layers_table.py      # needs the `test` extra (torch, torchvision)
"""

import tempfile
import warnings
from pathlib import Path

import onnx_saliency as osal
import torch
import torchvision

ARCHITECTURES = ["resnet18", "resnet50", "vgg11", "vgg16", "vgg16_bn", "mobilenet_v2",
                 "mobilenet_v3_small", "efficientnet_b0", "densenet121", "squeezenet1_1",
                 "googlenet", "shufflenet_v2_x1_0", "regnet_y_400mf", "convnext_tiny"]

print("| architecture | Grad-CAM, NormGrad, selective | EBP, c-EBP | normgrad_conv |")
print("|---|---|---|---|")
with tempfile.TemporaryDirectory() as tmp:
    for name in ARCHITECTURES:
        kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
        model = getattr(torchvision.models, name)(weights=None, **kwargs).eval()
        path = Path(tmp) / f"{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False,
                              opset_version=17, input_names=["input"], output_names=["logits"])
            d = osal.default_layers(path)
        print(f"| {name} | `{d['gradcam']}` | `{d['ebp']}` | `{d['normgrad_conv']}` |")
