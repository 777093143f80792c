"""Running explainer graphs: ONNX Runtime sessions, and checks of what users feed them; the
weights kept apart from the graphs.

A model's large initializers may live outside its ModelProto (`split_weights`): the proto keeps a
placeholder (name, type, dims, external data at `WEIGHTS_LOCATION`) and a dict {name: array}
holds the values, one array per tensor however many graphs (canonical, explainer) name it.
ONNX Runtime gets the arrays as external initializers (no serialisation of the weights, no
protobuf 2 GB limit); `save_model` writes them beside the .onnx file as external data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from . import fused
from .errors import InputError, SaliencyError

TargetLike = int | Sequence[int] | np.ndarray | None
Weights = dict[str, np.ndarray]

WEIGHTS_LOCATION = "onnx_saliency.weights"   # a placeholder's location: its value is in a dict
SPLIT_BYTES = 64 * 1024       # initializers at least this large are kept apart by split_weights
PROTOBUF_LIMIT = 2**31 - 1    # bytes one serialised protobuf message may hold
_ALIGN = 4096                 # external data offsets: page-aligned, so ONNX Runtime can map them


def is_placeholder(tensor: onnx.TensorProto) -> bool:
    return (tensor.data_location == onnx.TensorProto.EXTERNAL
            and any(e.key == "location" and e.value == WEIGHTS_LOCATION
                    for e in tensor.external_data))


def copy_fields(src, dst, *skip: str) -> None:
    """Every set field of protobuf message `src` but those named in `skip` into `dst` (of the
    same type): a copy that leaves out the weights."""
    for field, value in src.ListFields():
        if field.name in skip:
            continue
        repeated = getattr(field, "is_repeated", None)   # protobuf >= 6; older: label
        if repeated is None:
            repeated = field.label == field.LABEL_REPEATED
        if repeated:
            getattr(dst, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def tensor_bytes(tensor: onnx.TensorProto) -> int:
    """The bytes of a tensor's values, from its dims and type (protobuf's ByteSize serialises
    the message to count, and fails past 2 GB); 0 for strings and unknown types."""
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return 0
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return 0
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def inline_bytes(model: onnx.ModelProto) -> int:
    """The bytes the main graph's initializers hold in the proto (placeholders hold none)."""
    return sum(tensor_bytes(t) for t in model.graph.initializer
               if t.data_location != onnx.TensorProto.EXTERNAL)


def _too_big(model: onnx.ModelProto) -> bool:
    """Whether one protobuf could not hold the model (its weights near the 2 GB limit)."""
    return inline_bytes(model) > PROTOBUF_LIMIT - 2**26


def _placeholder(tensor: onnx.TensorProto) -> onnx.TensorProto:
    out = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                           data_location=onnx.TensorProto.EXTERNAL)
    out.external_data.add(key="location", value=WEIGHTS_LOCATION)
    return out


def split_weights(model: onnx.ModelProto, weights: Weights | None = None,
                  min_bytes: int = SPLIT_BYTES) -> tuple[onnx.ModelProto, Weights]:
    """(a new model whose main-graph initializers of at least `min_bytes` are placeholders,
    {name: value} of every placeholder). `weights`: the dict to add to (values already there
    are reused for equally named placeholders). The weights are copied once, out of `model`;
    `model` is left as it was: drop it to free its memory (protobuf frees a message's memory
    only with the message)."""
    weights = {} if weights is None else weights
    out = onnx.ModelProto()
    copy_fields(model, out, "graph")
    copy_fields(model.graph, out.graph, "initializer")
    for tensor in model.graph.initializer:
        if is_placeholder(tensor):
            if tensor.name not in weights:
                raise SaliencyError(f"Initializer '{tensor.name}' is a placeholder whose value "
                                    "was not given (a bug in onnx-saliency).")
            out.graph.initializer.append(tensor)
        elif (tensor.data_location != onnx.TensorProto.EXTERNAL and not tensor.HasField("segment")
              and tensor_bytes(tensor) >= min_bytes):
            if tensor.HasField("raw_data"):   # one copy: the bytes protobuf hands over
                dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
                value = np.frombuffer(tensor.raw_data, dtype).reshape(tuple(tensor.dims))
            else:
                value = numpy_helper.to_array(tensor)
            weights[tensor.name] = value
            out.graph.initializer.append(_placeholder(tensor))
        else:
            out.graph.initializer.append(tensor)
    return out, weights


