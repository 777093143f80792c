"""Running explainer graphs: ONNX Runtime sessions, and checks of what users feed them."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort

from . import fused
from .errors import InputError, SaliencyError

TargetLike = int | Sequence[int] | np.ndarray | None


def make_session(model: onnx.ModelProto, providers: Sequence[str] | None = None,
                 threads: int | None = None) -> ort.InferenceSession:
    """An InferenceSession on `providers` (default CPU); unknown providers fail clearly."""
    providers = list(providers or ["CPUExecutionProvider"])
    available = ort.get_available_providers()
    missing = [p if isinstance(p, str) else p[0] for p in providers
               if (p if isinstance(p, str) else p[0]) not in available]
    if missing:
        raise SaliencyError(
            f"Execution provider(s) {', '.join(missing)} are not available in this onnxruntime "
            f"build (available: {', '.join(available)}).")
    opts = ort.SessionOptions()
    opts.log_severity_level = 4   # errors reach the caller as exceptions (run_session)
    # flush denormals: gradients and SGD steps underflow into them, and they are 10-100x slower
    opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    if any(o.domain == fused.DOMAIN for o in model.opset_import):
        library = fused.library_path()
        if library is None:
            raise SaliencyError(
                f"This explainer graph uses fused ops of the domain {fused.DOMAIN}, but the "
                "custom-op library was not built with this install; rebuild it (see the README) "
                "or build the explainer with fused=False.")
        opts.register_custom_ops_library(library)
    if threads:
        opts.intra_op_num_threads = threads
    # run the nodes in the graph's order where dependencies allow (interleave_early puts the
    # backward nodes that read only forward tensors beside the forward pass)
    opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    return ort.InferenceSession(model.SerializeToString(), opts, providers=providers)


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
    except Exception as exc:  # ORT's pybind exceptions share no public base class
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "indices element out of data bounds" in message:
            raise InputError("A target is outside [0, K) for this model (K classes); give a "
                             "class index in range, or -1 for the image's top-1.") from None
        raise SaliencyError(f"ONNX Runtime failed to run the explainer graph: {message}") from None
