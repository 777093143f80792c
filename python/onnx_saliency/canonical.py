"""Load a model and bring it to the canonical form the reverse walk expects.

`canonicalize` reads the model (`load_model`: a path, bytes or a ModelProto; external data only
from the model's own folder, names checked as UTF-8), loads what ONNX Runtime loads (`repair`:
nodes out of order, stray value_info, initializers listed as inputs; one warning), then runs
`PASSES` in order. Each pass takes one `Canonicalization` (the model, what was asked for, what
the passes found out), rewrites the model and records its findings. What cannot be explained is
refused with one sentence before anything large is allocated: a cycle or a dangling tensor, a
model ONNX Runtime refuses, one whose forward pass would not fit in memory.

After the passes the model is canonical (`check_canonical` checks all but the folding, cheaply):
- one runtime input, the image: float32, rank 4, dim 0 the batch symbol `N` (or, where the model
  could not be made dynamic, the batch it is fixed to: `fixed_batch`);
- one output, the explained one (float where its type is known), not made by a (Log)Softmax: the
  seed sits on the logits (`output_name`; its name in the file is `original_output`);
- default-domain opset 16 to 23 (files from opset 7 on are converted to 17);
- every node named, no two alike; no Constant nodes (their values are initializers); nodes
  whose inputs are all constant folded (where the ONNX reference evaluator runs them);
- nodes in topological order, each tensor made once, and only the nodes the output needs;
- no zero-filling Pad of the spatial axes whose only reader is a Conv (folded into its pads);
- value_info only for tensors of this graph: shape inference ran after the last rewrite.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper, shape_inference, version_converter

from . import contrib_ops
from . import formats
from .errors import ModelLoadError, UnsupportedOpError
from .graph import attr_text, attrs_of, opset_version
from .runtime import (SPLIT_BYTES, Weights, copy_fields, is_placeholder, join_weights,
                      split_weights, tensor_bytes)

MIN_OPSET, MAX_OPSET, CONVERT_TO = 7, 23, 17
CONVERT_BELOW = 16   # the scatter-add the MaxPool rule needs exists from opset 16 on
BATCH = "N"
_NO_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
            "Bernoulli"}

ModelSource = str | os.PathLike | bytes | onnx.ModelProto


@dataclass
class CanonicalModel:
    """The canonical model (what holds of it: the module docstring) plus what the passes found
    out about it."""

    model: onnx.ModelProto
    input_name: str
    output_name: str
    fixed_batch: int | None  # the batch size the model is stuck at, or None when dynamic
    original_output: str     # the output name before the Softmax bypass
    # canonicalize(apart=True): the values of the model's placeholders (runtime.split_weights)
    weights: Weights = field(default_factory=dict)
    external_data: bool = False   # the source file kept its weights in external data
    # canonicalize(deployed=True), a model in a deployed format: its own forward pass as loaded
    # (formats.keep_deployed_forward), the explainer's logits
    deployed: onnx.ModelProto | None = None
    # nodes of the model that the passes folded away, each with why (a sentence that follows
    # "Layer '<its output>' "): their tensors and module paths are no layers of this model
    folded: tuple[tuple[onnx.NodeProto, str], ...] = ()


@dataclass
class Canonicalization:
    """A model on its way to canonical form: what was asked for, and what the passes have
    found out so far (each finding is set by the pass named beside it)."""

    model: onnx.ModelProto
    layout: str = "NCHW"             # the image input's layout in the file: "NCHW" or "NHWC"
    output: str | None = None        # the graph output to explain (None: choose_output decides)
    original_output: str = ""        # choose_output: the explained output's name in the file
    output_name: str = ""            # choose_output: the tensor the seed sits on (the logits)
    input_name: str = ""             # find_image_input: the image input
    fixed_batch: int | None = None   # make_batch_dynamic: the batch the model is stuck at
    weights: Weights = field(default_factory=dict)   # the placeholders' values (split_weights)
    keep_deployed: bool = False      # canonicalize(deployed=True)
    input_size: tuple[int, int] | None = None   # canonicalize(input_size=): fixes symbolic H, W
    deployed: onnx.ModelProto | None = None   # formats.keep_deployed_forward: the model as loaded
    folded: list[tuple[onnx.NodeProto, str]] = field(default_factory=list)   # fold_zero_pads


Pass = Callable[[Canonicalization], None]   # rewrites state.model (in place, or replaces it)


class NotCanonicalError(RuntimeError):
    """The passes left a model that is not canonical: a bug in onnx-saliency, not the model's."""


def load_model(source: ModelSource) -> onnx.ModelProto:
    """Read a model from a path, bytes or a ModelProto (external data is loaded from its folder)."""
    return _load(source)[0]


def _load(source: ModelSource) -> tuple[onnx.ModelProto, bool]:
    """load_model, and whether the file kept tensors in external data."""
    used_external = False
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        _check_text(model, "the given ModelProto")
    elif isinstance(source, (bytes, bytearray)):
        model = _parse(bytes(source), "the given bytes")
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ModelLoadError(f"Model file '{path}' does not exist or is not a file.")
        model = _parse(path.read_bytes(), f"'{path}'")
        used_external = bool(_external_tensors(model))
        _load_external_data(model, path)
    else:
        raise ModelLoadError(
            f"A model must be a path, bytes or onnx.ModelProto, not {type(source).__name__}.")
    external = _external_tensors(model)
    if external:
        raise ModelLoadError(
            f"Tensor '{external[0].name}' keeps its data in an external file; give the model's "
            "path (not bytes or a ModelProto) so that the file can be read from its folder.")
    if len(model.graph.node) == 0:
        raise ModelLoadError("The model has no nodes: it is empty or not an ONNX model.")
    _check_tensor_sizes(model)
    return model, used_external


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as exc:
        raise ModelLoadError(
            f"Could not parse {where} as an ONNX model (truncated or not ONNX): {exc}.") from None
    if not model.HasField("graph"):
        raise ModelLoadError(f"{where} is not an ONNX model: it holds no graph.")
    _check_text(model, where)
    return model


def _check_text(model: onnx.ModelProto, where: str) -> None:
    field = _not_utf8(model)
    if field:
        raise ModelLoadError(f"{where} is damaged: a {field} field is not valid UTF-8 text.")


