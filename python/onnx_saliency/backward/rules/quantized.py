"""Quantized models: QDQ pairs, QOperator ops, dynamic quantization (onnxruntime.quantization).

The forward keeps the deployed integer ops; each rule is the gradient of the op's dequantized
float form, rounding treated as the identity inside the clip range (the straight-through
estimator). On an integer tensor q the signal is ∂s/∂q with q's value taken as a real number
("integer units"): then DQ(q) = (q − z)·s gives dq = g·s, a Cast from integers to floats passes
the signal unchanged (the Cast→Mul scale chain of dynamic quantization), and data movement
(Reshape, Transpose, Concat, Pad, …) has its float rule. Broadcast shapes: a 1-D scale or zero
point of size > 1 lies along `axis` (per-channel).

QuantizeLinear: q = clip(round(x/s) + z, q_min, q_max):
    dx = g/s · 1[q_min ≤ round(x/s) + z ≤ q_max]  (int8 [−128, 127], uint8 [0, 255], 16-bit alike).
DequantizeLinear: dq = g·s.
DynamicQuantizeLinear: s and z are computed from x itself and held constant for the gradient
(they are not followed); its range covers x, so dx = g/s.
MatMulInteger, ConvInteger: MatMul's / Conv's data gradient with the other operand's integers
less its zero point, (B − z_B) or (W − z_W), as a float constant.
QOperator ops (y_q = requantize(f(DQ(inputs)))): the requantization is straight-through where
the output is strictly inside its range, m = 1[q_min < y_q < q_max] (an output on a bound may
be clipped: it gets none, as a ReLU at 0 or a ReLU6 at 6 gets none):
    QLinearConv:   dx_q = ConvTranspose(m·g, (W − z_W)·s_W·s_x/s_y)   (constants folded in NumPy)
    QLinearMatMul: da_q = (m·g)·(DQ(b)·s_a/s_y)ᵀ,  db_q = (DQ(a)·s_b/s_y)ᵀ·(m·g)
    QGemm:         Gemm's gradient with DQ of the other operand, α, and s/s_y (no m with a
                   float output)
    QLinearAdd:    da_q = m·g·s_a/s_y (reduced over broadcast axes), db_q alike
    QLinearMul:    da_q = m·g·DQ(b)·s_a/s_y, db_q alike
    QLinearSigmoid:   dx_q = m·g·σ(u)(1 − σ(u))·s_x/s_y,  u = DQ(x_q)
    QLinearLeakyRelu: dx_q = m·g·(1 if x_q > z_x else α)·s_x/s_y
    QLinearGlobalAveragePool, QLinearAveragePool: the float pool's gradient · s_x/s_y
    QLinearConcat: dx_i = slice_i(m·g)·s_i/s_y
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from ...errors import UnsupportedOpError
from ...graph import attrs_of, opset_version
from ..context import RuleContext
from ..table import GRADIENT
from . import conv as _conv, elementwise as _elementwise, linear as _linear  # noqa: F401
from . import pooling as _pooling, shape_ops as _shape_ops  # noqa: F401

MS = "com.microsoft"
_RANGES = {TensorProto.INT8: (-128, 127), TensorProto.UINT8: (0, 255),
           TensorProto.INT16: (-32768, 32767), TensorProto.UINT16: (0, 65535)}
FLOAT = TensorProto.FLOAT


def _refuse(ctx: RuleContext, node, why: str) -> UnsupportedOpError:
    domain = node.domain or "ai.onnx"
    opset = opset_version(ctx.index.model, node.domain) or "not imported"
    return UnsupportedOpError(
        f"Node '{node.name}' (op {node.op_type}, domain {domain}, opset {opset}) {why}.")


def _input(node, i: int) -> str:
    return node.input[i] if i < len(node.input) else ""


def _bounds(ctx: RuleContext, node, q: str, zp: str) -> tuple[int, int]:
    kind = ctx.index.types.get(q) or (ctx.index.types.get(zp) if zp else TensorProto.UINT8)
    if kind not in _RANGES:
        name = TensorProto.DataType.Name(kind).lower() if kind else "an unknown type"
        raise _refuse(ctx, node, f"quantizes to {name}; the backward rules cover int8, uint8, "
                      "int16 and uint16")
    return _RANGES[kind]


def _const(ctx: RuleContext, name: str) -> np.ndarray | None:
    """The float64 value of an initializer (absent input: None)."""
    value = ctx.index.const(name)
    return None if value is None else value.astype(np.float64)


def _along(value: np.ndarray, axis: int, rank: int) -> np.ndarray:
    """A per-tensor value as it is; a 1-D per-axis one reshaped to broadcast along `axis`."""
    if value.ndim == 0 or value.size == 1:
        return value.reshape(())
    shape = [1] * rank
    shape[axis % rank] = value.size
    return value.reshape(shape)


def _tensor(ctx: RuleContext, node, name: str, axis: int, rank: int | None) -> str:
    """A scale or zero point as a float32 tensor broadcasting against its [N, C, …] data."""
    b = ctx.b
    value = _const(ctx, name)
    if value is not None:
        if value.size > 1 and rank is None:
            raise _refuse(ctx, node, "has per-axis parameters on a tensor of unknown rank")
        return b.const(_along(value, axis, rank or 1), np.float32)
    shape = ctx.index.shapes.get(name)
    t = b.op("Cast", name, to=FLOAT)
    if shape and len(shape) == 1 and shape[0] != 1:
        if rank is None:
            raise _refuse(ctx, node, "has per-axis parameters on a tensor of unknown rank")
        target = [1] * rank
        target[axis % rank] = -1
        t = b.op("Reshape", t, b.ints(target))
    return t


def _check_block(ctx, node):
    if attrs_of(node).get("block_size", 0):
        raise _refuse(ctx, node, "uses blocked quantization (block_size); its backward rule "
                      "covers per-tensor and per-axis scales")


@GRADIENT.rule("QuantizeLinear", integers=True)
@GRADIENT.rule("QuantizeLinear", domain=MS, integers=True)
def quantize_linear(ctx: RuleContext, node, grads):
    """dx = g/s · 1[q_min ≤ round(x/s) + z ≤ q_max] (straight-through inside the clip range)."""
    _check_block(ctx, node)
    b, x, s, z = ctx.b, node.input[0], node.input[1], _input(node, 2)
    lo, hi = _bounds(ctx, node, node.output[0], z)
    axis, rank = attrs_of(node).get("axis", 1), ctx.index.rank(x)
    scale = _tensor(ctx, node, s, axis, rank)
    u = b.op("Round", b.op("Div", x, scale))
    if z:
        u = b.op("Add", u, _tensor(ctx, node, z, axis, rank))
    inside = b.op("And", b.op("GreaterOrEqual", u, b.const(float(lo))),
                  b.op("LessOrEqual", u, b.const(float(hi))))
    dx = b.op("Where", inside, b.op("Div", grads[0], scale), b.const(0.0))
    return [dx] + [None] * (len(node.input) - 1)


@GRADIENT.rule("DequantizeLinear", integers=True)
@GRADIENT.rule("DequantizeLinear", domain=MS, integers=True)
def dequantize_linear(ctx: RuleContext, node, grads):
    """y = (q − z)·s: dq = g·s."""
    _check_block(ctx, node)
    axis, rank = attrs_of(node).get("axis", 1), ctx.index.rank(node.input[0])
    scale = _tensor(ctx, node, node.input[1], axis, rank)
    return [ctx.b.op("Mul", grads[0], scale)] + [None] * (len(node.input) - 1)


@GRADIENT.rule("DynamicQuantizeLinear", integers=True, constant_outputs=(1, 2))
def dynamic_quantize_linear(ctx: RuleContext, node, grads):
    """q = round(x/s) + z with s, z from x's own range (held constant): dx = g/s."""
    if grads[0] is None:
        return [None]
    return [ctx.b.op("Div", grads[0], node.output[1])]


