"""Ops that pick, repeat or rearrange elements, and ops that carry no gradient.

Gather, GatherElements, GatherND, TopK's values: dx = zeros shaped like x with g scatter-added at
the picked positions (ScatterElements / ScatterND with reduction="add", opset 16: an element
picked twice gets both signals). A constant run of consecutive Gather indices (ViT's class token
`x[:, 0]`) is a zero-pad instead. Expand: g summed over the broadcast axes. Tile: g reshaped to
[r0, d0, r1, d1, …] and summed over the repeat axes. Where: g to the side each element came from.
DepthToSpace, SpaceToDepth: the inverse permutation.

No gradient: Floor, Ceil, Round and Sign are piecewise constant (derivative 0 almost everywhere,
undefined at the jumps), so their contribution is absent, not a tensor of zeros. Ops whose
outputs are integer or boolean (ArgMax, Shape, comparisons, …; `NO_GRADIENT`) never lie on the
path of a float signal; their rule says so explicitly (no gradient to any input).
"""

from __future__ import annotations

import numpy as np
import onnx

from ...graph import attr_text, attrs_of
from ..context import RuleContext
from ..table import GRADIENT

NO_GRADIENT = ("ArgMax", "ArgMin", "NonMaxSuppression", "Shape", "Size", "Range",
               "ConstantOfShape", "NonZero", "Unique", "OneHot", "EyeLike", "Equal", "Less",
               "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor", "IsNaN",
               "IsInf")


@GRADIENT.rule(*NO_GRADIENT)
def no_gradient(ctx, node, grads):
    """Integer or boolean results (indices, shapes, masks): no gradient to any input."""
    return [None] * len(node.input)


@GRADIENT.rule("Floor", "Ceil", "Round", "Sign")
def piecewise_constant(ctx, node, grads):
    """f(x) constant between jumps: f'(x) = 0 almost everywhere (undefined at the jumps), so the
    contribution is exactly zero, left absent."""
    return [None] * len(node.input)


# -- helpers -------------------------------------------------------------------------------

def _zeros(ctx: RuleContext, x: str) -> str:
    """float32 zeros shaped like x (a constant shape where x's is static)."""
    static = ctx.index.static_shape(x)
    return ctx.b.op("ConstantOfShape", ctx.b.ints(static) if static is not None
                    else ctx.b.shape(x))


def _int64(ctx: RuleContext, name: str) -> str:
    """An integer tensor as int64 (Slice, Gather and TopK also take int32)."""
    if ctx.index.types.get(name, onnx.TensorProto.INT64) == onnx.TensorProto.INT64:
        return name
    return ctx.b.op("Cast", name, to=onnx.TensorProto.INT64)


def _dims(ctx: RuleContext, x: str, start: int, end: int) -> str:
    """x's dims [start, end) as an int64 vector (a constant where they are static)."""
    shape = ctx.index.shapes.get(x)
    if shape is not None and all(isinstance(d, int) for d in shape[start:end]):
        return ctx.b.ints(shape[start:end])
    return ctx.b.shape(x, start, end)


def _rank(ctx: RuleContext, node, x: str) -> int:
    rank = ctx.index.rank(x)
    if rank is None:
        raise ctx.unsupported(node, f"reads tensor '{x}' of unknown rank")
    return rank


