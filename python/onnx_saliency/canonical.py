"""Load a model and bring it to the canonical form the reverse walk expects.

Each pass is a function `ModelProto -> ModelProto` run in a fixed order by `canonicalize`:

1. a trailing Softmax/LogSoftmax is bypassed so the seed sits on the logits (with a warning).
2. opset: opsets 11–22 are accepted; below 16 the model is converted to opset 17 (the scatter-add
   the MaxPool rule needs exists from opset 16 on).
3. every node gets a unique name (error messages and layer names need one).
4. Constant nodes become initializers.
5. the batch dimension is made symbolic (`N`), including a fixed leading 1 in constant Reshape
   shapes; whether that held is checked by running the model once with batch 2.
6. shape inference, then constant folding of nodes whose inputs are all constant.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper, shape_inference, version_converter

from .errors import ModelLoadError
from .graph import opset_version

MIN_OPSET, MAX_OPSET, CONVERT_TO = 11, 22, 17
BATCH = "N"
_NO_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
            "Bernoulli"}

ModelSource = str | os.PathLike | bytes | onnx.ModelProto


@dataclass
class CanonicalModel:
    """The canonical model plus what the passes found out about it."""

    model: onnx.ModelProto
    input_name: str
    output_name: str
    fixed_batch: int | None  # the batch size the model is stuck at, or None when dynamic
    original_output: str     # the output name before the Softmax bypass


def load_model(source: ModelSource) -> onnx.ModelProto:
    """Read a model from a path, bytes or a ModelProto (external data is loaded from its folder)."""
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
    elif isinstance(source, (bytes, bytearray)):
        model = _parse(bytes(source), "the given bytes")
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ModelLoadError(f"Model file '{path}' does not exist or is not a file.")
        model = _parse(path.read_bytes(), f"'{path}'")
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(model)):
            try:
                onnx.load_external_data_for_model(model, str(path.parent))
            except (OSError, ValueError) as exc:
                raise ModelLoadError(
                    f"Model '{path}' refers to external data that could not be read: {exc}") from exc
    else:
        raise ModelLoadError(
            f"A model must be a path, bytes or onnx.ModelProto, not {type(source).__name__}.")
    if len(model.graph.node) == 0:
        raise ModelLoadError("The model has no nodes: it is empty or not an ONNX model.")
    return model


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as exc:
        raise ModelLoadError(
            f"Could not parse {where} as an ONNX model (truncated or not ONNX): {exc}.") from None
    if not model.HasField("graph"):
        raise ModelLoadError(f"{where} is not an ONNX model: it holds no graph.")
    return model


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t


# --- passes -------------------------------------------------------------------------------

def convert_opset(model: onnx.ModelProto) -> onnx.ModelProto:
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
    if version < 16:
        try:
            model = version_converter.convert_version(model, CONVERT_TO)
        except Exception as exc:  # the converter raises bare RuntimeErrors
            raise ModelLoadError(
                f"Could not convert the model from opset {version} to {CONVERT_TO}: {exc}") from exc
    return model


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}" if not node.name else f"{node.name}_{i}"
        seen.add(node.name)
    return model


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    keep = []
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = _constant_value(node)
            model.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


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


def bypass_softmax(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Point the first graph output at the tensor before a trailing (Log)Softmax."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    out = graph.output[0].name
    name = out
    while name in producer and producer[name].op_type in ("Identity", "Softmax", "LogSoftmax"):
        node = producer[name]
        name = node.input[0]
        if node.op_type != "Identity":
            warnings.warn(
                f"The model ends in {node.op_type} (node '{node.name}'); the saliency seed is put "
                f"on its input '{name}' (the logits) instead.", stacklevel=3)
            del graph.output[0].type.tensor_type.shape.dim[:]
            graph.output[0].name = name
            graph.output[0].type.tensor_type.ClearField("shape")
            return model, out
    return model, out


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


def make_batch_dynamic(model: onnx.ModelProto, input_name: str) -> tuple[onnx.ModelProto, int | None]:
    """Make dim 0 of the input and outputs symbolic; return the old fixed batch (or None)."""
    graph = model.graph
    old = _fixed_batch(model, input_name)
    for value in [next(i for i in graph.input if i.name == input_name), *graph.output]:
        symbolic_batch(value)
    del graph.value_info[:]
    if old is not None:
        inits = {t.name: t for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Reshape" and node.input[1] in inits:
                shape = numpy_helper.to_array(inits[node.input[1]])
                if shape.ndim == 1 and shape.size > 1 and shape[0] == old:
                    new = shape.copy()
                    new[0] = 0 if old != 0 else new[0]
                    inits[node.input[1]].CopyFrom(numpy_helper.from_array(new, node.input[1]))
    return model, old


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
        if int(np.prod(t.dims)) <= max_elements:
            out.graph.initializer.append(t)
        elif t.name not in listed:
            out.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims))
    return out


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference on the skeleton; the inferred value_info is copied onto the model."""
    try:
        inferred = shape_inference.infer_shapes(skeleton(model), strict_mode=False, data_prop=True)
    except Exception as exc:
        raise ModelLoadError(f"ONNX shape inference failed on the model: {exc}") from exc
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    return model


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Evaluate nodes whose inputs are all initializers, with the ONNX reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        foldable = (node.domain in ("", "ai.onnx") and node.op_type not in _NO_FOLD
                    and all(i == "" or i in consts for i in node.input) and len(node.input) > 0)
        if not foldable:
            keep.append(node)
            continue
        feeds = {i: numpy_helper.to_array(consts[i]) for i in node.input if i}
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
    return remove_dead_code(model)