@GRADIENT.rule("Cast", integers=True)
def cast_integers(ctx: RuleContext, node, grads):
    """Integers to floats or to wider integers keep the value: the signal passes. Floats to
    integers truncate: refused (never a silent zero)."""
    src, dst = ctx.index.types.get(node.input[0]), ctx.index.types.get(node.output[0])
    if ctx.index.is_float(node.input[0]) or src == TensorProto.BOOL or dst == TensorProto.BOOL:
        kind = TensorProto.DataType.Name(dst).lower() if dst else "an unknown type"
        raise _refuse(ctx, node, f"casts the signal to {kind}, which has no gradient (the map "
                      "would silently be zero); explain the model before that cast")
    return [grads[0]]


def _data_movement() -> None:
    """The float rules of ops that move values without changing them, also for integers."""
    for op in ("Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Concat",
               "Split", "Slice", "Pad"):
        rule = GRADIENT.get(op)
        if rule is not None:
            GRADIENT.rule(op, integers=True)(rule)


_data_movement()


def _fake(node, op_type: str, inputs, attrs: dict | None = None) -> onnx.NodeProto:
    """A float twin of `node` (same name and output) handed to a float rule: its inputs are
    only read for their shapes or as constants."""
    keep = {k: v for k, v in (attrs if attrs is not None else attrs_of(node)).items()}
    return onnx.helper.make_node(op_type, list(inputs), [node.output[0]], name=node.name, **keep)


