"""Layer names: module paths recovered from exporter scopes, and raw tensor names.

PyTorch's exporters leave the module hierarchy in the graph:
- the TorchScript exporter in node names: `/layer2/layer2.0/downsample/downsample.0/Conv`;
- the dynamo exporter in node metadata `pkg.torch.onnx.name_scopes`:
  `['', 'layer2', 'layer2.0', 'layer2.0.downsample', 'layer2.0.downsample.0', 'conv2d_7']`.
A module path names the output of the last node (in graph order) inside that module.

Also the layers a method taps when none is named: the general choice (`default_layer`), the
families where the papers fix layers (`architecture`) and their stage sets (`stage_layers`).
"""

from __future__ import annotations

import ast
import difflib

from .errors import LayerNotFoundError
from .graph import GraphIndex

_POOLS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}


def _scopes_from_metadata(node) -> list[str] | None:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            return [s for s in scopes[1:-1] if s]
    return None


def _scopes_from_name(name: str) -> list[str]:
    """'/layer2/layer2.0/downsample/downsample.0/Conv' -> ['layer2', 'layer2.0', …]."""
    if not name.startswith("/"):
        return []
    parts = [p for p in name.split("/")[1:-1] if p]
    paths: list[str] = []
    prev = ""
    for part in parts:
        if prev and part.startswith(prev + "."):   # Sequential child: 'downsample' -> 'downsample.0'
            path = paths[-1] + part[len(prev):]
        else:
            path = f"{paths[-1]}.{part}" if paths else part
        paths.append(path)
        prev = part
    return paths


def module_paths(index: GraphIndex) -> dict[str, str]:
    """Module path -> the tensor it names (the last float output inside the module)."""
    found: dict[str, str] = {}
    for node in index.nodes:
        outs = [o for o in node.output if o and index.is_float(o)]
        if not outs:
            continue
        scopes = _scopes_from_metadata(node)
        if scopes is None:
            scopes = _scopes_from_name(node.name)
        for path in scopes:
            found.pop(path, None)  # re-insert so dict order follows the graph
            found[path] = outs[0]
    return found


def _global_pool(index: GraphIndex, node) -> bool:
    """A pooling to one value per channel: GlobalAverage/MaxPool, or a ReduceMean/ReduceMax
    over H and W of a 4-D tensor."""
    if node.op_type in ("GlobalAveragePool", "GlobalMaxPool"):
        return True
    if node.op_type not in ("ReduceMean", "ReduceMax") or not node.input:
        return False
    axes = index.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if axes is None:
        axes = next((a.ints for a in node.attribute if a.name == "axes"), None)
    return axes is not None and sorted(int(a) % 4 for a in axes) == [2, 3] \
        and len(index.shapes.get(node.input[0]) or ()) == 4


def default_layer(index: GraphIndex, input_name: str) -> str:
    """The last 4-D spatial tensor (not 1×1, not made by a pooling op) before the last global
    pooling (the classifier's; squeeze-excitation pools come earlier): the usual Grad-CAM
    layer."""
    pools = [i for i, node in enumerate(index.nodes) if _global_pool(index, node)]
    best = input_name
    for node in index.nodes[:pools[-1] if pools else None]:
        if node.op_type in _POOLS:
            continue
        for out in node.output:
            shape = index.shapes.get(out)
            if out and index.is_float(out) and shape is not None and len(shape) == 4:
                h, w = shape[2], shape[3]
                if not (h == 1 and w == 1):
                    best = out
    return best


def architecture(names: LayerNames) -> str | None:
    """The family where the papers fix layers by name: "resnet" (module paths layer1…layer4),
    "vgg" (five MaxPools, all inside `features`), else None."""
    if {"layer1", "layer2", "layer3", "layer4"} <= set(names.paths):
        return "resnet"
    return "vgg" if vgg_pools(names) else None


def vgg_pools(names: LayerNames) -> list:
    """The five MaxPool nodes of a VGG's `features`, or [] for another network."""
    pools = [n for n in names.index.nodes if n.op_type == "MaxPool"]
    if len(pools) == 5 and all(names.friendly(n.output[0]).split(".")[0] == "features"
                               for n in pools):
        return pools
    return []


def stage_layers(names: LayerNames) -> list[str]:
    """The last layer of each stage, the layer sets of multi-layer maps (METHODS.md §2):
    ResNets layer1–layer4; VGGs the input of each of their five MaxPools (VGG16 features.3, 8,
    15, 22, 29: relu1_2 … relu5_3). Other networks have no agreed set: LayerNotFoundError."""
    family = architecture(names)
    if family == "resnet":
        return ["layer1", "layer2", "layer3", "layer4"]
    if family == "vgg":
        return [names.friendly(n.input[0]) for n in vgg_pools(names)]
    raise LayerNotFoundError(
        'layers="stages" knows the stages of ResNets (layer1-layer4) and VGGs (the input of '
        "each MaxPool); name this model's layers instead (onnx_saliency.list_layers lists them).")


class LayerNames:
    """Resolves user-facing layer names to tensors, and back."""

    def __init__(self, index: GraphIndex, input_name: str):
        self.index = index
        self.input_name = input_name
        self.paths = module_paths(index)
        self.tensors = [input_name] + [o for n in index.nodes for o in n.output
                                       if o and index.is_float(o)]
        self._tensor_set = set(self.tensors)
        self._friendly = {}
        for path, tensor in self.paths.items():
            self._friendly.setdefault(tensor, path)

    def __contains__(self, name: str) -> bool:
        return name in self.paths or name in self._tensor_set

    def names(self) -> list[str]:
        return list(self.paths) + [t for t in self.tensors if t not in self.paths]

    def resolve(self, name: str) -> str:
        if name in self.paths:
            return self.paths[name]
        if name in self._tensor_set:
            return name
        close = difflib.get_close_matches(name, self.names(), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise LayerNotFoundError(
            f"Layer '{name}' is neither a module path nor a tensor of the model.{hint} "
            "onnx_saliency.list_layers(model) lists the valid names.")

    def friendly(self, tensor: str) -> str:
        return self._friendly.get(tensor, tensor)
