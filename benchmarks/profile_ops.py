"""Where an explainer's time goes: ONNX Runtime's profiler over the explainer graph, kernel time
by op type as a share of the total, for the families of bench_families.py.

    python benchmarks/profile_ops.py --models mobilenet_v2 resnet50 --methods gradient tsgb --batch 8
    python benchmarks/profile_ops.py --models resnet50 --runtime-weights

Each (model, method): the explainer graph (fused ops where built) in one session with
ONNX Runtime's profiler on, 2 threads, the explainer's own session options
(`runtime.session_options`: denormals flushed, graph order); three warm-up runs in a first
session, then --runs profiled runs in a second one. Op types are ONNX Runtime's after its graph
transforms: "Conv" includes the forward's convs with their fused activations, "Reorder" the
conversions to and from its blocked (NCHWc) layout. Kernel times only: the wall-clock ratios are bench_families.py's.

--runtime-weights: the model's own forward pass with its conv weights and biases fed as inputs
(as meta-saliency's stepped copy reads them: computed in the graph, not constants) against the
same graph with constant weights, paired medians over --runs rounds at batches 1 and 8: ONNX
Runtime pre-packs constant conv weights into its blocked layout, runtime ones it cannot.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks")]
warnings.simplefilter("ignore")


def op_shares(ex, x: np.ndarray, runs: int, tmp: Path) -> tuple[float, dict[str, float]]:
    """(kernel ms per run, {op type: share of the kernel time}) of explainer `ex` on `x`."""
    from onnx_saliency.runtime import _session, session_options

    def session(prefix):   # the explainer's own session options, with the profiler on
        opts = session_options(ex._graph, threads=2)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(tmp / prefix)
        return _session(ex._graph, opts, ["CPUExecutionProvider"], ex._weights)

    warm = session("warm")
    feeds = {ex.input_name: x}
    for i in warm.get_inputs():
        if i.name != ex.input_name:
            feeds[i.name] = np.zeros([x.shape[0]], np.int64)   # target class 0
    for _ in range(3):
        warm.run(None, feeds)
    warm.end_profiling()
    timed = session("timed")
    for _ in range(runs):
        timed.run(None, feeds)
    events = json.loads(Path(timed.end_profiling()).read_text())
    by_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            by_op["Reorder" if op.startswith("Reorder") else op] += e["dur"]
    total = sum(by_op.values())
    return total / runs / 1e3, {op: t / total for op, t in by_op.most_common()}


def runtime_weights(path: Path, runs: int) -> None:
    """Paired medians: the forward with conv weights as inputs / with constant weights."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from onnx_saliency.runtime import session_options

    model = onnx.load(str(path))
    fed = onnx.ModelProto()
    fed.CopyFrom(model)
    names = {i for n in fed.graph.node if n.op_type == "Conv" for i in n.input[1:3] if i}
    values, kept = {}, []
    for t in fed.graph.initializer:
        if t.name in names:
            values[t.name] = numpy_helper.to_array(t)
            fed.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            kept.append(t)
    del fed.graph.initializer[:]
    fed.graph.initializer.extend(kept)
    const, fed_s = (ort.InferenceSession(m.SerializeToString(), session_options(m, threads=2),
                                         providers=["CPUExecutionProvider"]) for m in (model, fed))
    inp = const.get_inputs()[0].name
    for batch in (1, 8):
        x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        const.run(None, {inp: x})
        fed_s.run(None, {inp: x, **values})
        ratios = []
        for _ in range(runs):
            a = time.perf_counter()
            const.run(None, {inp: x})
            b = time.perf_counter()
            fed_s.run(None, {inp: x, **values})
            ratios.append((time.perf_counter() - b) / (b - a))
        print(f"| {path.stem} | {batch} | {np.median(ratios):.2f}× |", flush=True)


def main():
    import onnx_saliency as osal
    from bench_families import FAMILIES, export

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"])
    parser.add_argument("--methods", nargs="+", default=["gradient", "tsgb"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top", type=int, default=6, help="op types shown per row")
    parser.add_argument("--runtime-weights", action="store_true")
    args = parser.parse_args()
    unknown = sorted(set(args.models) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {FAMILIES}")
    workdir = tempfile.TemporaryDirectory()
    tmp = Path(workdir.name)
    if args.runtime_weights:
        print("| model | batch | forward with runtime / constant conv weights |\n|---|---|---|")
        for name in args.models:
            runtime_weights(export(name, tmp / f"{name}.onnx")[0], args.runs)
        return
    print("| model | method | batch | kernel ms | share of the kernel time by op type |")
    print("|---|---|---|---|---|")
    x = np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224)).astype(np.float32)
    for name in args.models:
        path, _ = export(name, tmp / f"{name}.onnx")
        for method in args.methods:
            ex = osal.Explainer(path, methods=[method], threads=2)
            total, shares = op_shares(ex, x, args.runs, tmp)
            shown = ", ".join(f"{op} {100 * s:.0f}%" for op, s in list(shares.items())[:args.top])
            print(f"| {name} | {method} | {args.batch} | {total:.0f} | {shown} |", flush=True)


if __name__ == "__main__":
    main()
