"""Each fused op against its portable decomposition, in ONNX Runtime, at every ResNet-50 layer
shape (2 threads, one process):

    python benchmarks/bench_fused_ops.py [--batches 1 8] [--repeat 7]

RectifiedConvTranspose at every distinct conv geometry of ResNet-50 at 224 (input and output
shapes, kernel, stride, pads); NormGrad identity/selective at each stage output, conv mode at
each distinct 3×3 conv; MaxPoolGradient and MaxPoolRelevance with their forward MaxPool (the
portable twins need the pool's Indices output) at ResNet-50's pool and VGG16's five. Prints
median portable time / median fused time (>1: fused is faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from onnx_saliency import fused
from onnx_saliency.bench import paired_ratio
from onnx_saliency.canonical import remove_dead_code
from onnx_saliency.backward.rules.tsgb import TSGBContext
from onnx_saliency.graph import GraphBuilder, GraphIndex

# (C_in, H_in, C_out, kernel, stride, pad) of every distinct ResNet-50 conv at 224×224
RESNET50_CONVS = [
    (3, 224, 64, 7, 2, 3), (64, 56, 64, 1, 1, 0), (64, 56, 64, 3, 1, 1), (64, 56, 256, 1, 1, 0),
    (256, 56, 64, 1, 1, 0), (256, 56, 128, 1, 1, 0), (128, 56, 128, 3, 2, 1),
    (128, 28, 512, 1, 1, 0), (256, 56, 512, 1, 2, 0), (512, 28, 128, 1, 1, 0),
    (128, 28, 128, 3, 1, 1), (512, 28, 256, 1, 1, 0), (256, 28, 256, 3, 2, 1),
    (256, 14, 1024, 1, 1, 0), (512, 28, 1024, 1, 2, 0), (1024, 14, 256, 1, 1, 0),
    (256, 14, 256, 3, 1, 1), (1024, 14, 512, 1, 1, 0), (512, 14, 512, 3, 2, 1),
    (512, 7, 2048, 1, 1, 0), (1024, 14, 2048, 1, 2, 0), (2048, 7, 512, 1, 1, 0),
    (512, 7, 512, 3, 1, 1)]
RESNET50_STAGES = [(256, 56), (512, 28), (1024, 14), (2048, 7)]
# (C, H, kernel, stride, pad) of the MaxPools of ResNet-50 and VGG16 at 224×224
POOLS = [(64, 112, 3, 2, 1), (64, 224, 2, 2, 0), (128, 112, 2, 2, 0), (256, 56, 2, 2, 0),
         (512, 28, 2, 2, 0), (512, 14, 2, 2, 0)]


def _model(inputs: dict[str, list[int]], build, forward=list,
           forward_outputs=()) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(fused, portable) models over `inputs` and the nodes `forward()` makes (outputs
    `forward_outputs`); `build(b, ctx, graph)` emits the op and returns its output (ctx: a
    TSGB walk's context, which every rule can take)."""
    models = []
    for use_fused in (True, False):
        graph = helper.make_graph(
            forward(), "op",
            [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in forward_outputs])
        base = onnx.shape_inference.infer_shapes(
            helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
        index = GraphIndex(base)
        b = GraphBuilder(index, fused=use_fused)
        out = build(b, TSGBContext(b, index), base.graph)
        b.apply_forward_edits(base.graph)   # the pool's Indices output, for the portable twin
        base.graph.node.extend(b.nodes)
        base.graph.initializer.extend(b.initializers)
        base.graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
        for domain in b.custom_domains:
            base.opset_import.append(helper.make_opsetid(domain, 1))
        models.append(remove_dead_code(base))
    return models[0], models[1]


def _pool_models(batch, c, h, k, s, p) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(fused, portable) models x, g -> (MaxPool(x), its backward at g), built by the rule (the
    portable twin switches on the pool's Indices output)."""
    from onnx_saliency.backward.rules.pooling import max_pool

    ho = (h + 2 * p - k) // s + 1
    return _model({"x": [batch, c, h, h], "g": [batch, c, ho, ho]},
                  lambda b, ctx, graph: max_pool(ctx, graph.node[0], ["g"])[0],
                  lambda: [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[k, k],
                                            strides=[s, s], pads=[p] * 4)], ["y"])


def _relevance_models(batch, c, h, k, s, p) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(fused, portable) models x, s -> TSGB's S at the MaxPool's input x when its output y
    carries sign(y) ⊙ B(s), built by the TSGB rules (fused: MaxPoolRelevance; portable: the
    routed channels times x, channel-summed)."""
    from onnx_saliency.backward.rules import tsgb

    ho = (h + 2 * p - k) // s + 1

    def build(b, ctx, graph):
        ones = b.const(np.ones((c, 1, 1, 1), np.float32))
        signal = ctx.broadcast("y", tsgb._sign(ctx, "y"), "s", ones)
        routed = tsgb.max_pool(ctx, graph.node[0], [signal])[0]
        return tsgb._relevance_sum(ctx, routed, "x")

    return _model({"x": [batch, c, h, h], "s": [batch, 1, ho, ho]}, build,
                  lambda: [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[k, k],
                                            strides=[s, s], pads=[p] * 4)], ["y"])


def _session(model):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    if any(o.domain == fused.DOMAIN for o in model.opset_import):
        opts.register_custom_ops_library(fused.library_path())
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _compare(models, feeds, repeat):
    f, p = (_session(m) for m in models)
    out_f, out_p = f.run(None, feeds)[-1], p.run(None, feeds)[-1]
    err = np.abs(out_f - out_p).max() / max(np.abs(out_p).max(), 1e-30)
    ratio, _ = paired_ratio(lambda: p.run(None, feeds), lambda: f.run(None, feeds), repeat)
    return ratio, err


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    if not fused.available():
        sys.exit("The custom-op library is not built; nothing to compare.")
    rng = np.random.default_rng(0)
    print("| op | shape (C_in, H, C_out, k, s, p) | batch | portable / fused | max rel. diff |")
    print("|---|---|---|---|---|")
    speedups = {}
    for batch in args.batches:
        for c, h, k_out, k, s, p in RESNET50_CONVS:
            ho = (h + 2 * p - k) // s + 1
            shapes = {"g": [batch, k_out, ho, ho], "z": [batch, k_out, ho, ho], "a": [batch, c, h, h]}
            models = _model(shapes, lambda b, ctx, _: fused.rectified_conv_transpose(
                ctx, "g", "z", "a", [k, k], [s, s], [p] * 4, [1, 1]))
            feeds = {n: rng.standard_normal(v).astype(np.float32) for n, v in shapes.items()}
            ratio, err = _compare(models, feeds, args.repeat)
            speedups.setdefault(("RectifiedConvTranspose", batch), []).append(ratio)
            print(f"| RectifiedConvTranspose | {(c, h, k_out, k, s, p)} | {batch} | {ratio:.2f}× | {err:.1e} |", flush=True)
        for c, h in RESNET50_STAGES:
            shapes = {"g": [batch, c, h, h], "a": [batch, c, h, h]}
            feeds = {n: rng.standard_normal(v).astype(np.float32) for n, v in shapes.items()}
            for mode in ("identity", "selective"):
                models = _model(shapes, lambda b, ctx, _: fused.normgrad(b, "g", "a", mode))
                ratio, err = _compare(models, feeds, args.repeat)
                speedups.setdefault((f"NormGrad {mode}", batch), []).append(ratio)
                print(f"| NormGrad {mode} | {(c, h)} | {batch} | {ratio:.2f}× | {err:.1e} |", flush=True)
        for c, h, k_out, k, s, p in RESNET50_CONVS:
            if k != 3:
                continue
            ho = (h + 2 * p - k) // s + 1
            shapes = {"g": [batch, k_out, ho, ho], "a": [batch, c, h, h]}
            feeds = {n: rng.standard_normal(v).astype(np.float32) for n, v in shapes.items()}
            models = _model(shapes, lambda b, ctx, _: fused.normgrad(b, "g", "a", "conv", [k, k], [s, s], [p] * 4))
            ratio, err = _compare(models, feeds, args.repeat)
            speedups.setdefault(("NormGrad conv", batch), []).append(ratio)
            print(f"| NormGrad conv | {(c, h, k_out, k, s, p)} | {batch} | {ratio:.2f}× | {err:.1e} |", flush=True)
        for c, h, k, s, p in POOLS:
            ho = (h + 2 * p - k) // s + 1
            feeds = {"x": rng.standard_normal((batch, c, h, h)).astype(np.float32),
                     "g": rng.standard_normal((batch, c, ho, ho)).astype(np.float32)}
            ratio, err = _compare(_pool_models(batch, c, h, k, s, p), feeds, args.repeat)
            speedups.setdefault(("MaxPool + MaxPoolGradient", batch), []).append(ratio)
            print(f"| MaxPool + MaxPoolGradient | {(c, h, c, k, s, p)} | {batch} | {ratio:.2f}× | {err:.1e} |",
                  flush=True)
            feeds = {"x": np.maximum(feeds["x"], 0), "s": feeds["g"][:, :1].copy()}  # post-ReLU
            ratio, err = _compare(_relevance_models(batch, c, h, k, s, p), feeds, args.repeat)
            speedups.setdefault(("MaxPool + MaxPoolRelevance", batch), []).append(ratio)
            print(f"| MaxPool + MaxPoolRelevance | {(c, h, 1, k, s, p)} | {batch} | {ratio:.2f}× | {err:.1e} |",
                  flush=True)
    print("\n| op | batch | speed-up min | median | max |\n|---|---|---|---|---|")
    for (op, batch), r in speedups.items():
        print(f"| {op} | {batch} | {min(r):.2f}× | {statistics.median(r):.2f}× | {max(r):.2f}× |")


if __name__ == "__main__":
    main()