def _not_utf8(message) -> str | None:
    """The first string field (as 'NodeProto.name') that is not UTF-8: protobuf hands such a
    field over as bytes. Tensor payloads are not read."""
    if isinstance(message, onnx.TensorProto):
        strings = [("name", message.name), ("doc_string", message.doc_string)]
        children = list(message.external_data)
    else:
        strings, children = [], []
        for field, value in message.ListFields():
            repeated = getattr(field, "is_repeated", None)   # protobuf >= 6; older: label
            if repeated is None:
                repeated = field.label == field.LABEL_REPEATED
            values = value if repeated else [value]
            if field.type == field.TYPE_STRING:
                strings += [(field.name, v) for v in values]
            elif field.type == field.TYPE_MESSAGE:
                children += values
    for name, value in strings:
        if isinstance(value, bytes):
            return f"{type(message).__name__}.{name}"
    return next(filter(None, map(_not_utf8, children)), None)


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in _all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Read the external tensors of the model at `path`, each checked first (nothing outside
    the model's folder is opened)."""
    tensors = _external_tensors(model)
    for tensor in tensors:
        _check_external(tensor, path.parent)
    if tensors:
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:
            raise ModelLoadError(f"The external data of '{path}' could not be read: "
                                 f"{_first_line(exc)}") from None


def _check_external(tensor: onnx.TensorProto, folder: Path) -> None:
    """The rule: a regular file inside the model's folder (symbolic links resolved), holding
    the bytes [offset, offset + length) the tensor names."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    root = folder.resolve()
    file = (root / location).resolve()
    where = f"Tensor '{tensor.name}' keeps its data in '{location}'"
    if not location or Path(location).is_absolute() or root not in (file, *file.parents):
        raise ModelLoadError(f"{where}, outside the model's folder; external data must lie in "
                             "the folder of the .onnx file.")
    if not file.is_file():
        raise ModelLoadError(f"{where}, which is missing or not a file.")
    try:
        offset, length = int(info.get("offset") or 0), int(info.get("length") or 0)
    except ValueError:
        raise ModelLoadError(f"{where} at a malformed offset or length.") from None
    if offset < 0 or length < 0 or offset + length > file.stat().st_size:
        raise ModelLoadError(f"{where} at bytes {offset}..{offset + length}, past the end of "
                             f"that {file.stat().st_size}-byte file.")

# one value per element in raw_data: the types whose size numpy gives
_SIZED = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
          onnx.TensorProto.BFLOAT16, onnx.TensorProto.INT8, onnx.TensorProto.INT16,
          onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT8,
          onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64,
          onnx.TensorProto.BOOL)


def _check_tensor_sizes(model: onnx.ModelProto) -> None:
    """Each tensor holds as many values as its dims declare (a damaged file may not)."""
    for tensor in _all_tensors(model):
        declared = int(np.prod(tensor.dims, dtype=object)) if tensor.dims else 1
        held = _values_held(tensor)
        if held is not None and held != declared:
            raise ModelLoadError(
                f"Tensor '{tensor.name}' declares shape {list(tensor.dims)} ({declared} values) "
                f"but holds {held}: the file is damaged.")


def _values_held(tensor: onnx.TensorProto) -> int | None:
    """How many values the tensor's data holds (None for types not counted here)."""
    if tensor.data_type not in _SIZED:
        return None
    if tensor.HasField("raw_data"):
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        return len(tensor.raw_data) // itemsize
    return sum(len(getattr(tensor, f)) for f in ("float_data", "double_data", "int32_data",
                                                  "int64_data", "uint64_data"))


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t


# --- repairs: load what ONNX Runtime loads ---------------------------------------------------

def repair(model: onnx.ModelProto) -> onnx.ModelProto:
    """What ONNX Runtime tolerates, tolerated or repaired: nodes out of topological order are
    sorted, value_info naming no tensor is dropped, initializers listed as graph inputs stop
    being inputs; outputs without a shape or type are left to shape inference. One warning
    names the breaches of the ONNX spec. Refused (one sentence naming the node or tensor): a
    cycle, a tensor that nothing provides, a tensor produced twice."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    provided = _provided(graph)
    breaches = []
    if _sort_nodes(graph, provided):
        breaches.append("nodes out of topological order")
    ghosts = [v.name for v in graph.value_info if v.name not in provided]
    if ghosts:
        breaches.append(f"value_info for {len(ghosts)} tensor(s) that do not exist "
                        f"('{ghosts[0]}')")
        keep = [v for v in graph.value_info if v.name in provided]
        del graph.value_info[:]
        graph.value_info.extend(keep)
    listed = [i for i in range(len(graph.input)) if graph.input[i].name in initializers]
    for i in reversed(listed):
        del graph.input[i]
    if listed:
        model.ir_version = max(model.ir_version, 4)   # IR 4 on: initializers need not be inputs
    if breaches:
        warnings.warn(f"The model breaks the ONNX spec in ways ONNX Runtime tolerates "
                      f"({'; '.join(breaches)}); onnx-saliency repaired them.", stacklevel=3)
    return model


def _provided(graph: onnx.GraphProto) -> dict[str, str]:
    """Every tensor the graph holds -> what provides it; refuses a tensor provided twice."""
    provided = {i.name: "a graph input" for i in graph.input}
    provided.update({t.name: "an initializer" for t in graph.initializer})
    for node in graph.node:
        for out in filter(None, node.output):
            if out in provided:
                raise ModelLoadError(f"Tensor '{out}' is produced by {_label(node)} and also by "
                                     f"{provided[out]}; every tensor needs one producer.")
            provided[out] = _label(node)
    for out in graph.output:
        if out.name not in provided:
            raise ModelLoadError(f"The graph output '{out.name}' is produced by no node, input "
                                 "or initializer.")
    return provided


def _label(node: onnx.NodeProto, start: bool = False) -> str:
    """How messages name a node (capitalised at the `start` of a sentence)."""
    if node.name:
        label = f"node '{node.name}' ({node.op_type})"
    else:
        label = f"the unnamed {node.op_type} node that writes '{(list(node.output) or [''])[0]}'"
    return label[0].upper() + label[1:] if start else label


def node_reads(node: onnx.NodeProto) -> set[str]:
    """The tensors a node reads: its inputs and what its subgraphs take from outside."""
    reads = set(filter(None, node.input))
    for attr in node.attribute:
        for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
            reads |= _outer_reads(sub)
    return reads


def _outer_reads(graph: onnx.GraphProto) -> set[str]:
    inner = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    inner |= {o for n in graph.node for o in n.output}
    return {r for n in graph.node for r in node_reads(n)} - inner


def _sort_nodes(graph: onnx.GraphProto, provided: dict[str, str]) -> bool:
    """Order the nodes topologically, keeping the file's order among ready nodes; True when
    they were out of order. Refuses a read of a tensor nothing provides, and a cycle."""
    import heapq

    nodes = list(graph.node)
    outer = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    waiting_on: dict[str, list[int]] = {}
    missing = []
    for i, node in enumerate(nodes):
        wait = node_reads(node) - outer
        unknown = sorted(wait - provided.keys())
        if unknown:
            raise ModelLoadError(f"{_label(node, start=True)} reads '{unknown[0]}', which no "
                                 "node, graph input or initializer provides.")
        for tensor in wait:
            waiting_on.setdefault(tensor, []).append(i)
        missing.append(len(wait))
    ready = [i for i, count in enumerate(missing) if count == 0]
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for out in filter(None, nodes[i].output):
            for j in waiting_on.pop(out, []):
                missing[j] -= 1
                if missing[j] == 0:
                    heapq.heappush(ready, j)
    if len(order) < len(nodes):
        stuck = nodes[next(i for i, count in enumerate(missing) if count)]
        raise ModelLoadError(f"The graph has a cycle: {_label(stuck)} depends on its own output.")
    if order == list(range(len(nodes))):
        return False
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)
    return True


# --- the passes, in the order they run --------------------------------------------------------

def name_nodes(state: Canonicalization) -> None:
    """Ensures every node has a name, no two the same (messages and layer names need them): a
    missing name becomes `<op type>_<position>`, a repeated one `<name>_<position>` (with
    `_<position>` added again while that is taken)."""
    seen: set[str] = set()
    for i, node in enumerate(state.model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}" if not node.name else f"{node.name}_{i}"
            while node.name in seen:   # the new name may be taken too
                node.name = f"{node.name}_{i}"
        seen.add(node.name)


def choose_output(state: Canonicalization) -> None:
    """Keep one graph output, the one explained, with the seed on its pre-softmax logits, and
    only the nodes it needs (before the opset converter rewrites a Softmax-11).

    The output is `state.output` when given (a graph output, or any tensor a node makes: an
    intermediate head), else the only one, else the logits where every
    output is those logits or their (Log)Softmax (a Keras/TF export's (probabilities, logits));
    any other set of outputs is refused with one sentence listing them. A trailing (Log)Softmax
    on the chosen output is bypassed (with a warning naming the node). Records the chosen
    output (`original_output`) and the tensor the seed sits on (`output_name`)."""
    graph = state.model.graph
    outputs = [o.name for o in graph.output]
    if not outputs:
        raise ModelLoadError("The model has no graph outputs: there is nothing to explain.")
    producer = {o: n for n in graph.node for o in n.output}
    wanted = state.output
    if wanted is not None:
        if wanted not in outputs and wanted not in producer:
            raise ModelLoadError(f"output={wanted!r} is neither an output of the model nor a "
                                 f"tensor a node makes; its outputs are {_listing(graph)}.")
        if wanted not in outputs:   # an intermediate tensor (a head before its decoding)
            graph.output.append(onnx.helper.make_empty_tensor_value_info(wanted))
            outputs.append(wanted)
        chosen = wanted
    elif len(outputs) == 1:
        chosen = outputs[0]
    else:
        sources = {_pre_softmax(producer, o)[0] for o in outputs}
        if len(sources) != 1:
            raise ModelLoadError(
                f"The model has {len(outputs)} outputs ({_listing(graph)}); choose the one to "
                "explain with output=NAME (command line: --model-output NAME).")
        logits = sources.pop()
        chosen = logits if logits in outputs else outputs[0]
    value = next(o for o in graph.output if o.name == chosen)
    elem = value.type.tensor_type.elem_type
    if value.type.HasField("tensor_type") and elem not in (0, *_FLOAT_TYPES):
        raise ModelLoadError(
            f"Output '{chosen}' holds {onnx.TensorProto.DataType.Name(elem).lower()} values; "
            "saliency needs a float score output (choose another with output=NAME).")
    kept = onnx.ValueInfoProto()
    kept.CopyFrom(value)
    del graph.output[:]
    graph.output.append(kept)
    value = graph.output[0]   # the message in the graph (append copies)
    logits, softmax = _pre_softmax(producer, chosen)
    if softmax is not None:
        warnings.warn(
            f"The output '{chosen}' is the {softmax.op_type} of '{logits}' (node "
            f"'{softmax.name}'); the saliency seed is put on '{logits}' (the logits) instead.",
            stacklevel=3)   # the caller of canonicalize
        value.name = logits
        value.type.tensor_type.ClearField("shape")
        if _casts_on_the_way(producer, chosen, logits):   # (a float16 model cast to float32)
            value.type.tensor_type.elem_type = _elem_type(state.model, logits)
    state.original_output, state.output_name = chosen, value.name
    remove_dead_code(state.model)


def check_runtime_loads(state: Canonicalization) -> None:
    """Ensures the default-domain opset is one of MIN_OPSET..MAX_OPSET (`check_opset`) and that
    ONNX Runtime, the judge of a well-formed model, builds a session from the skeleton (no
    optimisations, value_info dropped: they are hints). When it refuses, a node whose op no
    ONNX Runtime kernel implements is named."""
    import onnxruntime as ort

    model = state.model
    check_opset(model)
    probe = skeleton(model)
    del probe.graph.value_info[:]
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's pybind exceptions share no public base class
        _refuse_unknown_ops(model)
        raise ModelLoadError(f"ONNX Runtime cannot load the model: {_first_line(exc)}") from None


def convert_opset(state: Canonicalization) -> None:
    """Ensures opset CONVERT_BELOW or later: an older model is converted to CONVERT_TO, its
    Upsample and Resize-10 nodes kept to their own coordinates (`_old_resize_semantics`)."""
    version = check_opset(state.model)
    if version < CONVERT_BELOW:
        try:
            state.model = version_converter.convert_version(state.model, CONVERT_TO)
        except Exception as exc:  # the converter raises bare RuntimeErrors
            raise ModelLoadError(f"Could not convert the model from opset {version} to "
                                 f"{CONVERT_TO}: {_first_line(exc)}") from None
        if version < 11:
            _old_resize_semantics(state.model)


def _old_resize_semantics(model: onnx.ModelProto) -> None:
    """Upsample (opsets 7-9) and Resize-10 map output pixel i to input coordinate i / scale
    ("asymmetric") and, in nearest mode, take floor when enlarging and ceil when shrinking
    (ONNX Runtime's rule for them); the version converter leaves the Resize-11 defaults
    (half_pixel, round_prefer_floor) on the Resize nodes it writes in their place, which moves
    a linear upsampling by up to a third of the signal. In a model converted from below opset
    11 every Resize is such a node: this sets both back."""
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consts.update((n.output[0], _constant_value(n)) for n in model.graph.node
                  if n.op_type == "Constant" and n.attribute)
    for node in model.graph.node:
        if node.op_type != "Resize":
            continue
        attrs = {a.name: a for a in node.attribute
                 if a.name not in ("coordinate_transformation_mode", "nearest_mode")}
        mode = onnx.helper.get_attribute_value(attrs["mode"]) if "mode" in attrs else b"nearest"
        scales = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        extra = [onnx.helper.make_attribute("coordinate_transformation_mode", "asymmetric")]
        if mode == b"nearest":
            shrinks = scales is not None and scales.size > 0 and bool(np.all(scales <= 1)) \
                and bool(np.any(scales < 1))
            extra.append(onnx.helper.make_attribute("nearest_mode",
                                                    "ceil" if shrinks else "floor"))
        del node.attribute[:]
        node.attribute.extend([*attrs.values(), *extra])


def constants_to_initializers(state: Canonicalization) -> None:
    """Ensures no Constant node is left: each becomes an initializer named like its output."""
    model = state.model
    keep = []
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = _constant_value(node)
            model.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def find_image_input(state: Canonicalization) -> None:
    """Records the image input (`input_name`): the model must have exactly one runtime input,
    a float32 [N,C,H,W] tensor."""
    model = state.model
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        names = f" ({', '.join(i.name for i in inputs)})" if inputs else ""
        raise ModelLoadError(
            f"The model has {len(inputs)} runtime inputs{names}; onnx-saliency explains models "
            "with exactly one image input.")
    problem = _not_an_image(inputs[0].type)
    if problem:
        raise ModelLoadError(f"The model input '{inputs[0].name}' {problem}; onnx-saliency "
                             "explains float32 [N,C,H,W] image inputs.")
    state.input_name = inputs[0].name


def channels_first_input(state: Canonicalization) -> None:
    """For a model that takes NHWC images (layout "NHWC"): the same input name now takes
    [N,C,H,W] and a Transpose (perm 0,2,3,1) feeds the original consumers, so maps and images
    stay NCHW. Other models are left as they are."""
    if state.layout != "NHWC":
        return
    model, input_name = state.model, state.input_name
    inner = f"{input_name}/nhwc"
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == input_name:
                node.input[i] = inner
    inp = next(i for i in model.graph.input if i.name == input_name)
    dims = list(inp.type.tensor_type.shape.dim)
    nchw = [dims[0], dims[3], dims[1], dims[2]]
    copies = [onnx.TensorShapeProto.Dimension() for _ in nchw]
    for new, old in zip(copies, nchw):
        new.CopyFrom(old)
    del inp.type.tensor_type.shape.dim[:]
    inp.type.tensor_type.shape.dim.extend(copies)
    model.graph.node.insert(0, onnx.helper.make_node("Transpose", [input_name], [inner],
                                                     name="osal/nhwc_input", perm=[0, 2, 3, 1]))


def fix_input_size(state: Canonicalization) -> None:
    """With `input_size` (H, W): the image input's symbolic H and W set to it (the explainer's
    rules that need lengths, such as Resize's, then know them); a model fixed to another size
    is refused. Without it, the model is left as it is."""
    if state.input_size is None:
        return
    h, w = (int(v) for v in state.input_size)
    if h <= 0 or w <= 0:
        raise ModelLoadError(f"input_size must be two positive ints (H, W), not {state.input_size!r}.")
    inp = next(i for i in state.model.graph.input if i.name == state.input_name)
    dims = inp.type.tensor_type.shape.dim
    for axis, want in ((2, h), (3, w)):
        if dims[axis].HasField("dim_value") and dims[axis].dim_value != want:
            raise ModelLoadError(
                f"The model takes {dims[2].dim_value or '?'}x{dims[3].dim_value or '?'} images "
                f"(H x W); input_size asks for {h}x{w}.")
    changed = False
    for axis, want in ((2, h), (3, w)):
        if not dims[axis].HasField("dim_value"):
            dims[axis].Clear()
            dims[axis].dim_value = want
            changed = True
    if changed:   # shapes inferred for symbolic sizes go: make_batch_dynamic infers them anew
        del state.model.graph.value_info[:]


def make_batch_dynamic(state: Canonicalization) -> None:
    """Ensures dim 0 of the input and the output is the batch symbol `N`, a fixed batch in
    constant Reshape shapes included; shapes inferred, the forward pass checked to fit in
    memory (`check_memory`). A model fixed to a batch is run once with batch 2 to check that
    it held; where it did not, the model keeps its fixed batch (`fixed_batch`, a warning)."""
    model, input_name = state.model, state.input_name
    old_batch = _fixed_batch(model, input_name)
    backup = _BatchBackup(model) if old_batch else None   # what changes, not the weights
    _symbolic_batch_dims(model, input_name, old_batch)
    state.model = infer_shapes(model)
    check_memory(state.model, input_name)
    if old_batch is not None and not _batch_works(state.model, input_name):
        backup.restore(state.model)
        state.model, state.fixed_batch = infer_shapes(state.model), old_batch
        check_memory(state.model, input_name)
        warnings.warn(
            f"The model is fixed to batch {old_batch} and could not be made dynamic; images are "
            "explained one batch of that size at a time.", stacklevel=3)   # canonicalize's caller


def fold_constants(state: Canonicalization) -> None:
    """Ensures no node whose inputs are all initializers is left where the ONNX reference
    evaluator can run it (random ops are kept): its outputs become initializers. Then drops
    what the output no longer needs and infers the shapes again."""
    from onnx.reference import ReferenceEvaluator

    model = state.model
    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        foldable = (node.domain in ("", "ai.onnx") and node.op_type not in _NO_FOLD
                    and all(i == "" or i in consts for i in node.input) and len(node.input) > 0)
        if not foldable:
            keep.append(node)
            continue
        feeds = {i: state.weights[i] if is_placeholder(consts[i]) else
                 numpy_helper.to_array(consts[i]) for i in node.input if i}
        small = onnx.helper.make_model(
            onnx.helper.make_graph(
                [node], "fold",
                [onnx.helper.make_tensor_value_info(i, consts[i].data_type, None) for i in feeds],
                [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
                 for o in node.output]),
            opset_imports=list(model.opset_import))
        try:
            values = ReferenceEvaluator(small).run(None, feeds)
        except Exception:
            keep.append(node)
            continue
        for name, value in zip(node.output, values):
            if name:
                tensor = numpy_helper.from_array(np.asarray(value), name)
                graph.initializer.append(tensor)
                consts[name] = tensor
    del graph.node[:]
    graph.node.extend(keep)
    state.model = infer_shapes(remove_dead_code(model))


def fold_zero_pads(state: Canonicalization) -> None:
    """Ensures no Pad whose only reader is a Conv pads with zeros on the spatial axes alone: its
    pads move into the Conv's (Conv(Pad(x)) = Conv(x) with the pads added, the same zeros read).
    TensorFlow exports write "same" padding so (EfficientNet-Lite's `static_padding`); a Pad the
    explainer also reads would keep ONNX Runtime from fusing it into the Conv and pull it out of
    the blocked layout, with its backward (a Slice), around every such conv. Pads that crop,
    fill with another value or mode, pad N or C, or feed a Conv with auto_pad, stay."""
    graph = state.model.graph
    consts = {t.name: t for t in graph.initializer if not is_placeholder(t)}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node_reads(node):
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    folded = set()
    for pad in graph.node:
        if pad.op_type != "Pad" or pad.domain not in ("", "ai.onnx") or pad.output[0] in outputs:
            continue
        users = readers.get(pad.output[0], [])
        conv = users[0] if len(users) == 1 else None
        if conv is None or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") \
                or conv.input[0] != pad.output[0] or list(conv.input).count(pad.output[0]) != 1:
            continue
        spatial = _zero_pad_spatial(pad, consts)
        attrs = attrs_of(conv)
        if spatial is None or attr_text(conv, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            continue
        n = len(spatial) // 2
        old = list(attrs.get("pads", [0] * 2 * n))
        if len(old) != 2 * n:
            continue
        for a in [a for a in conv.attribute if a.name in ("pads", "auto_pad")]:
            conv.attribute.remove(a)
        conv.attribute.append(onnx.helper.make_attribute("pads", [o + s for o, s in zip(old, spatial)]))
        conv.input[0] = pad.input[0]
        folded.add(pad.name)
        record = onnx.NodeProto()
        record.CopyFrom(pad)   # outlives its removal from the graph
        state.folded.append((record, f"is the output of Pad '{pad.name}', which was folded into the "
                                  f"pads of Conv '{conv.name}' (a zero pad read only by a conv): "
                                  f"name its input '{pad.input[0]}' (the same values unpadded) or "
                                  f"the Conv's output '{conv.output[0]}'."))
    if folded:
        keep = [node for node in graph.node if node.name not in folded]
        del graph.node[:]
        graph.node.extend(keep)
        # inferred afresh: a Pad's output batch was a new symbol (ONNX infers N + 0 as unk__k),
        # and the old value_info would pin it on the convs: the batch symbol survives now
        del graph.value_info[:]
        state.model = infer_shapes(remove_dead_code(state.model))


def _zero_pad_spatial(pad: onnx.NodeProto, consts: dict) -> list[int] | None:
    """The spatial pads [b1, b2, …, e1, e2, …] (all ≥ 0) of a constant-mode Pad of a rank-3+
    tensor with zero fill and no padding of N or C, its pads (and axes) constant; else None."""
    if attr_text(pad, "mode", "constant") != "constant" or len(pad.input) < 2 \
            or any(name and name not in consts for name in pad.input[1:]):
        return None
    pads, fill, axes = (numpy_helper.to_array(consts[pad.input[i]])
                        if len(pad.input) > i and pad.input[i] else None for i in (1, 2, 3))
    if pads is None:
        return None
    if fill is not None and (fill.size != 1 or float(fill.reshape(-1)[0]) != 0.0):
        return None
    pads = [int(v) for v in pads.reshape(-1)]
    rank = len(pads) // 2 if axes is None else None
    if axes is not None:   # opset 18: pads for `axes` only; spread them over the rank
        axes = [int(a) for a in axes.reshape(-1)]
        if any(a < 0 for a in axes):
            return None
        rank = max(axes + [1]) + 1
        full = [0] * (2 * rank)
        for k, a in enumerate(axes):
            full[a], full[rank + a] = pads[k], pads[len(axes) + k]
        pads = full
    if rank < 3 or any(v < 0 for v in pads) or pads[0] or pads[1] or pads[rank] or pads[rank + 1]:
        return None
    return pads[2:rank] + pads[rank + 2:]


# The order matters where a pass needs another's work: choose_output runs before convert_opset
# (the converter rewrites a Softmax-11), make_batch_dynamic after channels_first_input (it sets
# dim 0 of the NCHW input) and fold_constants last (shape inference sees the dynamic batch).
PASSES: tuple[Pass, ...] = (
    name_nodes,
    choose_output,
    check_runtime_loads,
    convert_opset,
    name_nodes,   # again: the opset converter's adapters add unnamed nodes (Shape, Reshape)
    formats.keep_deployed_forward,   # before any pass rewrites the model's own nodes
    contrib_ops.standard_contrib_ops,   # after convert_opset: writes ops of the final opset
    constants_to_initializers,
    formats.float32_image_input,
    find_image_input,
    channels_first_input,
    fix_input_size,
    make_batch_dynamic,
    fold_constants,
    fold_zero_pads,   # after fold_constants: pads computed from constants are initializers
    formats.type_quantized_ops,
)


def canonicalize(source: ModelSource, layout: str = "NCHW", output: str | None = None,
                 apart: bool = False, deployed: bool = False,
                 input_size: tuple[int, int] | None = None) -> CanonicalModel:
    """The canonical form of a model (see the module docstring): loaded, repaired, then
    rewritten by PASSES in order and checked. `layout`: the image input's, "NCHW" or "NHWC";
    `output`: the graph output to explain (default: see `choose_output`). `apart`: the large
    initializers stay out of the model from the load on (placeholders; their values in
    `weights`, one copy), else the model holds them all. `deployed`: a model in a deployed
    format keeps its own forward pass as loaded (`CanonicalModel.deployed`). `input_size`:
    (H, W) for an image input whose H and W are symbolic (fix_input_size)."""
    if layout not in ("NCHW", "NHWC"):
        raise ModelLoadError(f"layout must be 'NCHW' or 'NHWC', not {layout!r}.")
    model, used_external = _load(source)
    weights: Weights = {}
    if apart:
        model, weights = split_weights(model)   # the loaded copy is freed when `model` moves on
    state = Canonicalization(repair(model), layout, output, weights=weights,
                             keep_deployed=deployed,
                             input_size=tuple(input_size) if input_size is not None else None)
    del model
    for run_pass in PASSES:
        run_pass(state)   # called from here: their warnings point at canonicalize's caller
    check_canonical(state)
    if apart:   # new large constants (folded, from Constant nodes) apart too; the dead dropped
        state.model, weights = split_weights(state.model, state.weights)
        kept = {t.name for t in state.model.graph.initializer if is_placeholder(t)}
        if state.deployed is not None:   # its weights too, the ones it shares held once
            state.deployed, weights = split_weights(state.deployed, weights)
            kept |= {t.name for t in state.deployed.graph.initializer if is_placeholder(t)}
        state.weights = {name: weights[name] for name in kept}
    elif state.weights:
        state.model = join_weights(state.model, state.weights)
    return CanonicalModel(state.model, state.input_name, state.output_name, state.fixed_batch,
                          state.original_output, state.weights, used_external, state.deployed,
                          tuple(state.folded))


# --- the postcondition ------------------------------------------------------------------------

def check_canonical(state: Canonicalization) -> None:
    """Raise NotCanonicalError when the model is not canonical (the module docstring's list):
    a pass broke what the passes after it, or the reverse walk, rely on."""
    problem = not_canonical(state)
    if problem:
        raise NotCanonicalError(f"Canonicalisation left {problem}: a bug in onnx-saliency, "
                                "not in the model; please report it.")


def not_canonical(state: Canonicalization) -> str | None:
    """The first way in which the model is not canonical, or None; in a walk over the nodes
    and one back."""
    graph = state.model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    if inputs != [state.input_name]:
        return f"runtime inputs {inputs} where the image input '{state.input_name}' was expected"
    image = next(i for i in graph.input if i.name == state.input_name).type.tensor_type
    if image.elem_type != onnx.TensorProto.FLOAT or len(image.shape.dim) != 4:
        return "an image input that is not a float32 rank-4 tensor"
    dim0 = image.shape.dim[0]
    if (dim0.dim_value if state.fixed_batch else dim0.dim_param) != (state.fixed_batch or BATCH):
        return f"an image input whose dim 0 is not the batch {state.fixed_batch or BATCH!r}"
    if [o.name for o in graph.output] != [state.output_name]:
        return (f"outputs {[o.name for o in graph.output]} where the explained output "
                f"'{state.output_name}' alone was expected")
    if graph.output[0].type.tensor_type.elem_type not in (0, *_FLOAT_TYPES):
        return f"output '{state.output_name}' of a type that is not float"
    if not CONVERT_BELOW <= opset_version(state.model) <= MAX_OPSET:
        return (f"opset {opset_version(state.model)}, outside {CONVERT_BELOW} to "
                f"{MAX_OPSET}")
    names = [node.name for node in graph.node]
    if not all(names) or len(set(names)) < len(names):
        return "a node without a name, or two nodes with one name"
    made = {i.name for i in graph.input} | initializers
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            return f"Constant node '{node.name}'"
        unmade = sorted(node_reads(node) - made)
        if unmade:
            return f"node '{node.name}' before the node that makes its input '{unmade[0]}'"
        for out in filter(None, node.output):
            if out in made:
                return f"tensor '{out}' made twice"
            made.add(out)
        if state.output_name in node.output and node.op_type in ("Softmax", "LogSoftmax"):
            return f"output '{state.output_name}' made by a {node.op_type}"
    needed = {state.output_name}
    for node in reversed(graph.node):
        if not needed.intersection(node.output):
            return f"node '{node.name}', which the output does not need"
        needed |= node_reads(node)
    stale = sorted({v.name for v in graph.value_info} - made)
    if stale:
        return f"value_info for '{stale[0]}', which no node makes (shapes not inferred again)"
    return None


# --- what the passes share: opset, constants, outputs, batch, shapes, memory -------------------

def check_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset, refused outside MIN_OPSET..MAX_OPSET."""
    version = opset_version(model)
    if version == 0:
        raise ModelLoadError("The model imports no default-domain (ai.onnx) opset.")
    if version > MAX_OPSET:
        raise ModelLoadError(
            f"The model uses opset {version}; onnx-saliency supports opsets {MIN_OPSET} to "
            f"{MAX_OPSET}. Re-export it with opset {MAX_OPSET} or lower.")
    if version < MIN_OPSET:
        raise ModelLoadError(
            f"The model uses opset {version}; onnx-saliency supports opsets {MIN_OPSET} to "
            f"{MAX_OPSET}. Convert it with onnx.version_converter first.")
    return version

# domains ONNX Runtime (CPU) implements ops of; only consulted once it has refused a model
_ORT_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc",
                "com.microsoft.experimental", "ai.onnx.preview.training", "ai.onnx.training",
                "org.pytorch.aten", "com.ms.internal.nhwc"}


def _refuse_unknown_ops(model: onnx.ModelProto) -> None:
    for node in model.graph.node:
        domain = node.domain or "ai.onnx"
        if node.domain not in _ORT_DOMAINS:
            raise UnsupportedOpError(
                f"Node '{node.name}' (op {node.op_type}, domain {domain}, opset "
                f"{opset_version(model, node.domain) or 'not imported'}) is from a domain ONNX "
                "Runtime has no kernels for; re-export the model with standard ONNX ops in "
                "its place.")
        if domain == "ai.onnx" and not onnx.defs.has(node.op_type):
            raise ModelLoadError(f"Node '{node.name}' has op type '{node.op_type}', which ONNX "
                                 "does not define: the file is damaged or not for this runtime.")


def _first_line(exc: Exception) -> str:
    """Another library's message as one line ending in a full stop, ONNX Runtime's without its
    '[ONNXRuntimeError] : 10 : INVALID_GRAPH :' prefix."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text).strip()
    return text if text.endswith(".") else text + "."


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    attr = node.attribute[0]
    kind = attr.name
    if kind == "value":
        return numpy_helper.to_array(attr.t)
    simple = {"value_float": (attr.f, np.float32), "value_floats": (list(attr.floats), np.float32),
              "value_int": (attr.i, np.int64), "value_ints": (list(attr.ints), np.int64)}
    if kind in simple:
        val, dtype = simple[kind]
        return np.asarray(val, dtype=dtype)
    raise ModelLoadError(f"Constant node '{node.name}' uses attribute '{kind}', which is not supported.")

_SCORE_PASSES = ("Identity", "Softmax", "LogSoftmax")


def _passes_score(node: onnx.NodeProto) -> bool:
    """Identity, (Log)Softmax, or a Cast between float types (a float16 model's output cast
    to float32)."""
    if node.op_type == "Cast":
        return any(a.name == "to" and a.i in _FLOAT_TYPES for a in node.attribute)
    return node.op_type in _SCORE_PASSES


def _pre_softmax(producer: dict, name: str) -> tuple[str, onnx.NodeProto | None]:
    """The tensor before a trailing chain of Identity/(Log)Softmax/float Cast nodes, and the
    last (Log)Softmax on the way (None when there is none). Casts are passed only on the way
    to a (Log)Softmax: cast logits stay the explained tensor."""
    softmax, start, cast = None, name, False
    while name in producer and _passes_score(producer[name]):
        node = producer[name]
        if node.op_type in ("Softmax", "LogSoftmax") and softmax is None:
            softmax = node
        cast = cast or (node.op_type == "Cast" and softmax is None)
        name = node.input[0]
    return (start, None) if cast and softmax is None else (name, softmax)

def _casts_on_the_way(producer: dict, name: str, to: str) -> bool:
    """Whether a Cast lies on the chain of single-input nodes from `to` to `name`."""
    while name != to and name in producer:
        if producer[name].op_type == "Cast":
            return True
        name = producer[name].input[0]
    return False


def _elem_type(model: onnx.ModelProto, name: str) -> int:
    """The element type of tensor `name`, from shape inference on the skeleton (0: unknown)."""
    inferred = shape_inference.infer_shapes(skeleton(model)).graph
    for value in [*inferred.value_info, *inferred.input, *inferred.output]:
        if value.name == name:
            return value.type.tensor_type.elem_type
    return 0


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16)


def _listing(graph: onnx.GraphProto) -> str:
    """'name [d0,d1]' for each graph output."""
    return ", ".join(f"'{o.name}' [{','.join(map(str, _dims(o.type.tensor_type.shape)))}]"
                     for o in graph.output)


def _not_an_image(kind: onnx.TypeProto) -> str | None:
    """Why a graph input of this type is no float32 [N,C,H,W] image (None when it is one)."""
    if kind.WhichOneof("value") != "tensor_type":
        return f"is a {kind.WhichOneof('value') or 'value without a type'}, not a tensor"
    tensor = kind.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        return f"holds {onnx.TensorProto.DataType.Name(tensor.elem_type).lower()} values"
    if not tensor.HasField("shape"):
        return "has no declared shape"
    dims = _dims(tensor.shape)
    if len(dims) != 4:
        return f"has rank {len(dims)} (shape {dims})"
    if any(isinstance(d, int) and d <= 0 for d in dims[1:]):
        return f"declares an empty dimension (shape {dims})"
    return None


def _batch_dim(model: onnx.ModelProto, input_name: str) -> onnx.TensorShapeProto.Dimension:
    """Dim 0 of the named graph input (the proto itself: read it or set it)."""
    inp = next(i for i in model.graph.input if i.name == input_name)
    return inp.type.tensor_type.shape.dim[0]


def _fixed_batch(model: onnx.ModelProto, input_name: str) -> int | None:
    """The input's fixed batch size, or None when dim 0 is symbolic."""
    dim0 = _batch_dim(model, input_name)
    return dim0.dim_value if dim0.HasField("dim_value") and dim0.dim_value > 0 else None


def symbolic_batch(value: onnx.ValueInfoProto) -> None:
    """Dim 0 of a graph input or output (one with a shape) set to the batch symbol."""
    dims = value.type.tensor_type.shape.dim
    if value.type.tensor_type.HasField("shape") and dims:
        dims[0].Clear()
        dims[0].dim_param = BATCH


def _symbolic_batch_dims(model: onnx.ModelProto, input_name: str, old_batch: int | None) -> None:
    """Dim 0 of the input and outputs set to `N`, value_info dropped; with a fixed `old_batch`,
    constant Reshape shapes that start with it start with 0 (copy the dim) instead."""
    graph = model.graph
    for value in [next(i for i in graph.input if i.name == input_name), *graph.output]:
        symbolic_batch(value)
    del graph.value_info[:]
    if old_batch is not None:
        inits = {t.name: t for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Reshape" and node.input[1] in inits:
                shape = numpy_helper.to_array(inits[node.input[1]])
                if shape.ndim == 1 and shape.size > 1 and shape[0] == old_batch:
                    new = shape.copy()
                    new[0] = 0
                    inits[node.input[1]].CopyFrom(numpy_helper.from_array(new, node.input[1]))


class _BatchBackup:
    """What `_symbolic_batch_dims` and shape inference change (inputs, outputs, value_info,
    constant Reshape shapes), copied to be put back: a small copy, the weights stay shared."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.fields = {name: [self._copy(v) for v in getattr(graph, name)]
                       for name in ("input", "output", "value_info")}
        shapes = {n.input[1] for n in graph.node if n.op_type == "Reshape" and len(n.input) > 1}
        self.shapes = [self._copy(t) for t in graph.initializer if t.name in shapes]

    @staticmethod
    def _copy(message):
        copy = type(message)()
        copy.CopyFrom(message)
        return copy

    def restore(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        for name, values in self.fields.items():
            del getattr(graph, name)[:]
            getattr(graph, name).extend(values)
        saved = {t.name: t for t in self.shapes}
        for tensor in graph.initializer:
            if tensor.name in saved:
                tensor.CopyFrom(saved[tensor.name])


def _zero_weights_probe(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model whose large initializers (placeholders too) are zeros made at run
    time by ConstantOfShape nodes: runs the graph's shapes without a copy of the weights (each
    zero tensor lives only until its last reader has run)."""
    probe = onnx.ModelProto()
    copy_fields(model, probe, "graph")
    copy_fields(model.graph, probe.graph, "initializer", "node")
    made = []
    for i, tensor in enumerate(model.graph.initializer):
        if is_placeholder(tensor) or tensor_bytes(tensor) >= SPLIT_BYTES:
            shape = f"osal/probe_shape_{i}"
            probe.graph.initializer.append(
                numpy_helper.from_array(np.asarray(tensor.dims, np.int64).reshape(-1), shape))
            zero = np.zeros(1, onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
            made.append(onnx.helper.make_node("ConstantOfShape", [shape], [tensor.name],
                                              name=f"osal/probe_{i}",
                                              value=numpy_helper.from_array(zero)))
        else:
            probe.graph.initializer.append(tensor)
    probe.graph.node.extend(made)
    probe.graph.node.extend(model.graph.node)
    return probe


def _batch_works(model: onnx.ModelProto, input_name: str) -> bool:
    """Run the model once with batch 2 (spatial dims taken from the model or 32) to check; the
    large weights as zeros (`_zero_weights_probe`: the check is of shapes)."""
    import onnxruntime as ort

    inp = next(i for i in model.graph.input if i.name == input_name)
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 32
            for d in inp.type.tensor_type.shape.dim]
    dims[0] = 2
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(_zero_weights_probe(model).SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        out = sess.run(None, {input_name: np.zeros(dims, np.float32)})[0]
        return out.shape[0] == 2
    except Exception:
        return False


def set_batch(model: onnx.ModelProto, input_name: str, size: int) -> onnx.ModelProto:
    """Dim 0 of the input fixed to `size` and the shapes inferred again, in place (static
    shapes for a graph that always runs on `size` images)."""
    dim0 = _batch_dim(model, input_name)
    dim0.Clear()
    dim0.dim_value = size
    return infer_shapes(model)


def skeleton(model: onnx.ModelProto, max_elements: int = 4096) -> onnx.ModelProto:
    """The model with large initializers replaced by typed graph inputs: cheap to serialise for
    the checker and shape inference (small initializers stay: they may be shape constants)."""
    out = onnx.ModelProto()
    out.ir_version = model.ir_version
    out.opset_import.extend(model.opset_import)
    graph = model.graph
    out.graph.name = graph.name
    out.graph.node.extend(graph.node)
    out.graph.output.extend(graph.output)
    out.graph.input.extend(graph.input)
    out.graph.value_info.extend(graph.value_info)
    listed = {i.name for i in graph.input}
    for t in graph.initializer:
        if int(np.prod(t.dims)) <= max_elements and not is_placeholder(t):
            out.graph.initializer.append(t)
        elif t.name not in listed:
            out.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims))
    return out


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference on the skeleton; the inferred value_info is copied onto the model. The
    outputs' declared shapes are hints that may contradict the graph: inference runs without
    them, and one is kept only where inference finds no shape."""
    probe = skeleton(model)
    for out in probe.graph.output:
        if out.type.HasField("tensor_type"):
            out.type.tensor_type.ClearField("shape")
    while True:
        try:
            inferred = shape_inference.infer_shapes(probe, strict_mode=False, data_prop=True)
        except Exception as exc:
            raise ModelLoadError(f"ONNX shape inference failed on the model: {_first_line(exc)}"
                                 ) from None
        missed = _shaped_like_input(inferred)
        if not missed:
            break
        probe.graph.value_info.extend(missed)   # then infer what follows them
    for declared, found in zip(model.graph.output, inferred.graph.output):
        if not found.type.tensor_type.HasField("shape") and declared.type.HasField("tensor_type"):
            found.type.tensor_type.shape.CopyFrom(declared.type.tensor_type.shape)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    return model


# ops whose output has their first input's type and shape, where ONNX shape inference leaves
# it untyped (onnx 1.23 gives GroupNormalization's output no type)
_LIKE_INPUT = ("GroupNormalization",)


def _shaped_like_input(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """value_info for the untyped outputs of _LIKE_INPUT nodes whose input is typed."""
    graph = model.graph
    known = {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]
             if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}
    known.update({t.name: onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                  for t in graph.initializer})
    out = []
    for node in graph.node:
        if node.op_type in _LIKE_INPUT and node.input[0] in known and node.output[0] not in known:
            value = onnx.ValueInfoProto()
            value.CopyFrom(known[node.input[0]])
            value.name = node.output[0]
            out.append(value)
    return out


def remove_dead_code(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes and initializers that no graph output depends on."""
    graph = model.graph
    live = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in live for o in node.output):
            keep.append(node)
            live.update(node_reads(node))
    del graph.node[:]
    graph.node.extend(reversed(keep))
    # deleted in place, from the back: re-adding the kept ones would copy every weight
    dead = {t.name for t in graph.initializer if t.name not in live}
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name in dead:
            del graph.initializer[i]
    for i in reversed(range(len(graph.input))):
        if graph.input[i].name in dead:
            del graph.input[i]
    return model


def available_memory() -> int | None:
    """Bytes of memory this process can still get: Linux's MemAvailable, capped by a cgroup v2
    limit; else the free (or total) physical pages; None where nothing says."""
    sizes = []
    try:
        meminfo = Path("/proc/meminfo").read_text()
        sizes.append(int(re.search(r"MemAvailable:\s+(\d+) kB", meminfo).group(1)) * 1024)
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            sizes.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, AttributeError, ValueError):
        pass
    for pages in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):
        if not sizes and pages in os.sysconf_names:
            sizes.append(os.sysconf(pages) * os.sysconf("SC_PAGE_SIZE"))
    return min(sizes) if sizes else None


def check_memory(model: onnx.ModelProto, input_name: str) -> None:
    """Refuse, before anything is allocated, a model whose forward pass at its declared size
    holds more bytes than the machine has free. The count: every non-constant tensor that
    shape inference sized, a dim it left unknown (the batch symbol too) taken as 1: a lower
    bound, so only what cannot fit is refused."""
    free = available_memory()
    constants = {t.name for t in model.graph.initializer}
    graph = model.graph
    values = [*graph.input, *graph.value_info, *graph.output]
    sizes = {v.name: _tensor_bytes(v.type) for v in values if v.name not in constants}
    total = sum(sizes.values())
    if free is None or total <= free:
        return
    largest = max(sizes, key=sizes.get)
    dims = _dims(next(i for i in graph.input if i.name == input_name).type.tensor_type.shape)
    raise ModelLoadError(
        f"At its declared input size {dims} the model's forward pass holds {total / 2**30:.3g} GiB "
        f"('{largest}' alone {sizes[largest] / 2**30:.3g} GiB), more than the "
        f"{free / 2**30:.3g} GiB of memory free; export it for smaller (or dynamic) images.")


def _dims(shape: onnx.TensorShapeProto) -> list:
    """A shape as a list for messages: ints, symbols, '?' where unknown."""
    return [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in shape.dim]


def _tensor_bytes(kind: onnx.TypeProto) -> int:
    """Bytes of a tensor of this type, its unknown dims taken as 1 (0 for non-tensors)."""
    if kind.WhichOneof("value") != "tensor_type":
        return 0
    tensor = kind.tensor_type
    elem = tensor.elem_type if tensor.elem_type in _SIZED else onnx.TensorProto.FLOAT
    count = 1
    for d in tensor.shape.dim:
        count *= d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
    return count * onnx.helper.tensor_dtype_to_np_dtype(elem).itemsize