def remove_dead_code(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes and initializers that no graph output depends on."""
    graph = model.graph
    live = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in live for o in node.output):
            keep.append(node)
            live.update(i for i in node.input if i)
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


def _image_input(model: onnx.ModelProto) -> str:
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelLoadError(
            f"The model has {len(inputs)} runtime inputs ({', '.join(i.name for i in inputs)}); "
            "onnx-saliency explains models with exactly one image input.")
    inp = inputs[0]
    tt = inp.type.tensor_type
    if tt.elem_type != onnx.TensorProto.FLOAT or len(tt.shape.dim) != 4:
        raise ModelLoadError(
            f"The model input '{inp.name}' must be a float32 [N,C,H,W] image tensor.")
    return inp.name


def _batch_works(model: onnx.ModelProto, input_name: str) -> bool:
    """Run the model once with batch 2 (spatial dims taken from the model or 32) to check."""
    import onnxruntime as ort

    inp = next(i for i in model.graph.input if i.name == input_name)
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 32
            for d in inp.type.tensor_type.shape.dim]
    dims[0] = 2
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        sess = ort.InferenceSession(model.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        out = sess.run(None, {input_name: np.zeros(dims, np.float32)})[0]
        return out.shape[0] == 2
    except Exception:
        return False


def channels_first_input(model: onnx.ModelProto, input_name: str) -> onnx.ModelProto:
    """For a model that takes NHWC images: the same input name now takes [N,C,H,W] and a
    Transpose (perm 0,2,3,1) feeds the original consumers, so maps and images stay NCHW."""
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
    return model


def canonicalize(source: ModelSource, layout: str = "NCHW") -> CanonicalModel:
    """load → softmax bypass → opset → names → constants → (NHWC input: transpose) → dynamic
    batch → shapes → folding."""
    if layout not in ("NCHW", "NHWC"):
        raise ModelLoadError(f"layout must be 'NCHW' or 'NHWC', not {layout!r}.")
    model = load_model(source)
    try:
        onnx.checker.check_model(skeleton(model))
    except onnx.checker.ValidationError as exc:
        raise ModelLoadError(f"The model is not valid ONNX: {str(exc).splitlines()[0]}") from None
    model, original_output = bypass_softmax(model)  # before the converter rewrites Softmax-11
    model = remove_dead_code(model)
    model = convert_opset(model)
    model = name_nodes(model)
    model = constants_to_initializers(model)
    input_name = _image_input(model)
    if layout == "NHWC":
        model = channels_first_input(model, input_name)
    output_name = model.graph.output[0].name
    backup = None
    if _fixed_batch(model, input_name):   # a copy to fall back on (it copies every weight)
        backup = onnx.ModelProto()
        backup.CopyFrom(model)
    model, old_batch = make_batch_dynamic(model, input_name)
    fixed_batch = None
    if old_batch is not None and not _batch_works(model, input_name):
        model, fixed_batch = backup, old_batch
        warnings.warn(
            f"The model is fixed to batch {old_batch} and could not be made dynamic; images are "
            "explained one batch of that size at a time.", stacklevel=2)
    model = infer_shapes(model)
    model = fold_constants(model)
    model = infer_shapes(model)
    return CanonicalModel(model, input_name, output_name, fixed_batch, original_output)