def join_weights(model: onnx.ModelProto, weights: Weights) -> onnx.ModelProto:
    """A new self-contained model: `model` with each placeholder holding its value again."""
    out = onnx.ModelProto()
    copy_fields(model, out, "graph")
    copy_fields(model.graph, out.graph, "initializer")
    for tensor in model.graph.initializer:
        if is_placeholder(tensor):
            full = out.graph.initializer.add(name=tensor.name, data_type=tensor.data_type,
                                             dims=tensor.dims)
            full.raw_data = np.ascontiguousarray(weights[tensor.name]).tobytes()
        else:
            out.graph.initializer.append(tensor)
    return out


def save_model(model: onnx.ModelProto, path, weights: Weights | None = None,
               external: bool | None = None, data_name: str | None = None) -> None:
    """Write `model` (placeholders resolved from `weights`) to `path`. `external`: the
    placeholders' values go to `data_name` (default `<stem>.data`) beside it, page-aligned
    (ONNX external data); None: external exactly when one protobuf could not hold the model
    (over 2 GB)."""
    path = Path(path)
    weights = weights or {}
    placeholders = [t for t in model.graph.initializer if is_placeholder(t)]
    if external is None:
        size = inline_bytes(model) + sum(weights[t.name].nbytes for t in placeholders)
        external = size > PROTOBUF_LIMIT - 2**26
    if not external:
        onnx.save_model(join_weights(model, weights) if placeholders else model, str(path))
        return
    if _too_big(model):   # large inline tensors: apart first
        model, weights = split_weights(model, dict(weights))
        placeholders = [t for t in model.graph.initializer if is_placeholder(t)]
    data_name = data_name or path.stem + ".data"
    saved = onnx.ModelProto()
    saved.CopyFrom(model)   # small: the placeholders carry no data
    by_name = {t.name: t for t in saved.graph.initializer if is_placeholder(t)}
    with open(path.parent / data_name, "wb") as data:
        for tensor in placeholders:
            value = np.ascontiguousarray(weights[tensor.name])
            offset = -data.tell() % _ALIGN
            data.write(b"\0" * offset)
            ref = by_name[tensor.name]
            del ref.external_data[:]
            for key, val in (("location", data_name), ("offset", str(data.tell())),
                             ("length", str(value.nbytes))):
                ref.external_data.add(key=key, value=val)
            data.write(memoryview(value.reshape(-1).view(np.uint8)))
    onnx.save_model(saved, str(path))


def make_session(model: onnx.ModelProto, providers: Sequence[str] | None = None,
                 threads: int | None = None, weights: Weights | None = None
                 ) -> ort.InferenceSession:
    """An InferenceSession on `providers` (default CPU); unknown providers fail clearly. The
    placeholders' values (`weights`; a model over 2 GB is split first) reach ONNX Runtime as
    external initializers: only the small graph is serialised."""
    providers = list(providers or ["CPUExecutionProvider"])
    available = ort.get_available_providers()
    missing = [p if isinstance(p, str) else p[0] for p in providers
               if (p if isinstance(p, str) else p[0]) not in available]
    if missing:
        raise SaliencyError(
            f"Execution provider(s) {', '.join(missing)} are not available in this onnxruntime "
            f"build (available: {', '.join(available)}).")
    return _session(model, session_options(model, threads), providers, weights)