def _mask(ctx: RuleContext, node, g: str, zp_slot: int) -> str:
    """m·g: the requantized output y_q strictly inside its range (compared as floats: ONNX
    Runtime's comparisons take no 8-bit integers)."""
    b, y = ctx.b, node.output[0]
    lo, hi = _bounds(ctx, node, y, _input(node, zp_slot))
    yf = b.op("Cast", y, to=FLOAT)
    inside = b.op("And", b.op("Greater", yf, b.const(float(lo))),
                  b.op("Less", yf, b.const(float(hi))))
    return b.op("Where", inside, g, b.const(0.0))


def _consts(ctx: RuleContext, node, *slots: int) -> list[np.ndarray]:
    """Initializer values at `slots` (float64; an absent zero point is 0); refused when one is
    computed at run time."""
    out = []
    for i in slots:
        name = _input(node, i)
        if not name:
            out.append(np.zeros((), np.float64))
            continue
        value = _const(ctx, name)
        if value is None:
            raise _refuse(ctx, node, f"has a scale or zero point ('{name}') computed at run "
                          "time; its backward rule needs them constant")
        out.append(value)
    return out


def _dequantized(ctx: RuleContext, node, q: str, s: str, z: str, factor: float | str,
                 axis: int) -> str:
    """DQ(q)·factor = (q − z)·s·factor as float32: a constant for an initializer q with
    constant parameters (folded in NumPy), else in the graph."""
    value, scale = _const(ctx, q), _const(ctx, s)
    zero = _const(ctx, z) if z else np.zeros(())
    if value is not None and scale is not None and zero is not None \
            and not isinstance(factor, str):
        r = value.ndim
        return ctx.b.const((value - _along(zero, axis, r)) * _along(scale, axis, r) * factor,
                           np.float32)
    b, rank = ctx.b, ctx.index.rank(q)
    t = b.op("Cast", q, to=FLOAT)
    if z:
        t = b.op("Sub", t, _tensor(ctx, node, z, axis, rank))
    t = b.op("Mul", t, _tensor(ctx, node, s, axis, rank))
    return _times(ctx, t, factor)


def _ratio(ctx: RuleContext, node, num: int, den: int | None) -> float | str:
    """s_num / s_den as a float when both are constants, else a graph tensor."""
    a = _const(ctx, node.input[num])
    d = np.ones(()) if den is None else _const(ctx, node.input[den])
    if a is not None and d is not None and a.size == 1 and d.size == 1:
        return float(a.reshape(()) / d.reshape(()))
    b = ctx.b
    t = b.op("Cast", node.input[num], to=FLOAT)
    return t if den is None else b.op("Div", t, b.op("Cast", node.input[den], to=FLOAT))


def _times(ctx: RuleContext, g: str | None, factor: float | str) -> str | None:
    if g is None:
        return None
    if isinstance(factor, str):
        return ctx.b.op("Mul", g, factor)
    return g if factor == 1.0 else ctx.b.op("Mul", g, ctx.b.const(factor))


@GRADIENT.rule("ConvInteger", integers=True)
def conv_integer(ctx: RuleContext, node, grads):
    """y = Conv(x − z_x, W − z_W) (int32): dx = Conv's data gradient with W − z_W."""
    if not ctx.wants(node, 0):
        return [None] * len(node.input)
    w, wz = node.input[1], _input(node, 3)
    wv = _const(ctx, w)
    if wv is None:
        raise _refuse(ctx, node, "has weights computed at run time")
    zero = _const(ctx, wz) if wz else np.zeros(())
    weights = ctx.b.const(wv - _along(zero, 0, wv.ndim), np.float32)
    dx = GRADIENT["Conv"](ctx, _fake(node, "Conv", [node.input[0], weights]), [grads[0]])[0]
    return [dx] + [None] * (len(node.input) - 1)


@GRADIENT.rule("MatMulInteger", integers=True)
def matmul_integer(ctx: RuleContext, node, grads):
    """y = (A − z_A)(B − z_B) (int32): dA = g (B − z_B)ᵀ, dB = (A − z_A)ᵀ g."""
    a, bq = node.input[0], node.input[1]
    za, zb = _input(node, 2), _input(node, 3)
    out = [None] * len(node.input)
    if ctx.wants(node, 0):
        bf = _less_zero(ctx, node, bq, zb, -1)
        out[0] = GRADIENT["MatMul"](ctx, _fake(node, "MatMul", [a, bf], {}), [grads[0]])[0]
    if ctx.wants(node, 1):
        af = _less_zero(ctx, node, a, za, -2)
        out[1] = GRADIENT["MatMul"](ctx, _fake(node, "MatMul", [af, bq], {}), [grads[0]])[1]
    return out


