"""OpenVINO as a second runtime for the explainer graphs (`Explainer(..., runtime="openvino")`).

The portable explainer graph (standard ONNX ops only: `fused=False`) is read by OpenVINO's ONNX
frontend and compiled for its CPU plugin in float32 (`INFERENCE_PRECISION_HINT` f32: OpenVINO
would otherwise pick bf16 on CPUs that have it, and the maps would drift by ~1e-2). An
`OpenVINOSession` answers `run(names, feeds)` as an ONNX Runtime session does, so the explainer
runs it through the same `run`/`explain` code. Optional: `pip install "onnx-saliency[openvino]"`.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from .errors import InputError, SaliencyError
from .runtime import PROTOBUF_LIMIT, Weights, inline_bytes, is_placeholder, join_weights, save_model

ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
RUNTIMES = (ONNXRUNTIME, OPENVINO)
DEVICE = "CPU"


def check_runtime(runtime: str, providers, fused) -> str:
    """`runtime` checked against the other Explainer options (OpenVINO: no ONNX Runtime
    providers, no fused custom ops) and, for OpenVINO, that it is installed."""
    if runtime not in RUNTIMES:
        raise SaliencyError(f"runtime must be one of {', '.join(map(repr, RUNTIMES))}, "
                            f"not {runtime!r}.")
    if runtime == OPENVINO:
        if providers:
            raise SaliencyError("providers are ONNX Runtime execution providers; runtime="
                                "'openvino' runs on OpenVINO's CPU device, so leave providers out.")
        if fused:
            raise SaliencyError("fused=True emits onnx-saliency's custom ops, which only ONNX "
                                "Runtime can run; use fused=False (the default) with runtime="
                                "'openvino'.")
        openvino()
    return runtime


def openvino():
    """The openvino module, or a clear error where it is not installed."""
    try:
        import openvino as ov
    except ImportError:
        raise SaliencyError('runtime="openvino" needs OpenVINO: pip install '
                            '"onnx-saliency[openvino]".') from None
    return ov


class OpenVINOSession:
    """A model compiled by OpenVINO for its CPU device, run like an ONNX Runtime session:
    `run(names or None, {input: array})` -> [array per name] (copies, float32 maps); safe to
    call from several threads (each its own infer request)."""

    def __init__(self, model: onnx.ModelProto, weights: Weights | None = None,
                 threads: int | None = None):
        ov = openvino()
        if any(o.domain not in ("", "ai.onnx") for o in model.opset_import):
            domains = sorted({o.domain for o in model.opset_import} - {"", "ai.onnx"})
            raise SaliencyError(f"OpenVINO cannot run ops of the domain(s) {', '.join(domains)}; "
                                "give it the portable explainer graph (fused=False).")
        model = hard_sigmoid_beta0(model)
        core = ov.Core()
        self._tmp = None   # a model over 2 GB: read from a temporary file with external data
        try:
            placeholders = any(is_placeholder(t) for t in model.graph.initializer)
            size = inline_bytes(model) + sum(v.nbytes for v in (weights or {}).values())
            if size < PROTOBUF_LIMIT - 2**26:
                joined = join_weights(model, weights or {}) if placeholders else model
                read = core.read_model(joined.SerializeToString())
                del joined
            else:
                self._tmp = tempfile.TemporaryDirectory(prefix="onnx_saliency_ov_")
                path = Path(self._tmp.name) / "model.onnx"
                save_model(model, path, weights or {}, external=True)
                read = core.read_model(str(path))
            config = {"INFERENCE_PRECISION_HINT": "f32"}
            if threads:
                config["INFERENCE_NUM_THREADS"] = int(threads)
            self.compiled = core.compile_model(read, DEVICE, config)
        except SaliencyError:
            raise
        except Exception as exc:   # OpenVINO's errors share no public base class
            raise SaliencyError(f"OpenVINO could not compile the explainer graph: "
                                f"{_first_line(exc)}") from None
        self._local = threading.local()   # one infer request per calling thread
        self._outputs = {}
        for port in self.compiled.outputs:
            for name in port.get_names():
                self._outputs[name] = port
        self._inputs = {name for port in self.compiled.inputs for name in port.get_names()}

    def get_inputs(self) -> list[str]:
        return sorted(self._inputs)

    def run(self, names: Sequence[str] | None, feeds: dict) -> list[np.ndarray]:
        names = list(names) if names else [p.get_any_name() for p in self.compiled.outputs]
        unknown = [n for n in [*names] if n not in self._outputs]
        if unknown:
            raise SaliencyError(f"The compiled graph has no output '{unknown[0]}'.")
        try:
            request = getattr(self._local, "request", None)
            if request is None:
                request = self._local.request = self.compiled.create_infer_request()
            results = request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        except Exception as exc:
            message = _first_line(exc)
            if "out of range" in message.lower() and "gather" in message.lower():
                raise InputError("A target is outside [0, K) for this model (K classes); give a "
                                 "class index in range, or -1 for the image's top-1.") from None
            raise SaliencyError(f"OpenVINO failed to run the explainer graph: {message}") from None
        # the request reuses its output buffers on the next call: copy
        return [np.array(results[self._outputs[n]], copy=True) for n in names]


def hard_sigmoid_beta0(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` (a copy where it changes) with each HardSigmoid(x; α, β = 0) written as
    Clip(Mul(x, α), 0, 1), the same float32 values: OpenVINO 2026.4's ONNX frontend reads β = 0
    as the default 0.5, which turns the ReLU masks of the explainer graphs (backward/rules/
    activations.py's unit_step: HardSigmoid(y; 2^127, 0)) into 0.5 at y = 0."""
    def rewrite(graph: onnx.GraphProto) -> bool:
        changed = False
        nodes = []
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    changed |= rewrite(attr.g)
                for sub in attr.graphs:
                    changed |= rewrite(sub)
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "HardSigmoid" and node.domain in ("", "ai.onnx") \
                    and attrs.get("beta", 0.5) == 0.0:
                base = f"osal/ov/{node.name or node.output[0]}"
                alpha = onnx.numpy_helper.from_array(np.float32(attrs.get("alpha", 0.2)), f"{base}/alpha")
                low = onnx.numpy_helper.from_array(np.float32(0.0), f"{base}/low")
                high = onnx.numpy_helper.from_array(np.float32(1.0), f"{base}/high")
                graph.initializer.extend([alpha, low, high])
                nodes.append(onnx.helper.make_node("Mul", [node.input[0], alpha.name],
                                                   [f"{base}/scaled"], name=f"{base}/mul"))
                nodes.append(onnx.helper.make_node("Clip", [f"{base}/scaled", low.name, high.name],
                                                   [node.output[0]], name=f"{base}/clip"))
                changed = True
            else:
                nodes.append(node)
        if changed:
            del graph.node[:]
            graph.node.extend(nodes)
        return changed

    if not any(n.op_type == "HardSigmoid" for n in _all_nodes(model.graph)):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)   # small: the explainer's weights are placeholders
    rewrite(out.graph)
    return out


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def make_session(model: onnx.ModelProto, providers=None, threads: int | None = None,
                 weights: Weights | None = None, runtime: str = ONNXRUNTIME):
    """A session for `model` on `runtime`: ONNX Runtime's (runtime.make_session) or OpenVINO's."""
    if runtime == OPENVINO:
        return OpenVINOSession(model, weights, threads)
    from .runtime import make_session as ort_session
    return ort_session(model, providers, threads, weights=weights)