def sum_to(ctx: RuleContext, node, g: str, x: str) -> str:
    """g (shaped like `node`'s broadcast output) summed back to the shape of its input `x`.

    Statically (ctx.unbroadcast) where each dim of x is known to be 1, a number (a dim other
    than 1 is never broadcast) or the output's own; else at run time: ReduceSum over the
    leading axes and the axes where x is 1 and g is not."""
    b, out = ctx.b, node.output[0]
    xs, os_ = ctx.index.shapes.get(x), ctx.index.shapes.get(out)
    if xs is None or os_ is None or len(os_) < len(xs):
        raise ctx.unsupported(node, f"broadcasts tensor '{x}' of unknown rank")
    lead = len(os_) - len(xs)
    if all(isinstance(t, int) or (t is not None and t == o) for t, o in zip(xs, os_[lead:])):
        return ctx.unbroadcast(g, x, out)
    ones = b.ints([1] * len(xs))
    broadcast = b.op("And", b.op("Equal", b.shape(x), ones),
                     b.op("Not", b.op("Equal", b.shape(g, lead, len(os_)), ones)))
    axes = b.op("Add", b.squeeze(b.op("NonZero", broadcast), [0]), b.ints([lead]))
    if lead:
        axes = b.op("Concat", b.ints(range(lead)), axes, axis=0)
    dx = b.op("ReduceSum", g, axes, keepdims=1, noop_with_empty_axes=1)
    return b.op("Reshape", dx, b.shape(x)) if lead else dx


# -- picking elements ----------------------------------------------------------------------

def _gather_pad(ctx, g, x, axis, first, count):
    """Gather of the consecutive indices first … first+count−1 (count = g's size at `axis`)
    along a static axis: dx = g zero-padded to x's size there."""
    rank, dim = ctx.index.rank(x), ctx.index.shapes[x][axis]
    pads = [0] * (2 * rank)
    pads[axis], pads[rank + axis] = first, dim - first - count
    return ctx.b.op("Pad", g, ctx.b.ints(pads))


@GRADIENT.rule("Gather")
def gather(ctx, node, grads):
    """y = Gather(x, i, axis): y[a, j, c] = x[a, i_j, c] (a: the axes before `axis`, j: i's
    axes, c: those after). dx[a, k, c] = Σ_{j: i_j = k} g[a, j, c]: g with i's axes flattened
    to one, scatter-added (ScatterElements) at i along `axis`. Negative i count from the end.
    Consecutive constant indices (a scalar index among them) zero-pad instead."""
    b, g = ctx.b, grads[0]
    x, idx = node.input[0], node.input[1]
    if not ctx.wants(node, 0):
        return [None, None]
    rank = _rank(ctx, node, x)
    axis = attrs_of(node).get("axis", 0) % rank
    dim = ctx.index.shapes[x][axis]
    known = ctx.index.const(idx)
    idx_rank = known.ndim if known is not None else ctx.index.rank(idx)
    if idx_rank is None:
        out_rank = ctx.index.rank(node.output[0])
        if out_rank is None:
            raise ctx.unsupported(node, "gathers with indices of unknown rank")
        idx_rank = out_rank - rank + 1
    if known is not None and isinstance(dim, int):
        flat = known.reshape(-1).astype(np.int64)
        flat = np.where(flat < 0, flat + dim, flat)
        if np.any((flat < 0) | (flat >= dim)):
            raise ctx.unsupported(node, f"gathers indices outside [-{dim}, {dim - 1}]")
        idx = b.ints(flat)
        count = flat.size
    else:
        idx = _int64(ctx, idx)
        count = None
        if idx_rank != 1:
            idx = b.op("Reshape", idx, b.ints([-1]))
    # g with i's axes as one axis at `axis`
    if idx_rank == 0:
        g = b.unsqueeze(g, [axis])
    elif idx_rank > 1:
        size = b.ints([count]) if count is not None else b.op("Shape", idx)
        g = b.op("Reshape", g, b.op("Concat", _dims(ctx, x, 0, axis), size,
                                    _dims(ctx, x, axis + 1, rank), axis=0))
    if count is not None and count and np.array_equal(flat, np.arange(flat[0], flat[0] + count)):
        return [_gather_pad(ctx, g, x, axis, int(flat[0]), count), None]
    where = [1] * rank
    where[axis] = -1
    spread = b.op("Expand", b.op("Reshape", idx, b.ints(where)), b.op("Shape", g))
    dx = b.op("ScatterElements", _zeros(ctx, x), spread, g, axis=axis, reduction="add")
    return [dx, None]