def session_options(model: onnx.ModelProto, threads: int | None = None) -> ort.SessionOptions:
    """The options of every explainer session (make_session): errors as exceptions, denormals
    flushed, the fused ops' library registered where the graph uses them, `threads` intra-op
    threads, the graph's node order."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 4   # errors reach the caller as exceptions (run_session)
    # flush denormals: gradients and SGD steps underflow into them, and they are 10-100x slower
    opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    if any(o.domain == fused.DOMAIN for o in model.opset_import):
        library = fused.library_path()
        if library is None:
            raise SaliencyError(
                f"This explainer graph uses fused ops of the domain {fused.DOMAIN}, but the "
                "custom-op library was not built with this install; rebuild it (see docs/kernels.md) "
                "or build the explainer with fused=False.")
        opts.register_custom_ops_library(library)
    if threads:
        opts.intra_op_num_threads = threads
    # run the nodes in the graph's order where dependencies allow (interleave_early puts the
    # backward nodes that read only forward tensors beside the forward pass)
    opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    return opts


def _session(model: onnx.ModelProto, opts: ort.SessionOptions, providers: Sequence,
             weights: Weights | None = None) -> ort.InferenceSession:
    """InferenceSession(model) with the placeholders' values from `weights` handed over as
    OrtValues over the arrays (kept alive with the session)."""
    if _too_big(model):
        model, weights = split_weights(model, dict(weights or {}))
    names = [t.name for t in model.graph.initializer if is_placeholder(t)]
    values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(weights[n])) for n in names]
    if names:
        opts.add_external_initializers(names, values)
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=list(providers))
    session.osal_weights = values   # ONNX Runtime may read the arrays for as long as it runs
    return session


def check_images(images, expected: Sequence[int | str | None]) -> np.ndarray:
    """Validate a float32 [N,C,H,W] batch against the model input's static dims."""
    if not isinstance(images, np.ndarray):
        raise InputError(f"images must be a numpy array, not {type(images).__name__}.")
    if images.ndim != 4:
        raise InputError(f"images must have shape [N,C,H,W]; got rank {images.ndim} "
                         f"(shape {images.shape}).")
    if images.dtype != np.float32:
        raise InputError(f"images must be float32, got {images.dtype}; use images.astype(np.float32).")
    if images.shape[0] == 0:
        raise InputError("images is an empty batch (N = 0).")
    for axis, (got, want) in enumerate(zip(images.shape[1:], expected[1:]), start=1):
        if isinstance(want, int) and got != want:
            raise InputError(f"images have shape {images.shape}, but the model expects "
                             f"{'CHW'[axis - 1]} = {want} (input shape {list(expected)}).")
    if not np.isfinite(images).all():
        raise InputError("images contain NaN or Inf values.")
    return np.ascontiguousarray(images)


def check_targets(target: TargetLike, n: int, num_classes: int | None) -> np.ndarray:
    """int64 [N] targets for the graph's `target` input; None gives −1, the graph's encoding of
    "the image's top-1 class". Given targets must lie in [0, K) when K is known."""
    if target is None:
        return np.full(n, -1, np.int64)
    try:
        arr = np.asarray(target)
    except (OverflowError, ValueError):   # ints beyond any NumPy integer type, ragged lists
        arr = np.asarray(target, dtype=object)
    huge = [int(v) for v in np.ravel(arr) if isinstance(v, (int, np.integer))
            and not isinstance(v, (bool, np.bool_)) and not -2**63 <= int(v) < 2**63]
    if huge:
        raise InputError(f"target {huge[0]} is not a class index (beyond int64).")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"target must be an int, a sequence of ints or None, got {target!r}.")
    if arr.ndim == 0:
        arr = np.full(n, int(arr), np.int64)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InputError(f"target has {arr.size} entries for {n} images; give one int or one per image.")
    if num_classes is not None and ((arr < 0) | (arr >= num_classes)).any():
        bad = arr[(arr < 0) | (arr >= num_classes)][0]
        raise InputError(f"target {int(bad)} is outside [0, {num_classes}) for this model.")
    return arr.astype(np.int64)


def run_session(session: ort.InferenceSession, names: Sequence[str], feeds: dict) -> list:
    """session.run, with ONNX Runtime's failures as one-sentence package errors (an
    out-of-range target fails the graph's Gather: see explainer.one_hot_seed)."""
    try:
        return session.run(list(names), feeds)
    except SaliencyError:   # raised as such by another runtime's session (openvino_runtime)
        raise
    except Exception as exc:  # ORT's pybind exceptions share no public base class
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "indices element out of data bounds" in message:
            raise InputError("A target is outside [0, K) for this model (K classes); give a "
                             "class index in range, or -1 for the image's top-1.") from None
        raise SaliencyError(f"ONNX Runtime failed to run the explainer graph: {message}") from None