def _less_zero(ctx: RuleContext, node, q: str, z: str, axis: int) -> str:
    """q − z as float32 (a constant where q and z are), z per row of A / column of B."""
    value, rank = _const(ctx, q), ctx.index.rank(q)
    zero = _const(ctx, z) if z else np.zeros(())
    if value is not None and zero is not None:
        return ctx.b.const(value - _along(zero, axis, value.ndim), np.float32)
    t = ctx.b.op("Cast", q, to=FLOAT)
    if not z:
        return t
    if ctx.index.rank(z) == 1 and (ctx.index.shapes.get(z) or (1,))[0] != 1 and axis == -2:
        zt = ctx.b.unsqueeze(ctx.b.op("Cast", z, to=FLOAT), [1])
    else:
        zt = _tensor(ctx, node, z, axis, rank)
    return ctx.b.op("Sub", t, zt)


@GRADIENT.rule("QLinearConv", integers=True)
def qlinear_conv(ctx: RuleContext, node, grads):
    """dx_q = ConvTranspose(m·g, (W − z_W)·s_W·s_x/s_y)."""
    if not ctx.wants(node, 0):
        return [None] * len(node.input)
    sx, w, sw, zw, sy = _consts(ctx, node, 1, 3, 4, 5, 6)
    weights = (w - _along(zw, 0, w.ndim)) * _along(sw, 0, w.ndim) * (sx / sy)
    g = _mask(ctx, node, grads[0], 7)
    fake = _fake(node, "Conv", [node.input[0], ctx.b.const(weights, np.float32)])
    dx = GRADIENT["Conv"](ctx, fake, [g])[0]
    return [dx] + [None] * (len(node.input) - 1)


@GRADIENT.rule("QLinearMatMul", integers=True)
def qlinear_matmul(ctx: RuleContext, node, grads):
    """da_q = (m·g)(DQ(b)·s_a/s_y)ᵀ, db_q = (DQ(a)·s_b/s_y)ᵀ(m·g)."""
    a, bq = node.input[0], node.input[3]
    g = _mask(ctx, node, grads[0], 7)
    out = [None] * len(node.input)
    if ctx.wants(node, 0):
        bf = _dequantized(ctx, node, bq, node.input[4], node.input[5], _ratio(ctx, node, 1, 6), -1)
        out[0] = GRADIENT["MatMul"](ctx, _fake(node, "MatMul", [a, bf], {}), [g])[0]
    if ctx.wants(node, 3):
        af = _dequantized(ctx, node, a, node.input[1], node.input[2], _ratio(ctx, node, 4, 6), -2)
        out[3] = GRADIENT["MatMul"](ctx, _fake(node, "MatMul", [af, bq], {}), [g])[1]
    return out


@GRADIENT.rule("QGemm", domain=MS, integers=True)
def qgemm(ctx: RuleContext, node, grads):
    """y = α·DQ(A')DQ(B') + DQ(C), requantized when y_scale is given: Gemm's gradient with DQ
    of the other operand times s/s_y (and m·g when requantized)."""
    a = attrs_of(node)
    keep = {k: a[k] for k in ("alpha", "transA", "transB") if k in a}
    ys = _input(node, 7)
    g = _mask(ctx, node, grads[0], 8) if ys else grads[0]
    out = [None] * len(node.input)
    if ctx.wants(node, 0):
        bf = _dequantized(ctx, node, node.input[3], node.input[4], node.input[5],
                          _ratio(ctx, node, 1, 7 if ys else None), 0 if a.get("transB") else -1)
        out[0] = GRADIENT["Gemm"](ctx, _fake(node, "Gemm", [node.input[0], bf], keep), [g])[0]
    if ctx.wants(node, 3):
        raise _refuse(ctx, node, "multiplies two tensors computed from the image")
    return out


@GRADIENT.rule("QLinearAdd", domain=MS, integers=True)
def qlinear_add(ctx: RuleContext, node, grads):
    """da_q = m·g·s_a/s_y, db_q = m·g·s_b/s_y (reduced over broadcast axes)."""
    g = _mask(ctx, node, grads[0], 7)
    out = [None] * len(node.input)
    for i, s in ((0, 1), (3, 4)):
        if ctx.wants(node, i):
            term = _times(ctx, g, _ratio(ctx, node, s, 6))
            out[i] = ctx.unbroadcast(term, node.input[i], node.output[0])
    return out


