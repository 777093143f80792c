"""Small ONNX fixture graphs, one per backward rule and corner case.

Each fixture is `x [2,3,H,W] -> body -> Flatten -> Gemm -> logits [2,5]`, with seeded weights, so
that the gradient of any logit reaches every op of the body. `build(name, dtype)` returns the
ModelProto (float64 twins serve finite differences); running this file writes `<name>.onnx`
(float32) next to it. Deterministic: the same bytes every run.

    python graphs/make_graphs.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
CLASSES = 5
HERE = Path(__file__).resolve().parent


class _Body:
    """Collects body nodes and seeded weights; `t` names the current tensor."""

    def __init__(self, dtype, seed: int):
        self.dtype = dtype
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.t = "x"
        self.count = 0

    def w(self, shape, scale=0.5, positive=False):
        self.count += 1
        value = self.rng.standard_normal(shape) * scale
        if positive:
            value = np.abs(value) + 0.5
        name = f"w{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, self.dtype), name))
        return name

    def i64(self, values):
        self.count += 1
        name = f"c{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    def op(self, op_type, *inputs, outputs=1, **attrs):
        self.count += 1
        outs = [f"{op_type.lower()}{self.count}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=f"{op_type}_{self.count}",
                                           **attrs))
        return outs[0] if outputs == 1 else outs

    def then(self, op_type, *extra, **attrs):
        self.t = self.op(op_type, self.t, *extra, **attrs)
        return self.t

    def celu(self, alpha):
        """Celu (float32 only in ONNX); the float64 twin spells out its definition,
        max(0, x) + min(0, α(exp(x/α) − 1)), for the reference."""
        if self.dtype == np.float32:
            return self.then("Celu", alpha=alpha)
        x = self.t
        scale = numpy_helper.from_array(np.asarray(alpha, self.dtype), f"alpha{self.count}")
        zero = numpy_helper.from_array(np.asarray(0.0, self.dtype), f"zero{self.count}")
        one = numpy_helper.from_array(np.asarray(1.0, self.dtype), f"one{self.count}")
        self.inits += [scale, zero, one]
        expm1 = self.op("Sub", self.op("Exp", self.op("Div", x, scale.name)), one.name)
        neg = self.op("Min", zero.name, self.op("Mul", expm1, scale.name))
        self.t = self.op("Add", self.op("Max", zero.name, x), neg)
        return self.t

    def conv(self, cout, cin, k, **attrs):
        group = attrs.get("group", 1)
        return self.then("Conv", self.w([cout, cin // group, k, k]), self.w([cout]), **attrs)


def _conv_basic(b):
    b.conv(4, 3, 3, pads=[1, 1, 1, 1]); b.then("Relu")


def _conv_strided_dilated(b):
    b.conv(4, 3, 3, strides=[2, 2], dilations=[2, 2], pads=[2, 1, 1, 2]); b.then("Relu")


def _conv_depthwise(b):
    b.conv(6, 3, 1); b.conv(6, 6, 3, group=6, pads=[1, 1, 1, 1], strides=[2, 2]); b.then("Relu")


def _conv_grouped(b):
    b.conv(4, 3, 1); b.conv(6, 4, 3, group=2, pads=[0, 0, 1, 1])


def _conv_auto_pad(b):
    b.conv(4, 3, 3, strides=[2, 2], auto_pad="SAME_UPPER"); b.then("Tanh")


def _gemm_trans(b):
    b.conv(2, 3, 3, strides=[2, 2])
    b.then("Flatten", axis=1)
    # A' = Aᵀ via transA on a transposed input; bias broadcast over rows
    b.then("Transpose", perm=[1, 0])
    b.then("Gemm", b.w([8, 18]), b.w([8]), transA=1, transB=1, alpha=0.7, beta=1.3)
    b.then("Reshape", b.i64([2, 2, 2, 2]))


def _matmul(b):
    b.conv(4, 3, 3, strides=[2, 2])
    b.then("Transpose", perm=[0, 2, 3, 1])          # [N,h,w,C]
    b.then("MatMul", b.w([4, 6]))                    # batched, broadcast weight
    b.then("Add", b.w([6]))
    b.then("Transpose", perm=[0, 3, 1, 2])


def _broadcast_arith(b):
    b.conv(4, 3, 3)
    x = b.t
    gate = b.op("Sigmoid", b.op("ReduceMean", x, axes=[1], keepdims=1))   # [N,1,h,w]
    y = b.op("Mul", x, gate)                                             # both sides need grad
    y = b.op("Mul", y, b.w([1, 4, 1, 1]))
    y = b.op("Sub", y, b.op("Div", x, b.w([4, 1, 1], positive=True)))
    b.t = b.op("Add", y, b.w([1, 1, 1]))


def _div_by_activation(b):
    b.conv(4, 3, 3)
    den = b.op("Add", b.op("Mul", b.t, b.t), b.w([1], positive=True))
    b.t = b.op("Div", b.op("Neg", b.t), den)


def _activations(b):
    b.conv(4, 3, 3, pads=[1, 1, 1, 1])
    b.then("LeakyRelu", alpha=0.1)
    b.conv(4, 4, 1); b.then("PRelu", b.w([4, 1, 1]))
    b.conv(4, 4, 1)
    b.t = b.op("Clip", b.t, "", b.w([], positive=True))            # max only
    b.conv(4, 4, 1)
    b.t = b.op("Clip", b.t, b.w([]), b.w([], positive=True))       # min and max
    b.conv(4, 4, 1); b.then("Sigmoid")
    b.conv(4, 4, 1); b.then("HardSigmoid", alpha=0.3, beta=0.4)
    b.conv(4, 4, 1, pads=[0, 0, 0, 0]); b.then("HardSwish")


def _maxpool_overlap(b):
    b.conv(4, 3, 3, pads=[1, 1, 1, 1]); b.then("Relu")
    b.then("MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])


def _maxpool_ceil(b):
    b.conv(4, 3, 2)
    b.then("MaxPool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)


def _avgpool_ceil(b):
    b.conv(4, 3, 2)
    b.then("AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1,
           count_include_pad=0)


def _avgpool_include_pad(b):
    b.conv(4, 3, 3)
    b.then("AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
           count_include_pad=1)


def _global_pools(b):
    b.conv(4, 3, 3)
    x = b.t
    avg = b.op("GlobalAveragePool", x)
    mx = b.op("GlobalMaxPool", b.op("Relu", x))
    mean = b.op("ReduceMean", x, axes=[2, 3], keepdims=0)
    b.t = b.op("Add", b.op("Add", avg, mx), b.op("Unsqueeze", mean, b.i64([2, 3])))


def _batchnorm(b):
    b.conv(4, 3, 3)
    b.then("BatchNormalization", b.w([4]), b.w([4]), b.w([4]), b.w([4], positive=True),
           epsilon=1e-3)
    b.then("Relu")


def _concat_split(b):
    b.conv(6, 3, 3)
    parts = b.op("Split", b.t, b.i64([2, 4]), outputs=2, axis=1)
    left = b.op("Relu", parts[0])
    b.t = b.op("Concat", left, b.op("Tanh", parts[1]), b.op("Sigmoid", parts[0]), axis=1)


def _split_unused(b):
    b.conv(6, 3, 3)
    parts = b.op("Split", b.t, b.i64([3, 3]), outputs=2, axis=1)
    b.t = parts[1]  # the first part carries no gradient


def _slice_pad(b):
    b.conv(4, 3, 3)
    b.then("Slice", b.i64([1, 0]), b.i64([5, 100]), b.i64([2, 3]))
    b.then("Pad", b.i64([0, 0, 1, 2, 0, 0, 2, 0]))
    b.then("Slice", b.i64([-3]), b.i64([100]), b.i64([1]))         # negative start


def _reshape_family(b):
    b.conv(4, 3, 3)
    b.then("Reshape", b.i64([0, 2, 2, -1]))
    b.then("Transpose", perm=[0, 2, 1, 3])
    b.then("Unsqueeze", b.i64([1]))
    b.then("Squeeze", b.i64([1]))
    b.then("Identity")
    b.then("Dropout")
    b.then("Reshape", b.i64([0, 4, 6, 6]))


def _softmax_inside(b):
    b.conv(4, 3, 3)
    b.then("Softmax", axis=1)
    b.then("Mul", b.w([1, 4, 1, 1]))
    b.then("LogSoftmax", axis=3)


def _sum_fanout(b):
    b.conv(4, 3, 3, pads=[1, 1, 1, 1])
    x = b.t
    b.t = b.op("Sum", b.op("Relu", x), x, b.op("Sigmoid", x))


def _erf_gelu(b):
    b.conv(4, 3, 3, pads=[1, 1, 1, 1]); b.then("Mul", b.w([1], 0.3, positive=True)); b.then("Erf")
    b.conv(4, 4, 1); b.then("Gelu")
    b.conv(4, 4, 1); b.then("Gelu", approximate="tanh")


def _smooth_units(b):
    b.conv(4, 3, 3, pads=[1, 1, 1, 1]); b.then("Elu", alpha=0.7)
    b.conv(4, 4, 1); b.celu(1.3)
    b.conv(4, 4, 1); b.then("Selu")
    b.conv(4, 4, 1); b.then("Softplus")
    b.conv(4, 4, 1); b.then("Mish")


def _exp_log_pow(b):
    b.conv(4, 3, 3, pads=[1, 1, 1, 1])
    x = b.t
    pos = b.op("Softplus", x)                                     # > 0: Sqrt, Log, Pow's base
    logs = b.op("Log", b.op("Sqrt", pos))
    const_pow = b.op("Pow", pos, b.w([1, 4, 1, 1]))               # broadcast constant exponent
    int_pow = b.op("Pow", x, b.i64(3))                            # integer exponent
    run_pow = b.op("Pow", b.op("Exp", b.op("Tanh", x)), b.op("ReduceMean", b.op("Sigmoid", x),
                                                                axes=[1], keepdims=1))
    recip = b.op("Reciprocal", b.op("Add", pos, b.w([1], positive=True)))
    b.t = b.op("Sum", logs, const_pow, b.op("Mul", int_pow, b.w([1], 0.05)), run_pow, recip)


def _abs_max_min(b):
    b.conv(4, 3, 3, pads=[1, 1, 1, 1])
    x = b.t
    mean = b.op("ReduceMean", x, axes=[1], keepdims=1)            # [N,1,h,w], broadcast
    top = b.op("Max", b.op("Abs", x), b.w([1, 4, 1, 1]), mean)
    low = b.op("Min", x, b.op("Sigmoid", x))
    b.t = b.op("Add", top, low)


def _layer_norm(b):
    b.conv(4, 3, 3)
    b.then("LayerNormalization", b.w([6]), b.w([6]), epsilon=1e-3)           # last axis
    b.then("LayerNormalization", b.w([4, 6, 6]), axis=1)                       # C, H, W; no bias


def _instance_norm(b):
    b.conv(4, 3, 3)
    b.then("InstanceNormalization", b.w([4]), b.w([4]), epsilon=1e-3)


def _group_norm(b):
    b.conv(6, 3, 3)
    stash = helper.np_dtype_to_tensor_dtype(np.dtype(b.dtype))   # statistics in the fixture's type
    b.then("GroupNormalization", b.w([6]), b.w([6]), num_groups=3, epsilon=1e-3, stash_type=stash)


def _reductions(b):
    """ReduceMax/Min (axes attribute, keepdims 1 and 0), ReduceL1, ReduceL2, ReduceSumSquare,
    ReduceLogSumExp, ReduceProd (opset 17: axes as an attribute)."""
    b.conv(4, 3, 3); b.then("Tanh")
    t = b.t
    parts = [b.op("ReduceMax", t, axes=[2], keepdims=1), b.op("ReduceMin", t, axes=[2], keepdims=0),
             b.op("ReduceL1", t, axes=[1], keepdims=1), b.op("ReduceL2", t, axes=[2, 3], keepdims=0),
             b.op("ReduceSumSquare", t, axes=[-1], keepdims=1),
             b.op("ReduceLogSumExp", t, axes=[1], keepdims=0),
             b.op("ReduceProd", b.op("Add", t, b.w([1, 4, 1, 1], 0.3)), axes=[1], keepdims=1)]
    b.t = b.op("Concat", *[b.op("Flatten", p, axis=1) for p in parts], axis=1)


def _reductions_18(b):
    """The same reductions at opset 18, axes as an input (negative, several), keepdims 0 and 1,
    and ReduceMean/ReduceSum there too."""
    b.conv(4, 3, 3); b.then("Tanh")
    t = b.t
    parts = [b.op("ReduceMax", t, b.i64([-3, -2]), keepdims=0), b.op("ReduceMin", t, b.i64([2])),
             b.op("ReduceL1", t, b.i64([-2]), keepdims=0), b.op("ReduceL2", t, b.i64([1])),
             b.op("ReduceSumSquare", t, b.i64([1, 2]), keepdims=0),
             b.op("ReduceLogSumExp", t, b.i64([3])),
             b.op("ReduceProd", b.op("Add", t, b.w([1, 4, 1, 1], 0.3)), b.i64([2]), keepdims=0),
             b.op("ReduceMean", t, b.i64([1]), keepdims=0), b.op("ReduceSum", t, b.i64([2, 3]))]
    b.t = b.op("Concat", *[b.op("Flatten", p, axis=1) for p in parts], axis=1)


def _einsum(b):
    """Einsum as attention exports write it (q·kᵀ "bhqd,bhkd->bhqk", then ·v), a weight
    contraction, the implicit form ("bqd,de": output "beq"), an ellipsis, and a letter summed
    in one operand alone ("bhqd->bhd")."""
    b.conv(4, 3, 3)
    t = b.op("Transpose", b.op("Reshape", b.t, b.i64([0, 2, 2, 36])), perm=[0, 1, 3, 2])   # b h q d
    q = b.op("Einsum", t, b.w([2, 2]), equation="bhqd,de->bhqe")
    scores = b.op("Softmax", b.op("Einsum", q, t, equation="bhqd,bhkd->bhqk"), axis=-1)
    att = b.op("Einsum", scores, t, equation="bhqk,bhkd->bhqd")
    flat = b.op("Reshape", t, b.i64([0, 72, 2]))                                     # b q d
    implicit = b.op("Einsum", flat, b.w([2, 3]), equation="bqd,de")                 # b e q
    ell = b.op("Einsum", att, t, equation="...qd,...kd->...qk")
    alone = b.op("Einsum", att, equation="bhqd->bhd")
    parts = [att, implicit, ell, alone]
    b.t = b.op("Concat", *[b.op("Flatten", p, axis=1) for p in parts], axis=1)


def _resize_modes(b):
    """Resize (opset 19): nearest (scales, half_pixel, round_prefer_ceil), linear (sizes of
    `axes` H, W with align_corners; scales with half_pixel_symmetric and pytorch_half_pixel),
    cubic (asymmetric, exclude_outside, a downscale along W)."""
    b.conv(4, 3, 3); b.then("Tanh")
    t = b.t

    def scales(values):   # float32 in both twins: Resize reads tensor(float) scales
        b.count += 1
        b.inits.append(numpy_helper.from_array(np.asarray(values, np.float32), f"s{b.count}"))
        return f"s{b.count}"

    parts = [b.op("Resize", t, "", scales([1, 1, 2, 1.5]), mode="nearest",
                  nearest_mode="round_prefer_ceil"),
             b.op("Resize", t, "", "", b.i64([9, 4]), mode="linear", axes=[2, 3],
                  coordinate_transformation_mode="align_corners"),
             b.op("Resize", t, "", scales([1, 1, 0.5, 1.5]), mode="linear",
                  coordinate_transformation_mode="half_pixel_symmetric"),
             b.op("Resize", t, "", scales([1, 1, 2, 2]), mode="linear",
                  coordinate_transformation_mode="pytorch_half_pixel"),
             b.op("Resize", t, "", scales([1, 1, 1.5, 0.5]), mode="cubic",
                  coordinate_transformation_mode="asymmetric", exclude_outside=1)]
    b.t = b.op("Concat", *[b.op("Flatten", p, axis=1) for p in parts], axis=1)


def _conv_transpose(b):
    """ConvTranspose as a decoder has it: strided, asymmetric pads, output_padding, dilated,
    with and without bias (groups: tests/test_rules_conv_transpose.py; the reference
    evaluator's ConvTranspose has none)."""
    b.conv(4, 3, 3, strides=[2, 2]); b.then("Tanh")                                  # [N,4,3,3]
    b.then("ConvTranspose", b.w([4, 6, 3, 3]), b.w([6]), strides=[2, 2], pads=[1, 0, 0, 1],
           output_padding=[1, 0], dilations=[1, 2])
    b.then("Tanh")
    b.then("ConvTranspose", b.w([6, 2, 2, 2]), strides=[2, 1])


def _gather_pick(b):
    """Gather along channels (repeated and negative constant indices, and run-time ones from
    Shape: [3, −1, 2], where 3 and −1 pick the same channel), 2-D indices along H, a scalar
    index that drops W (ViT's class-token pick), a consecutive run (the zero-pad form)."""
    b.conv(4, 3, 3); b.then("Tanh")
    t = b.t
    channels = b.op("Gather", b.op("Shape", t), b.i64([1]))                      # [4]
    picks = [b.op("Gather", t, b.i64([0, 2, -1, 2, 0]), axis=1),
             b.op("Gather", t, b.op("Sub", channels, b.i64([1, 5, 2])), axis=1),
             b.op("Gather", t, b.i64([[1, 2], [3, 4], [-1, 1]]), axis=2),
             b.op("Gather", t, b.i64(3), axis=-1),
             b.op("Gather", t, b.i64([1, 2, 3]), axis=3)]
    b.t = b.op("Concat", *[b.op("Flatten", p, axis=1) for p in picks], axis=1)


def _gather_elements_nd(b):
    """GatherElements at run-time indices (TopK's and ArgMax's, beside the path), TopK's values,
    GatherND with repeated and negative index tuples, and with a batch dimension."""
    b.conv(4, 3, 3); b.then("Tanh")
    t = b.t
    u = b.op("Mul", t, b.w([1, 4, 1, 1]))
    values, indices = b.op("TopK", t, b.i64([2]), axis=3, outputs=2)         # [N,4,6,2]
    arg = b.op("Expand", b.op("ArgMax", b.op("ReduceMean", t, axes=[2], keepdims=1), axis=1,
                              keepdims=1), b.i64([1, 1, 6, 1]))               # [N,1,6,6]
    hw = b.op("Transpose", u, perm=[1, 2, 0, 3])                              # [4,6,N,6]
    picks = [values,
             b.op("GatherElements", u, indices, axis=3),
             b.op("GatherElements", u, arg, axis=1),
             b.op("Transpose", b.op("GatherND", hw, b.i64([[0, 1], [3, 5], [0, 1], [2, -1]])),
                  perm=[1, 0, 2]),
             b.op("Transpose", b.op("GatherND", hw, b.i64([[[1], [-1]], [[0], [0]], [[5], [2]],
                                                          [[3], [3]]]), batch_dims=1),
                  perm=[2, 0, 1, 3])]
    b.t = b.op("Concat", *[b.op("Flatten", p, axis=1) for p in picks], axis=1)


def _expand_tile_where(b):
    """Expand (trailing, leading and run-time shapes), Tile (constant repeats, and run-time ones
    from Shape), Where with a broadcast branch."""
    b.conv(4, 3, 3)
    t = b.t
    pooled = b.op("ReduceMean", t, axes=[2, 3], keepdims=1)                  # [N,4,1,1]
    rows = b.op("ReduceMean", t, axes=[2], keepdims=1)                       # [N,4,1,6]
    lead = b.op("Expand", b.op("ReduceMean", t, axes=[1], keepdims=0), b.i64([3, 1, 1, 1]))
    parts = [b.op("Expand", pooled, b.i64([1, 1, 6, 6])),
             b.op("Transpose", lead, perm=[1, 0, 2, 3]),                      # [N,3,6,6]
             b.op("Expand", b.op("Tanh", pooled), b.op("Shape", t)),
             b.op("Tile", b.op("ReduceMean", t, axes=[3], keepdims=1), b.i64([1, 2, 1, 3])),
             b.op("Tile", rows, b.op("Div", b.op("Shape", t), b.op("Shape", rows))),
             b.op("Where", b.op("Greater", t, b.w([1, 4, 1, 1], 0.2)), pooled, b.op("Tanh", t))]
    b.t = b.op("Concat", *[b.op("Flatten", p, axis=1) for p in parts], axis=1)


def _depth_space(b):
    """DepthToSpace in both modes and SpaceToDepth, with per-channel scales between them."""
    b.conv(8, 3, 3, pads=[1, 1, 1, 1])
    b.then("DepthToSpace", blocksize=2, mode="DCR"); b.then("Mul", b.w([1, 2, 1, 1]))
    b.then("Tanh")
    b.then("SpaceToDepth", blocksize=2); b.then("Mul", b.w([1, 8, 1, 1]))
    b.then("DepthToSpace", blocksize=2, mode="CRD"); b.then("Mul", b.w([1, 2, 16, 1]))


def _slice_runtime(b):
    """Slice with run-time bounds (ShuffleNetV2's channel halves from Shape, an int32 negative
    start), steps and axes, constant steps −1 and 2, and an empty slice of the batch axis."""
    b.conv(6, 3, 3); b.then("Tanh")
    t = b.t
    half = b.op("Div", b.op("Gather", b.op("Shape", t), b.i64([1])), b.i64([2]))   # [3]
    big = b.i64([2**62])
    parts = [b.op("Slice", t, b.i64([0]), half, b.i64([1])),
             b.op("Slice", t, half, big, b.i64([1])),
             b.op("Slice", t, b.op("Cast", b.op("Neg", half), to=TensorProto.INT32),
                  b.op("Cast", b.i64([100]), to=TensorProto.INT32),
                  b.op("Cast", b.i64([2]), to=TensorProto.INT32)),
             b.op("Slice", t, b.i64([-1]), b.i64([-100]), b.i64([3]),
                  b.op("Sub", half, b.i64([5]))),
             b.op("Slice", t, b.i64([1]), b.i64([6]), b.op("Sub", half, b.i64([1])), b.i64([2])),
             b.op("Slice", t, b.i64([-1, 5]), b.i64([-2**62, 0]), b.i64([2, 3]), b.i64([-1, -1])),
             b.op("Slice", t, b.i64([1]), b.i64([6]), b.i64([3]), b.i64([2])),
             b.op("Slice", t, b.i64([0, 1]), b.i64([2**62, 2**62]), b.i64([0, 2]))]
    b.t = b.op("Concat", *[b.op("Flatten", p, axis=1) for p in parts], axis=1)


def _split_runtime(b):
    """Split with run-time sizes (from Shape) and with num_outputs (opset 18; 7 = 3 + 3 + 1),
    one part unused."""
    b.conv(6, 3, 2); b.then("Tanh")                                          # [N,6,7,7]
    t = b.t
    half = b.op("Div", b.op("Gather", b.op("Shape", t), b.i64([1])), b.i64([2]))
    left, right = b.op("Split", t, b.op("Concat", half, half, axis=0), axis=1, outputs=2)
    rows = b.op("Split", t, axis=2, num_outputs=3, outputs=3)
    parts = [b.op("Tanh", left), right, rows[0], b.op("Sigmoid", rows[2])]
    b.t = b.op("Concat", *[b.op("Flatten", p, axis=1) for p in parts], axis=1)


def _pad_runtime(b):
    """Pad with run-time pads, as Swin pads a feature map up to a multiple of its window
    (pads = (w − H mod w) mod w from Shape, here w = 4 on H = W = 6), and one with axes and a
    constant value (opset 18). (Negative, cropping pads: tests/test_rules_indexing.py, in ORT;
    the reference evaluator refuses them.)"""
    b.conv(4, 3, 3); b.then("Tanh")
    hw = b.op("Slice", b.op("Shape", b.t), b.i64([2]), b.i64([4]))                 # [6, 6]
    extra = b.op("Mod", b.op("Sub", b.i64([4, 4]), b.op("Mod", hw, b.i64([4, 4]))), b.i64([4, 4]))
    b.then("Pad", b.op("Concat", b.i64([0, 0, 0, 0, 0, 0]), extra, axis=0))         # [.., 8, 8]
    b.then("Sigmoid")
    b.then("Pad", b.i64([1, 2]), b.w([], 0.3), b.i64([3]))                           # [.., 8, 11]


def _shape_subgraph(b):
    """A dynamic reshape as exporters write it (Shape → Gather → Unsqueeze → Concat →
    Reshape, ConstantOfShape → Add), a positional-embedding Gather at a Range from Shape, and ops with
    no gradient beside the path (Size, NonZero, comparisons, Not/And/Or, ArgMin, Cast)."""
    b.conv(4, 3, 3)
    t = b.t
    shape = b.op("Shape", t)
    batch = b.op("Unsqueeze", b.op("Gather", shape, b.i64(0)), b.i64([0]))
    tokens = b.op("Reshape", t, b.op("Concat", batch, b.i64([4, 36]), axis=0))   # [N,4,36]
    count = b.op("Gather", b.op("Shape", tokens), b.i64(2))
    positions = b.op("Range", b.i64(0), count, b.i64(1))
    table = b.w([40, 4])
    tokens = b.op("Add", tokens, b.op("Transpose", b.op("Gather", table, positions), perm=[1, 0]))
    tokens = b.op("Softmax", tokens, axis=-1)
    y = b.op("Reshape", tokens, shape)
    y = b.op("Add", y, b.op("ConstantOfShape", shape,
                             value=numpy_helper.from_array(np.array([0.5], b.dtype))))
    huge = b.op("Greater", t, b.w([1], 0.1, positive=True))                 # some true
    mask = b.op("Or", b.op("And", huge, b.op("Not", b.op("Less", t, b.w([1])))),
                b.op("Equal", b.op("ArgMin", t, axis=1, keepdims=1), b.i64(0)))
    found = b.op("Size", b.op("NonZero", b.op("Greater", t, b.w([1], 100.0, positive=True))))
    y = b.op("Add", y, b.op("Cast", b.op("Add", found, b.op("Cast", mask, to=TensorProto.INT64)),
                            to=helper.np_dtype_to_tensor_dtype(np.dtype(b.dtype))))
    b.t = b.op("Mul", y, t)


def _piecewise_constant(b):
    """Floor, Ceil, Round, Sign on the path (zero derivative: their branch adds nothing to the
    gradient); their inputs are kept far from the jumps (see the FD test's margins)."""
    b.conv(4, 3, 3)
    t = b.t
    steps = [b.op(op, b.op("Mul", t, b.w([1], 0.3, positive=True)))
             for op in ("Floor", "Ceil", "Round")]
    steps.append(b.op("Sign", t))
    b.t = b.op("Add", b.op("Mul", b.op("Sum", *steps), b.w([1, 4, 1, 1])), b.op("Tanh", t))


def _mini_cnn(b):
    """A small classifier body with every kind of layer the methods tap: two ReLU stages, a
    MaxPool and a strided conv (distinct maps for every method)."""
    b.conv(4, 3, 3, pads=[1, 1, 1, 1]); b.then("Relu")
    b.then("MaxPool", kernel_shape=[2, 2], strides=[2, 2])
    b.conv(6, 4, 3, pads=[1, 1, 1, 1]); b.then("Relu")
    b.conv(8, 6, 3, pads=[1, 1, 1, 1], strides=[2, 2]); b.then("Relu")


FIXTURES = {name[1:]: fn for name, fn in dict(globals()).items()
            if name.startswith("_") and callable(fn) and name not in ("_Body",)}
SIZES = {"maxpool_ceil": 9, "avgpool_ceil": 8, "conv_strided_dilated": 9}
OPSETS = {"pad_runtime": 18, "erf_gelu": 20, "smooth_units": 18, "group_norm": 21, "reductions_18": 18,
          "resize_modes": 19, "split_runtime": 18}
"""Fixtures of ops newer than OPSET (Gelu 20, Mish 18, GroupNormalization-21, Split's
num_outputs 18)."""


def build(name: str, dtype=np.float32) -> onnx.ModelProto:
    """The fixture `name` with weights of `dtype` (float32 or float64)."""
    body = _Body(dtype, seed=sum(map(ord, name)))
    opset = OPSETS.get(name, OPSET)
    FIXTURES[name](body)
    size = SIZES.get(name, 8)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    x = helper.make_tensor_value_info("x", elem, [2, 3, size, size])
    probe = helper.make_model(helper.make_graph(body.nodes, name, [x], [
        helper.make_tensor_value_info(body.t, elem, None)], body.inits),
        opset_imports=[helper.make_opsetid("", opset)])
    # the body's output size, by running it (shape inference leaves some ops' outputs untyped)
    from onnx.reference import ReferenceEvaluator
    body_out = ReferenceEvaluator(probe).run(None, {"x": np.zeros([2, 3, size, size], dtype)})[0]
    features = int(np.prod(body_out.shape[1:]))
    flat = body.op("Flatten", body.t, axis=1)
    logits = helper.make_node("Gemm", [flat, body.w([CLASSES, features], 0.3), body.w([CLASSES])],
                              ["logits"], name="classifier", transB=1)
    graph = helper.make_graph(body.nodes + [logits], name, [x],
                              [helper.make_tensor_value_info("logits", elem, [2, CLASSES])],
                              body.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="onnx-saliency fixtures")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def with_outputs(kind: str) -> onnx.ModelProto:
    """mini_cnn with several outputs, as exporters write them:

    - "probs_logits": outputs (predictions_softmax, logits), the Softmax of the logits first,
      as a Keras model converted to ONNX has them, with a channels-last input [N,8,8,3];
    - "two_heads": outputs (logits, aux), two unrelated classifier heads on one trunk."""
    model = build("mini_cnn")
    graph = model.graph
    if kind == "probs_logits":
        x = graph.input[0]
        x.name = "input_1"
        dims = x.type.tensor_type.shape.dim
        dims[1].dim_value, dims[2].dim_value, dims[3].dim_value = 8, 8, 3
        graph.node.insert(0, helper.make_node("Transpose", ["input_1"], ["x"], name="", perm=[0, 3, 1, 2]))
        graph.node.append(helper.make_node("Softmax", ["logits"], ["predictions_softmax"],
                                           name="", axis=-1))
        graph.output.insert(0, helper.make_tensor_value_info("predictions_softmax",
                                                             TensorProto.FLOAT, [2, CLASSES]))
    elif kind == "two_heads":
        flat = next(n for n in graph.node if n.op_type == "Flatten").output[0]
        features = numpy_helper.to_array(
            next(t for t in graph.initializer if t.name == graph.node[-1].input[1])).shape[1]
        rng = np.random.default_rng(7)
        graph.initializer.extend([
            numpy_helper.from_array(rng.standard_normal((3, features)).astype(np.float32), "aux_w"),
            numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "aux_b")])
        graph.node.append(helper.make_node("Gemm", [flat, "aux_w", "aux_b"], ["aux"], name="aux_head",
                                           transB=1))
        graph.output.append(helper.make_tensor_value_info("aux", TensorProto.FLOAT, [2, 3]))
    else:
        raise ValueError(kind)
    onnx.checker.check_model(model, full_check=True)
    return model


MULTI_OUTPUT = ("probs_logits", "two_heads")


def main(out_dir: Path = HERE) -> None:
    for name in FIXTURES:
        onnx.save(build(name), str(out_dir / f"{name}.onnx"))
    for kind in MULTI_OUTPUT:
        onnx.save(with_outputs(kind), str(out_dir / f"{kind}.onnx"))
    print(f"wrote {len(FIXTURES) + len(MULTI_OUTPUT)} fixtures to {out_dir}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
