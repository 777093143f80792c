"""Layer names: module paths recovered from exporter scopes, and raw tensor names.

PyTorch's exporters leave the module hierarchy in the graph:
- the TorchScript exporter in node names: `/layer2/layer2.0/downsample/downsample.0/Conv`;
- the dynamo exporter in node metadata `pkg.torch.onnx.name_scopes`:
  `['', 'layer2', 'layer2.0', 'layer2.0.downsample', 'layer2.0.downsample.0', 'conv2d_7']`.
A module path names the output of the last node (in graph order) inside that module.

Also the layers a method taps when none is named: the general choice (`default_layer`), the
families where the papers fix layers (`architecture`) and their stage sets (`stage_layers`).

Layer views (docs/methods.md §8, token layers): a layer method's head reads an [N, C, h, w] tensor.
A vision transformer's token tensor [N, E + h·w, C] (E extra tokens first: class, distillation,
registers) and a channels-last stage output [N, h, w, C] (torchvision's Swin) are read through a
`LayerView` that drops the extra tokens and transposes/reshapes to [N, C, h, w] with standard ONNX
ops. The grid h × w is read from the graph (`Layouts`): the Reshape that flattens the patch
embedding's [N, C, h, w] into [N, C, h·w], or a Reshape between tokens [N, h·w, C] and
[N, h, w, C] (Swin's windows and patch merging).
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass

import numpy as np
import onnx

from .errors import LayerNotFoundError, ModelError, ModelLoadError
from .graph import GraphBuilder, GraphIndex, attrs_of

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


def default_layer(index: GraphIndex, input_name: str, names: LayerNames | None = None,
                  output: str | None = None) -> str:
    """On a dense output [N, K, H, W] (a segmenter's): the feature map feeding its head
    (`dense_head_input`), where one is found. Otherwise the last spatial layer (a 4-D tensor not 1×1 and not made by a pooling op, or a token
    layer on its patch grid) before the last global pooling (the classifier's; squeeze-excitation
    pools come earlier): the usual Grad-CAM layer. Where that layer is the final LayerNorm's
    output (or a reshape of it), its input instead: a Swin's last stage, a mean-pooled ViT's
    last block output. A ViT that reads out its class token only (`_class_token_readout`) has
    no gradient at the last block's patch tokens: there, the last block's attention input (its
    first LayerNorm's output, pytorch-grad-cam's `blocks[-1].norm1`)."""
    names = names if names is not None else LayerNames(index, input_name)
    dense = dense_head_input(index, input_name, output) if output is not None else None
    if dense is not None:
        return dense
    pools = [i for i, node in enumerate(index.nodes) if _global_pool(index, node)]
    best = input_name
    for node in index.nodes[:pools[-1] if pools else None]:
        if node.op_type in _POOLS:
            continue
        for out in node.output:
            if not out or not index.is_float(out):
                continue
            shape = index.shapes.get(out)
            if shape is not None and len(shape) == 4:
                view = names.view(out)
                h, w = view.grid if view is not None and view.grid else (shape[2], shape[3])
                if not (h == 1 and w == 1):
                    best = out
            elif shape is not None and len(shape) == 3 and names.view(out) is not None:
                best = out
    best = _before_final_norm(index, names, best)
    if _class_token_readout(index, names, best):
        return _last_attention_input(index, names, best) or best
    return best


def _class_token_readout(index: GraphIndex, names: LayerNames, tensor: str) -> bool:
    """Whether the token layer `tensor` is read (through LayerNorms) only by Gathers or Slices of
    its extra tokens: the patch tokens then reach the output through no later op."""
    view = names.view(tensor)
    if view is None or view.layout != "tokens" or not view.extra:
        return False
    frontier, readers = [tensor], []
    while frontier:
        for node in index.consumers.get(frontier.pop(), []):
            if node.op_type in ("LayerNormalization", "Identity"):
                frontier.append(node.output[0])
            else:
                readers.append(node)
    return bool(readers) and all(_reads_extra_only(index, node, view.extra) for node in readers)


def _reads_extra_only(index: GraphIndex, node, extra: int) -> bool:
    """A Gather or Slice along the token axis 1 that keeps only tokens below `extra`."""
    if node.op_type == "Gather" and attrs_of(node).get("axis", 0) in (1, -2):
        picked = index.const(node.input[1])
        return picked is not None and bool(((picked >= 0) & (picked < extra)).all())
    if node.op_type == "Slice" and len(node.input) >= 4:
        starts, ends, axes = (index.const(node.input[i]) for i in (1, 2, 3))
        return (starts is not None and ends is not None and axes is not None
                and [int(a) for a in axes] in ([1], [-2]) and 0 <= int(starts[0])
                and int(ends[0]) <= extra)
    return False


def _last_attention_input(index: GraphIndex, names: LayerNames, before: str) -> str | None:
    """The output of the last LayerNormalization before `before` that is a token layer feeding a
    Softmax (attention) before any other LayerNormalization: the last block's attention input."""
    stop = index.nodes.index(index.producer[before]) if before in index.producer else 0
    for node in reversed(index.nodes[:stop]):
        out = node.output[0] if node.output else ""
        if node.op_type != "LayerNormalization" or (names.view(out) or NCHW).layout != "tokens":
            continue
        frontier, seen = [out], set()
        while frontier and len(seen) < 64:
            for user in index.consumers.get(frontier.pop(), []):
                if user.op_type == "Softmax":
                    return out
                if user.op_type != "LayerNormalization" and user.name not in seen:
                    seen.add(user.name)
                    frontier.extend(o for o in user.output if o)
    return None


_SAME_TOKENS = {"Reshape", "Transpose", "Flatten", "Identity", "Slice"}


def _before_final_norm(index: GraphIndex, names: LayerNames, tensor: str) -> str:
    """`tensor`, or the layer it is made from by layout ops (Reshape, Transpose, a Slice of the
    extra tokens) and at most one LayerNormalization, where that walk passes the norm or starts
    at a token or channels-last layer: the encoder's output, not the final norm's or the
    pooler's patch tokens."""
    t, passed = tensor, False
    while True:
        node = index.producer.get(t)
        if node is None or not node.input or names.view(node.input[0]) is None:
            break
        if node.op_type == "LayerNormalization":
            if passed:
                break
            passed = True
        elif node.op_type not in _SAME_TOKENS:
            break
        t = node.input[0]
    start = names.view(tensor)
    return t if passed or (start is not None and start.layout != "NCHW") else tensor


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
    """The last layer of each stage, the layer sets of multi-layer maps (docs/methods.md §2):
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


MAX_EXTRA_TOKENS = 16
# ops that keep a channels-last tensor channels-last (they act per position or on H, W, C alike)
_LAYOUT_CHANGING = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Conv",
                    "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
                    "LpPool", "Resize", "Upsample", "Gather", "GatherElements", "Einsum",
                    "DepthToSpace", "SpaceToDepth", "ReduceMean", "ReduceSum", "ReduceMax",
                    "ReduceMin", "ReduceL2", "ReduceL1", "ReduceProd", "ReduceSumSquare",
                    "ReduceLogSumExp", "ArgMax", "ArgMin", "Tile", "Expand", "GridSample",
                    "BatchNormalization", "InstanceNormalization", "GroupNormalization"}


# ops whose 4-D output is an [N, C, H, W] map
_MAKES_SPATIAL = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "Resize",
                  "Upsample", "BatchNormalization", "InstanceNormalization", "GroupNormalization",
                  "DepthToSpace", "SpaceToDepth"}


@dataclass(frozen=True)
class LayerView:
    """How a layer is read as [N, C, h, w]: "NCHW" as it is; "tokens": [N, extra + h·w, C],
    the first `extra` tokens dropped, the rest on the h × w grid (row-major); "NHWC":
    [N, h, w, C] transposed."""

    layout: str = "NCHW"
    grid: tuple[int, int] | None = None
    extra: int = 0
    channels: int | None = None

    def describe(self) -> str:
        """"tokens 14x14 +1", "NHWC 7x7", or "" for an NCHW layer."""
        if self.layout == "NCHW":
            return ""
        h, w = self.grid
        return f"{self.layout} {h}x{w}" + (f" +{self.extra}" if self.extra else "")

    def apply(self, b: GraphBuilder, t: str) -> str:
        """t read as [N, C, h, w]: Slice off the extra tokens, Transpose, Reshape."""
        if self.layout == "NHWC":
            return b.op("Transpose", t, perm=[0, 3, 1, 2])
        if self.layout != "tokens":
            return t
        if self.extra:
            t = b.op("Slice", t, b.ints([self.extra]), b.ints([2**62]), b.ints([1]))
        t = b.op("Transpose", t, perm=[0, 2, 1])
        return b.op("Reshape", t, b.ints([0, self.channels, *self.grid]))


NCHW = LayerView()


def _batch_one_shapes(index: GraphIndex, input_name: str) -> tuple[dict, int | str | None]:
    """Static shapes of every tensor with the image batch fixed to 1, and the batch dim those
    shapes carry. ONNX shape inference leaves a token count unknown where it comes from shape
    arithmetic (a flatten's −1, a class token expanded to the batch): on a weightless copy, each
    Shape of a statically shaped tensor becomes a constant and the shape arithmetic is folded
    (canonical.fold_constants), until no Shape is left to resolve. A model already fixed to a
    batch B keeps its shapes (batch B)."""
    from types import SimpleNamespace

    from onnx import numpy_helper

    from .canonical import fold_constants, infer_shapes, skeleton
    shape = index.shapes.get(input_name)
    batch = shape[0] if shape else None
    if isinstance(batch, int):
        return index.shapes, batch
    probe = skeleton(index.model)
    del probe.graph.value_info[:]
    inp = next((i for i in probe.graph.input if i.name == input_name), None)
    if inp is None or not inp.type.tensor_type.shape.dim:
        return index.shapes, batch
    inp.type.tensor_type.shape.dim[0].Clear()
    inp.type.tensor_type.shape.dim[0].dim_value = 1
    try:
        probe = infer_shapes(probe)
        for _ in range(64):   # a round per chain of shape arithmetic (Swin: per block)
            shapes = _read_shapes(probe)
            resolved = []
            for node in probe.graph.node:
                dims = shapes.get(node.input[0]) if node.op_type == "Shape" else None
                if dims is not None and all(isinstance(d, int) for d in dims):
                    a = attrs_of(node)
                    value = np.array(dims[a.get("start", 0):a.get("end", len(dims))], np.int64)
                    probe.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
                    resolved.append(node)
            if not resolved:
                break
            for node in resolved:
                probe.graph.node.remove(node)
            del probe.graph.value_info[:]   # stale partial shapes would stay partial
            state = SimpleNamespace(model=probe)
            fold_constants(state)
            probe = state.model
    except ModelLoadError:
        return index.shapes, batch
    found = _read_shapes(probe)
    shapes = dict(index.shapes)
    shapes.update({k: v for k, v in found.items() if k in index.shapes or k in index.producer})
    shapes[input_name] = (1, *shape[1:])
    return shapes, 1


def _read_shapes(model: onnx.ModelProto) -> dict:
    out = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.HasField("shape"):
            out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                 for d in tt.shape.dim)
    return out


class Layouts:
    """Which tensors are token layers or channels-last, and their patch grids, read from the
    graph in one pass (module docstring)."""

    def __init__(self, index: GraphIndex, input_name: str):
        self.index = index
        self.shapes, self.batch = _batch_one_shapes(index, input_name)
        self.grids: dict[int, tuple[int, int]] = {}   # patch count h·w -> (h, w)
        self.spatial: set[str] = {input_name}          # [N, C, H, W] image-like maps
        self.nhwc: set[str] = set()                    # [N, H, W, C] maps
        self.channels_first: set[str] = set()          # [N, C, h·w]: flattened maps
        for node in index.nodes:
            self._visit(node)

    def _static(self, name: str) -> tuple[int, ...] | None:
        shape = self.shapes.get(name)
        if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
            return None
        return shape if shape[0] == self.batch else None

    def _grid(self, h: int, w: int) -> None:
        if h > 1 and w > 1:
            self.grids.setdefault(h * w, (h, w))

    def _visit(self, node: onnx.NodeProto) -> None:
        if not node.input or not node.output or not self.index.is_float(node.output[0]):
            return
        x, y = node.input[0], node.output[0]
        xs, ys = self._static(x), self._static(y)
        rank = len(self.shapes.get(y) or ())
        if node.op_type in _MAKES_SPATIAL:
            if rank == 4:
                self.spatial.add(y)
            return
        if node.op_type in ("Reshape", "Flatten") and xs and ys:
            if len(xs) == 4 and len(ys) == 3:
                if x in self.spatial and ys[1] == xs[1] and ys[2] == xs[2] * xs[3]:
                    self._grid(xs[2], xs[3])                 # [N,C,h,w] -> [N,C,h·w]
                    self.channels_first.add(y)
                elif ys[2] == xs[3] and ys[1] == xs[1] * xs[2]:
                    self._grid(xs[1], xs[2])                 # [N,h,w,C] -> [N,h·w,C]
            elif len(xs) == 3 and len(ys) == 4:
                if x in self.channels_first and xs[1] == ys[1] and xs[2] == ys[2] * ys[3]:
                    self._grid(ys[2], ys[3])                 # [N,C,h·w] -> [N,C,h,w]
                    self.spatial.add(y)
                elif xs[2] == ys[3] and xs[1] == ys[1] * ys[2] and ys[1] > 1 and ys[2] > 1:
                    self._grid(ys[1], ys[2])                 # [N,h·w,C] -> [N,h,w,C]
                    self.nhwc.add(y)
            return
        if node.op_type == "Transpose":
            perm = list(attrs_of(node).get("perm", []))
            if perm == [0, 2, 3, 1] and x in self.spatial:
                self.nhwc.add(y)
            elif perm == [0, 3, 1, 2] and x in self.nhwc:
                self.spatial.add(y)
            elif perm == [0, 2, 1] and x not in self.channels_first:
                self.channels_first.add(y)                   # tokens -> [N, C, T]
            return
        if node.op_type in _LAYOUT_CHANGING:
            return
        for marked in (self.spatial, self.nhwc, self.channels_first):
            if any(i in marked and len(self.shapes.get(i) or ()) == rank for i in node.input):
                marked.add(y)

    def view(self, tensor: str) -> LayerView | None:
        """How `tensor` is read as [N, C, h, w], or None where it cannot be."""
        shape = self.shapes.get(tensor) or self.index.shapes.get(tensor)
        if shape is None or len(shape) not in (3, 4):
            return None
        static = self._static(tensor)
        if len(shape) == 4:
            if tensor in self.nhwc and static:
                return LayerView("NHWC", (static[1], static[2]), 0, static[3])
            return NCHW
        if not static or tensor in self.channels_first:
            return None
        tokens = static[1]
        fits = [(tokens - p, p) for p in self.grids if 0 <= tokens - p <= MAX_EXTRA_TOKENS
                and tokens - p < p]
        if not fits:
            return None
        extra, patches = min(fits)
        return LayerView("tokens", self.grids[patches], extra, static[2])


class LayerNames:
    """Resolves user-facing layer names to tensors, and back; `view` reads a layer as
    [N, C, h, w]."""

    def __init__(self, index: GraphIndex, input_name: str,
                 folded: tuple[tuple[onnx.NodeProto, str], ...] = ()):
        """`folded`: CanonicalModel.folded, the nodes canonicalisation removed and why; their
        outputs and module paths are refused with that sentence."""
        self.index = index
        self.input_name = input_name
        self.paths = module_paths(index)
        self.tensors = [input_name] + [o for n in index.nodes for o in n.output
                                       if o and index.is_float(o)]
        self._tensor_set = set(self.tensors)
        self._friendly = {}
        self._layouts: Layouts | None = None
        for path, tensor in self.paths.items():
            self._friendly.setdefault(tensor, path)
        self._folded: dict[str, str] = {}
        for node, why in folded:
            scopes = _scopes_from_metadata(node)
            for name in [*node.output, *(scopes if scopes is not None else
                                         _scopes_from_name(node.name))]:
                if name and name not in self:
                    self._folded.setdefault(name, why)

    def __contains__(self, name: str) -> bool:
        return name in self.paths or name in self._tensor_set

    def names(self) -> list[str]:
        return list(self.paths) + [t for t in self.tensors if t not in self.paths]

    def resolve(self, name: str) -> str:
        if name in self.paths:
            return self.paths[name]
        if name in self._tensor_set:
            return name
        if name in self._folded:
            raise LayerNotFoundError(f"Layer '{name}' {self._folded[name]}")
        close = difflib.get_close_matches(name, self.names(), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise LayerNotFoundError(
            f"Layer '{name}' is neither a module path nor a tensor of the model.{hint} "
            "onnx_saliency.list_layers(model) lists the valid names.")

    def friendly(self, tensor: str) -> str:
        return self._friendly.get(tensor, tensor)

    @property
    def layouts(self) -> Layouts:
        if self._layouts is None:
            self._layouts = Layouts(self.index, self.input_name)
        return self._layouts

    def view(self, tensor: str) -> LayerView | None:
        """How the layer `tensor` is read as [N, C, h, w] (LayerView), None where it cannot be."""
        return self.layouts.view(tensor)

    def checked_view(self, tensor: str, label: str) -> LayerView:
        """`view`, or LayerNotFoundError saying why the layer cannot give a map."""
        view = self.view(tensor)
        if view is not None:
            return view
        shape = self.layouts.shapes.get(tensor) or self.index.shapes.get(tensor)
        dims = "[" + ",".join("N" if i == 0 else str(d) for i, d in enumerate(shape)) + "]" \
            if shape else "of unknown shape"
        raise LayerNotFoundError(
            f"Layer '{label}' is a tensor {dims}, neither [N,C,H,W], [N,H,W,C] nor [N,T,C] tokens "
            "on a patch grid found in the graph; saliency maps need one of those "
            "(onnx_saliency.list_layers(model) lists the layers).")


# -- detectors: the neck outputs feeding each level's head ------------------------------------

NECK = "neck"   # the label of a detector's default layer: each level's neck output


@dataclass(frozen=True)
class DetectorLevel:
    """One level of a single-stage detector: the neck output `tensor` feeding that level's head
    (on the level's grid), and the candidates it makes: indices [start, stop) along `axis` of
    the raw output."""

    tensor: str
    grid: tuple[int, int]
    axis: int
    start: int
    stop: int


def detector_levels(index: GraphIndex, input_name: str, output: str) -> list[DetectorLevel]:
    """The levels of a raw single-stage detector output (targets.detection_layout: YOLOv5
    [N, A, 5+K] or YOLOv8 [N, 4+K, A]), finest grid first; [] where the output is not one.

    A level's head tensors are the 4-D tensors whose values reach the output through no other
    4-D tensor (the head's last convs, before they are reshaped into candidates), grouped by
    grid; A = m Σ h·w over the grids (m candidates per cell: YOLOv8 1, YOLOv5 its head's
    channels / (5+K)), the levels in order of decreasing h·w (the exporters' order). The neck
    output of a level: the latest tensor every path from the image to its head tensors passes
    through (their common dominator): the tensor both the box and the class branch read."""
    from .targets import detection_layout
    shape = index.shapes.get(output)
    try:
        layout = detection_layout(shape, "auto")
    except ModelError:   # not a detector's output
        return []
    axis, row = (1, shape[2]) if layout == "yolov5" else (2, shape[1])
    anchors = shape[axis] if isinstance(shape[axis], int) else None
    order = {n.name: i for i, n in enumerate(index.nodes)}
    ancestors, frontier = {output}, [output]
    while frontier:                              # the output's float ancestors
        node = index.producer.get(frontier.pop())
        for t in (node.input if node is not None else []):
            if t and t not in ancestors and t not in index.initializers:
                ancestors.add(t)
                frontier.append(t)
    four_d = lambda t: (s := index.shapes.get(t)) is not None and len(s) == 4 and all(
        isinstance(d, int) for d in s[1:]) and index.is_float(t)
    reaches_4d: dict[str, bool] = {}             # tensor -> a 4-D tensor lies after it
    for node in reversed(index.nodes):
        after = any(reaches_4d.get(o, False) or (four_d(o) and o in ancestors)
                    for o in node.output)
        for t in node.input:
            reaches_4d[t] = reaches_4d.get(t, False) or after
    grids: dict[tuple, list[str]] = {}
    for t in ancestors:
        if four_d(t) and not reaches_4d.get(t, False) and t in index.producer:
            h, w = index.shapes[t][2:]
            if h > 1 and w > 1:
                grids.setdefault((h, w), []).append(t)
    if not grids or not isinstance(row, int):
        return []
    levels, start = [], 0
    for grid in sorted(grids, key=lambda g: -g[0] * g[1]):
        heads = grids[grid]
        channels = sum(index.shapes[t][1] for t in heads)
        per_cell = channels // row if layout == "yolov5" and channels % row == 0 else 1
        stop = start + per_cell * grid[0] * grid[1]
        neck = _common_dominator(index, input_name, heads, ancestors, order)
        if neck is None:
            return []
        levels.append(DetectorLevel(neck, grid, axis, start, stop))
        start = stop
    if anchors is not None and start != anchors:
        return []
    return levels


def _common_dominator(index: GraphIndex, input_name: str, heads: list[str], ancestors: set,
                      order: dict) -> str | None:
    """The latest tensor (in graph order) other than `heads` that every path from the image
    to them through float tensors passes through (shape arithmetic, such as a Resize's sizes
    read off the image, is no path of values)."""
    above = set(heads)
    frontier = list(heads)
    while frontier:                              # the heads' ancestors
        node = index.producer.get(frontier.pop())
        for t in (node.input if node is not None else []):
            if t and t not in above and t in ancestors:
                above.add(t)
                frontier.append(t)
    candidates = sorted((t for t in above - set(heads) if t in index.producer),
                        key=lambda t: -order[index.producer[t].name])

    def reaches_without(cut: str) -> bool:
        seen, todo = {input_name}, [input_name]
        while todo:
            for node in index.consumers.get(todo.pop(), []):
                for o in node.output:
                    if o in heads:
                        return True
                    if o and o != cut and o in above and o not in seen and index.is_float(o):
                        seen.add(o)
                        todo.append(o)
        return False

    for t in candidates[:256]:
        if four_d_float(index, t) and not reaches_without(t):
            return t
    return None


def four_d_float(index: GraphIndex, t: str) -> bool:
    s = index.shapes.get(t)
    return s is not None and len(s) == 4 and index.is_float(t)


def dense_head_input(index: GraphIndex, input_name: str, output: str) -> str | None:
    """For a dense output [N, K, H, W] (H, W > 1): the feature map feeding its head: on the
    output's chain of dominators (tensors every path from the image to the output passes
    through), the latest one where paths meet (an Add or Concat of two computed tensors) or
    part (read by two nodes), other than a map of K channels (the head's own sum of class
    maps): FCN's backbone output (layer4's residual Add), DeepLabV3's ASPP concatenation,
    LR-ASPP's low-level features (read by its classifier and by the backbone), a DBNet's FPN
    concatenation. None for other outputs or where none is found."""
    shape = index.shapes.get(output)
    if shape is None or len(shape) != 4 or shape[2] == 1 or shape[3] == 1:
        return None
    order = {n.name: i for i, n in enumerate(index.nodes)}
    every = set(index.producer) | {input_name}
    t = output
    for _ in range(64):
        t = _common_dominator(index, input_name, [t], every, order)
        node = index.producer.get(t) if t is not None else None
        if node is None:
            return None
        computed = [i for i in node.input if i and i in index.producer and index.const(i) is None]
        merge = node.op_type in ("Add", "Concat", "Sum") and len(computed) >= 2
        readers = [n for n in index.consumers.get(t, []) if n.op_type not in ("Shape", "Size")]
        dims = index.shapes.get(t)
        if (merge or len(readers) >= 2) and dims is not None and dims[1] != shape[1]:
            return t
    return None