@GRADIENT.rule("GatherElements")
def gather_elements(ctx, node, grads):
    """y[p] = x[p with its `axis` coordinate replaced by i[p]]: dx = ScatterElements-add of g
    at i (shaped like g) into zeros shaped like x."""
    if not ctx.wants(node, 0):
        return [None, None]
    x = node.input[0]
    axis = attrs_of(node).get("axis", 0) % _rank(ctx, node, x)
    dx = ctx.b.op("ScatterElements", _zeros(ctx, x), _int64(ctx, node.input[1]), grads[0],
                  axis=axis, reduction="add")
    return [dx, None]


@GRADIENT.rule("GatherND")
def gather_nd(ctx, node, grads):
    """y[β, j] = x[β, i[β, j]] (β: the `batch_dims` leading axes, i[β, j] a k-tuple of
    coordinates into x's next k axes): dx = ScatterND-add of g at i into zeros like x. With
    batch dims, β is flattened to one axis and its coordinate prepended to each tuple."""
    b, g, x, idx = ctx.b, grads[0], node.input[0], node.input[1]
    if not ctx.wants(node, 0):
        return [None, None]
    _rank(ctx, node, x)
    batch = attrs_of(node).get("batch_dims", 0)
    ishape = ctx.index.shapes.get(idx)
    if ishape is None or not isinstance(ishape[-1], int):
        raise ctx.unsupported(node, "gathers with index tuples of unknown length")
    k = ishape[-1]
    # negative coordinates count from the end of their axis
    known, xs = ctx.index.const(idx), ctx.index.shapes[x]
    if known is not None and all(isinstance(d, int) for d in xs[batch:batch + k]):
        idx = b.ints(np.where(known < 0, known + np.array(xs[batch:batch + k]), known))
    else:
        idx = _int64(ctx, idx)
        idx = b.op("Where", b.op("Less", idx, b.ints([0])),
                   b.op("Add", idx, _dims(ctx, x, batch, batch + k)), idx)
    if batch == 0:
        return [b.op("ScatterND", _zeros(ctx, x), idx, g, reduction="add"), None]
    flat = b.ints([-1])
    idx = b.op("Reshape", idx, b.op("Concat", flat, b.shape(idx, batch), axis=0))
    g = b.op("Reshape", g, b.op("Concat", flat, b.shape(g, batch), axis=0))
    count = b.op("Gather", b.op("Shape", idx), b.ints([0]))
    ramp = b.op("Range", b.const(0, np.int64), b.squeeze(count, [0]), b.const(1, np.int64))
    idx_rank = len(ishape) - batch + 1
    ramp = b.op("Reshape", ramp, b.ints([-1] + [1] * (idx_rank - 1)))
    tuple_shape = b.op("Concat", b.shape(idx, 0, idx_rank - 1), b.ints([1]), axis=0)
    idx = b.op("Concat", b.op("Expand", ramp, tuple_shape), idx, axis=-1)
    zeros = b.op("ConstantOfShape", b.op("Concat", count, b.shape(x, batch), axis=0))
    dx = b.op("ScatterND", zeros, idx, g, reduction="add")
    return [b.op("Reshape", dx, b.shape(x)), None]


@GRADIENT.rule("TopK")
def topk(ctx, node, grads):
    """(v, i) = TopK(x, k, axis): v = x at i along `axis`, so dx = ScatterElements-add of g_v at
    i; the indices output carries no gradient."""
    if grads[0] is None or not ctx.wants(node, 0):
        return [None] * len(node.input)
    x = node.input[0]
    axis = attrs_of(node).get("axis", -1) % _rank(ctx, node, x)
    indices = ctx.b.forward_output(node, 1, "topk_indices")
    dx = ctx.b.op("ScatterElements", _zeros(ctx, x), indices, grads[0], axis=axis,
                  reduction="add")
    return [dx, None]


# -- repeating -----------------------------------------------------------------------------

@GRADIENT.rule("Expand")
def expand(ctx, node, grads):
    """y = x broadcast to `shape`: dx = g summed over the broadcast axes."""
    if not ctx.wants(node, 0):
        return [None, None]
    return [sum_to(ctx, node, grads[0], node.input[0]), None]