@GRADIENT.rule("QLinearMul", domain=MS, integers=True)
def qlinear_mul(ctx: RuleContext, node, grads):
    """da_q = m·g·DQ(b)·s_a/s_y, db_q = m·g·DQ(a)·s_b/s_y (reduced over broadcast axes)."""
    g = _mask(ctx, node, grads[0], 7)
    out = [None] * len(node.input)
    for i, s, other in ((0, 1, 3), (3, 4, 0)):
        if ctx.wants(node, i):
            dq = _dequantized(ctx, node, node.input[other], node.input[other + 1],
                              _input(node, other + 2), _ratio(ctx, node, s, 6), 1)
            out[i] = ctx.unbroadcast(ctx.b.op("Mul", g, dq), node.input[i], node.output[0])
    return out


@GRADIENT.rule("QLinearSigmoid", domain=MS, integers=True)
def qlinear_sigmoid(ctx: RuleContext, node, grads):
    """dx_q = m·g·σ(u)(1 − σ(u))·s_x/s_y with u = DQ(x_q)."""
    b = ctx.b
    g = _mask(ctx, node, grads[0], 4)
    u = _dequantized(ctx, node, node.input[0], node.input[1], _input(node, 2), 1.0, 1)
    sig = b.op("Sigmoid", u)
    slope = b.op("Mul", sig, b.op("Sub", b.const(1.0), sig))
    return [_times(ctx, b.op("Mul", g, slope), _ratio(ctx, node, 1, 3))] + \
        [None] * (len(node.input) - 1)


@GRADIENT.rule("QLinearLeakyRelu", domain=MS, integers=True)
def qlinear_leaky_relu(ctx: RuleContext, node, grads):
    """dx_q = m·g·(1 where x_q > z_x, else α)·s_x/s_y."""
    b, x = ctx.b, node.input[0]
    alpha = attrs_of(node).get("alpha", 0.01)
    g = _mask(ctx, node, grads[0], 4)
    z = _input(node, 2)
    zero = _tensor(ctx, node, z, 1, ctx.index.rank(x)) if z else b.const(0.0)
    slope = b.op("Where", b.op("Greater", b.op("Cast", x, to=FLOAT), zero), b.const(1.0),
                 b.const(alpha))
    return [_times(ctx, b.op("Mul", g, slope), _ratio(ctx, node, 1, 3))] + \
        [None] * (len(node.input) - 1)


@GRADIENT.rule("QLinearGlobalAveragePool", domain=MS, integers=True)
def qlinear_global_average_pool(ctx: RuleContext, node, grads):
    """GlobalAveragePool's gradient · s_x/s_y (channels first)."""
    if attrs_of(node).get("channels_last", 0):
        raise _refuse(ctx, node, "pools channels-last data")
    g = _mask(ctx, node, grads[0], 4)
    dx = GRADIENT["GlobalAveragePool"](ctx, _fake(node, "GlobalAveragePool", [node.input[0]], {}),
                                       [g])[0]
    return [_times(ctx, dx, _ratio(ctx, node, 1, 3))] + [None] * (len(node.input) - 1)


@GRADIENT.rule("QLinearAveragePool", domain=MS, integers=True)
def qlinear_average_pool(ctx: RuleContext, node, grads):
    """AveragePool's gradient · s_x/s_y (channels first)."""
    a = attrs_of(node)
    if a.pop("channels_last", 0):
        raise _refuse(ctx, node, "pools channels-last data")
    g = _mask(ctx, node, grads[0], 4)
    dx = GRADIENT["AveragePool"](ctx, _fake(node, "AveragePool", [node.input[0]], a), [g])[0]
    return [_times(ctx, dx, _ratio(ctx, node, 1, 3))] + [None] * (len(node.input) - 1)


@GRADIENT.rule("QLinearConcat", domain=MS, integers=True)
def qlinear_concat(ctx: RuleContext, node, grads):
    """dx_i = slice_i(m·g)·s_i/s_y."""
    g = _mask(ctx, node, grads[0], 1)
    slots = list(range(2, len(node.input), 3))
    fake = _fake(node, "Concat", [node.input[i] for i in slots])
    parts = GRADIENT["Concat"](ctx, fake, [g])
    out = [None] * len(node.input)
    for i, part in zip(slots, parts):
        if part is not None and ctx.wants(node, i):
            out[i] = _times(ctx, part, _ratio(ctx, node, i + 1, 0))
    return out
