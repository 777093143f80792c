"""onnx-saliency: backpropagation saliency for ONNX image models, as explicit ONNX backward graphs.

    import onnx_saliency as osal
    ex = osal.Explainer("model.onnx", methods=["gradient", "gradcam"])
    maps = ex.explain(images)          # {"gradient": [N,H,W], "gradcam@layer4": [N,H,W]}
    ex.save("explainer.onnx")          # runs in a bare onnxruntime.InferenceSession
"""

from . import methods, targets
from .errors import (InputError, LayerNotFoundError, MethodError, ModelError, ModelLoadError,
                     SaliencyError, UnsupportedOpError)
from .explainer import Explainer, backward_graph, default_layers, gradient, list_layers

__version__ = "0.1.0"


def from_torch(module, example_input, methods=("gradient",), layers=None, **kwargs):
    """Export a torch.nn.Module and explain it (see torch_export.from_torch); torch is
    imported only here, never by `import onnx_saliency`."""
    from .torch_export import from_torch as _from_torch
    return _from_torch(module, example_input, methods, layers, **kwargs)

__all__ = ["Explainer", "backward_graph", "default_layers", "from_torch", "gradient", "list_layers",
           "methods", "targets", "SaliencyError",
           "ModelLoadError", "UnsupportedOpError", "LayerNotFoundError", "InputError",
           "MethodError", "ModelError", "__version__"]