@GRADIENT.rule("Tile")
def tile(ctx, node, grads):
    """y = Tile(x, r): y[p] = x[p mod d] per axis (d: x's shape). dx = g reshaped to
    [r0, d0, r1, d1, …] (axes with r = 1 left whole), summed over the r axes."""
    b, g, x = ctx.b, grads[0], node.input[0]
    if not ctx.wants(node, 0):
        return [None, None]
    rank = _rank(ctx, node, x)
    shape = ctx.index.shapes[x]
    reps = ctx.index.const(node.input[1])
    if reps is not None:
        split, axes = [], []
        for i, (r, d) in enumerate(zip(reps.tolist(), shape)):
            if r != 1:
                axes.append(len(split))
                split.append(r)
            if isinstance(d, int):
                split.append(d)
            elif len(split) == i:          # only whole axes before it: copy g's dim
                split.append(0)
            else:
                split.append(None)
        if split.count(None) <= 1:
            if not axes:
                return [g, None]
            g = b.op("Reshape", g, b.ints([-1 if s is None else s for s in split]))
            return [b.reduce("ReduceSum", g, axes, keepdims=False), None]
    pairs = b.op("Concat", b.unsqueeze(_int64(ctx, node.input[1]), [1]),
                 b.unsqueeze(b.shape(x), [1]), axis=1)
    g = b.op("Reshape", g, b.op("Reshape", pairs, b.ints([-1])))
    return [b.reduce("ReduceSum", g, range(0, 2 * rank, 2), keepdims=False), None]


@GRADIENT.rule("Where")
def where(ctx, node, grads):
    """y = c ? a : b (broadcast): da = c ? g : 0, db = c ? 0 : g, each summed back to its
    input's shape; the condition gets none."""
    b, g, (cond, _, _) = ctx.b, grads[0], node.input
    zero = b.const(0.0)
    result = [None, None, None]
    if ctx.wants(node, 1):
        result[1] = sum_to(ctx, node, b.op("Where", cond, g, zero), node.input[1])
    if ctx.wants(node, 2):
        result[2] = sum_to(ctx, node, b.op("Where", cond, zero, g), node.input[2])
    return result


# -- rearranging ---------------------------------------------------------------------------

@GRADIENT.rule("SpaceToDepth")
def space_to_depth(ctx, node, grads):
    """A permutation whose inverse is DepthToSpace in DCR mode (same block size)."""
    size = attrs_of(node)["blocksize"]
    return [ctx.b.op("DepthToSpace", grads[0], blocksize=size, mode="DCR")]


@GRADIENT.rule("DepthToSpace")
def depth_to_space(ctx, node, grads):
    """A permutation; its gradient is the inverse permutation. DCR: y[c, hb+i, wb+j] =
    x[(ib+j)C' + c, h, w], undone by SpaceToDepth. CRD: y[c, hb+i, wb+j] = x[cb² + ib + j, h, w],
    undone by g → [N, C', H, b, W, b] → transpose to [N, C', b, b, H, W] → x's shape."""
    b, g, x, y = ctx.b, grads[0], node.input[0], node.output[0]
    size = attrs_of(node)["blocksize"]
    if attr_text(node, "mode", "DCR") == "DCR":
        return [b.op("SpaceToDepth", g, blocksize=size)]
    xs = ctx.index.shapes.get(x)
    if xs is not None and len(xs) == 4 and isinstance(xs[2], int) and isinstance(xs[3], int):
        blocks = b.ints([0, 0, xs[2], size, xs[3], size])
    else:
        blocks = b.op("Concat", b.shape(g, 0, 2), b.shape(x, 2, 3), b.ints([size]),
                      b.shape(x, 3, 4), b.ints([size]), axis=0)
    g = b.op("Transpose", b.op("Reshape", g, blocks), perm=[0, 1, 3, 5, 2, 4])
    return [b.op("Reshape", g, b.shape_of(x, y, fill=0))]
