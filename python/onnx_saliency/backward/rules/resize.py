"""Resize (and Upsample): the transpose of the interpolation, exactly.

Without antialiasing, Resize is separable and linear in x: along each resized axis k the
output is y = M_k x with M_k an [out, in] matrix of interpolation weights (nearest: one 1 per
row; linear: two weights; cubic: four, Keys' kernel with coefficient a). So
dx = g ×_k M_kᵀ over the resized axes: one MatMul per axis against a constant.

M_k is built here in NumPy from the coordinate rule ONNX Runtime applies (float32, as ORT
computes it), for output index i, scale s, input and output lengths n, m:
  half_pixel: (i + ½)/s − ½          pytorch_half_pixel: (i + ½)/s − ½, or 0 when m = 1
  asymmetric: i/s                    tf_half_pixel_for_nn: (i + ½)/s
  align_corners: i(n − 1)/(m − 1), or 0 when m = 1
  half_pixel_symmetric: n/2·(1 − m/(s·n)) + (i + ½)/s − ½
  tf_crop_and_resize: r₀(n − 1) + i(r₁ − r₀)(n − 1)/(m − 1), or (r₀ + r₁)(n − 1)/2 when m = 1;
    outside [0, n − 1] the output is the extrapolation value: a zero row.
nearest rounds with nearest_mode (round_prefer_floor: halves down; round_prefer_ceil: halves
up; floor; ceil) and clamps to [0, n − 1]; linear clamps the coordinate to [0, n − 1]; cubic
takes the taps ⌊x⌋ − 1 … ⌊x⌋ + 2 clamped to the edge, or with exclude_outside drops the taps
outside and renormalises. s is the given scale, or m/n where sizes are given (with
keep_aspect_ratio_policy not_larger/not_smaller: one scale, the min/max of the ratios, and
m = round(s·n)). Opset 18's `axes` names the axes scales, sizes and roi refer to.

Upsample (opsets 7-9) and Resize-10 have asymmetric coordinates, nearest rounding down (up
when shrinking); onnx's version converter, which canonicalisation runs below opset 16, turns
them into Resize with the defaults (half_pixel), and canonicalisation sets their coordinates
back (canonical._old_resize_semantics), so they reach the walk as Resize.

Sizes computed at run time from static dims (`F.interpolate(x, size=image.shape[-2:])`:
Concat(Shape(x)[:2], Shape(image)[2:4])) are evaluated on the static shapes
(`_static_sizes`). Refused, one sentence each: antialias = 1, lengths unknown where an
axis is resized, scales or sizes computed at run time from anything else where the output
length is unknown too.
"""

from __future__ import annotations

import numpy as np
import onnx

from ...graph import attr_text, attrs_of
from ..context import RuleContext
from ..table import GRADIENT

F32 = np.float32


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """std::round: halves away from zero."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def source_coordinates(n: int, m: int, scale: float, mode: str,
                       roi: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """x_original of output indices 0..m−1 (float32, as ONNX Runtime computes them)."""
    i = np.arange(m, dtype=F32)
    s = F32(scale)
    if mode == "half_pixel":
        return (i + F32(0.5)) / s - F32(0.5)
    if mode == "pytorch_half_pixel":
        return (i + F32(0.5)) / s - F32(0.5) if m > 1 else np.zeros(m, F32)
    if mode == "asymmetric":
        return i / s
    if mode == "tf_half_pixel_for_nn":
        return (i + F32(0.5)) / s
    if mode == "align_corners":
        return i * F32(n - 1) / F32(m - 1) if m > 1 else np.zeros(m, F32)
    if mode == "half_pixel_symmetric":
        adjustment = F32(m) / (s * F32(n))
        offset = F32(n) / F32(2) * (F32(1) - adjustment)
        return offset + (i + F32(0.5)) / s - F32(0.5)
    if mode == "tf_crop_and_resize":
        r0, r1 = F32(roi[0]), F32(roi[1])
        if m > 1:
            return r0 * F32(n - 1) + i * (r1 - r0) * F32(n - 1) / F32(m - 1)
        return np.full(m, F32(0.5) * (r0 + r1) * F32(n - 1), F32)
    raise ValueError(mode)


def _cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
    """Keys' kernel at the four taps ⌊x⌋−1 … ⌊x⌋+2 for fractional parts t, [m, 4]."""
    d = np.stack([t + 1, t, 1 - t, 2 - t], axis=1).astype(np.float64)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, far)


def interpolation_matrix(n: int, m: int, scale: float, mode: str, coordinates: str,
                         nearest_mode: str = "round_prefer_floor", cubic_a: float = -0.75,
                         exclude_outside: bool = False,
                         roi: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """M [m, n] with y = M x along one axis (float64 weights)."""
    x = source_coordinates(n, m, scale, coordinates, roi)
    matrix = np.zeros((m, n))
    rows = np.arange(m)
    outside = ((x < 0) | (x > n - 1)) if coordinates == "tf_crop_and_resize" else np.zeros(m, bool)
    if mode == "nearest":
        if nearest_mode == "round_prefer_floor":
            whole = np.trunc(x)
            idx = np.where(x == whole + F32(0.5), np.floor(x), _round_half_away(x))
        elif nearest_mode == "round_prefer_ceil":
            idx = _round_half_away(x)
        elif nearest_mode == "floor":
            idx = np.floor(x)
        elif nearest_mode == "ceil":
            idx = np.ceil(x)
        elif nearest_mode == "simple":   # Resize-10, Upsample: down, or up when shrinking
            idx = np.ceil(x) if scale < 1 else np.floor(x)
        else:
            raise ValueError(nearest_mode)
        matrix[rows, np.clip(idx, 0, n - 1).astype(np.int64)] = 1.0
    elif mode == "linear":
        xc = np.clip(x, 0, n - 1).astype(np.float64)
        lo = np.minimum(np.floor(xc), n - 1).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        w = xc - lo
        np.add.at(matrix, (rows, lo), 1 - w)
        np.add.at(matrix, (rows, hi), w)
    elif mode == "cubic":
        base = np.floor(x).astype(np.int64)
        w = _cubic_weights((x - np.floor(x)).astype(np.float64), cubic_a)
        taps = base[:, None] + np.arange(-1, 3)[None, :]
        if exclude_outside:
            w = np.where((taps >= 0) & (taps < n), w, 0.0)
            w = w / w.sum(axis=1, keepdims=True)
        for j in range(4):
            np.add.at(matrix, (rows, np.clip(taps[:, j], 0, n - 1)), w[:, j])
    else:
        raise ValueError(mode)
    matrix[outside] = 0.0
    return matrix


def _static_sizes(ctx: RuleContext, sizes: str, x: str, rank: int) -> list | None:
    """Per axis, the length a run-time sizes input gives, or OWN where it is x's own batch
    length, when sizes is shape arithmetic on static dims: `F.interpolate(x,
    size=image.shape[-2:])` exports Concat(Shape(x)[:2], Cast(Concat(Shape(image)[2],
    Shape(image)[3]))). The arithmetic (the nodes sizes depends on, down to Shape nodes and
    constants) is evaluated twice, with every batch dim 1 and 2: lengths that follow the batch
    must be x's own batch (axis 0), the others are constants. None when it reads anything else
    or an unknown dim."""
    from onnx import helper as onnx_helper
    from onnx.reference import ReferenceEvaluator

    nodes, consts, todo, seen = [], {}, [sizes], set()
    while todo:
        t = todo.pop()
        if t in seen or not t:
            continue
        seen.add(t)
        value = ctx.index.const(t)
        if value is not None:
            if value.size > 64:
                return None
            consts[t] = value
            continue
        node = ctx.index.producer.get(t)
        if node is None or node.domain not in ("", "ai.onnx") or len(nodes) > 64:
            return None
        nodes.append(node)
        if node.op_type != "Shape":
            todo += list(node.input)
    order = {id(n): i for i, n in enumerate(ctx.index.nodes)}
    nodes.sort(key=lambda n: order[id(n)])      # topological, as in the graph
    results = []
    for batch in (1, 2):
        feeds, graph_nodes = dict(consts), []
        for node in nodes:
            if node.op_type == "Shape":
                dims = ctx.index.shapes.get(node.input[0])
                if dims is None or not all(isinstance(d, int) for d in dims[1:]):
                    return None
                dims = [batch if not isinstance(d, int) else d for d in dims]
                a = attrs_of(node)
                feeds[node.output[0]] = np.array(dims, np.int64)[a.get("start", 0):
                                                                 a.get("end", len(dims))]
            else:
                graph_nodes.append(node)
        graph = onnx_helper.make_graph(
            graph_nodes, "sizes",
            [onnx_helper.make_tensor_value_info(k, onnx_helper.np_dtype_to_tensor_dtype(v.dtype),
                                                v.shape) for k, v in feeds.items()],
            [onnx_helper.make_tensor_value_info(sizes, onnx.TensorProto.INT64, None)])
        model = onnx_helper.make_model(graph, opset_imports=list(ctx.index.model.opset_import))
        try:
            results.append(np.ravel(ReferenceEvaluator(model).run([sizes], feeds)[0]))
        except Exception:   # the evaluator's own errors: no static answer
            return None
    one, two = results
    if one.shape != (rank,) or two.shape != (rank,):
        return None
    lengths: list = []
    for ax, (p, q) in enumerate(zip(one, two)):
        if p == q:
            lengths.append(int(p))
        elif ax == 0 and (p, q) == (1, 2):
            lengths.append(OWN)   # the batch, as x's
        else:
            return None
    return lengths


OWN = "own"


def _axis_plan(ctx: RuleContext, node, opset_forms: bool) -> list[tuple[int, int, int, float,
                                                                           tuple[float, float]]]:
    """[(axis, n, m, scale, roi)] for every axis of the input."""
    a = attrs_of(node)
    x, y = node.input[0], node.output[0]
    xs, ys = ctx.index.shapes.get(x), ctx.index.shapes.get(y)
    rank = ctx.index.rank(x)
    if rank is None:
        raise ctx.unsupported(node, "resizes a tensor of unknown rank")

    def const(i):
        if i >= len(node.input) or not node.input[i]:
            return None
        value = ctx.index.const(node.input[i])
        if value is None:
            return "runtime"
        return None if value.size == 0 else np.ravel(value)

    if opset_forms:
        roi, scales, sizes = const(1), const(2), const(3)
        if isinstance(sizes, str) and "axes" not in a:
            sizes = _static_sizes(ctx, node.input[3], x, rank) or sizes
    else:   # Upsample-9, Resize-10: (X, scales); Upsample-7: scales attribute
        roi, sizes = None, None
        scales = const(1) if len(node.input) > 1 else np.asarray(a.get("scales", []), F32)
    axes = [int(v) % rank for v in a.get("axes", range(rank))]
    full_roi = np.array([0.0] * rank + [1.0] * rank)
    if isinstance(roi, np.ndarray):
        full_roi = full_roi.copy()
        for j, ax in enumerate(axes):
            full_roi[ax], full_roi[rank + ax] = roi[j], roi[len(axes) + j]
    elif roi == "runtime" and \
            attr_text(node, "coordinate_transformation_mode", "") == "tf_crop_and_resize":
        raise ctx.unsupported(node, "has a region of interest computed at run time")
    n_dims = list(xs) if xs is not None else [None] * rank
    scale = [1.0] * rank
    out: list = list(n_dims)
    if isinstance(scales, np.ndarray):
        for j, ax in enumerate(axes):
            scale[ax] = float(F32(scales[j]))
            if isinstance(n_dims[ax], int):
                out[ax] = int(np.floor(F32(scales[j]) * F32(n_dims[ax])))
            elif scale[ax] != 1.0:
                out[ax] = None
    elif isinstance(sizes, list):   # x's own lengths and constants (_static_sizes)
        if attr_text(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
            raise ctx.unsupported(node, "keeps an aspect ratio with sizes computed at run time")
        for ax, length in enumerate(sizes):
            if length == OWN:
                continue
            if not isinstance(n_dims[ax], int):
                raise ctx.unsupported(node, "resizes to given sizes an input of unknown size")
            scale[ax], out[ax] = float(F32(length) / F32(n_dims[ax])), length
    elif isinstance(sizes, np.ndarray):
        if any(not isinstance(n_dims[ax], int) for ax in axes):
            raise ctx.unsupported(node, "resizes to given sizes an input of unknown size")
        policy = attr_text(node, "keep_aspect_ratio_policy", "stretch")
        ratios = [F32(int(sizes[j])) / F32(n_dims[ax]) for j, ax in enumerate(axes)]
        if policy == "stretch":
            for j, ax in enumerate(axes):
                scale[ax], out[ax] = float(ratios[j]), int(sizes[j])
        else:
            common = min(ratios) if policy == "not_larger" else max(ratios)
            for ax in axes:
                scale[ax] = float(common)
                out[ax] = int(np.floor(F32(common) * F32(n_dims[ax]) + F32(0.5)))
    else:   # computed at run time: the lengths from the output's known shape
        for ax in range(rank):
            if ys is not None and ys[ax] == n_dims[ax]:
                continue
            if ys is None or not isinstance(ys[ax], int) or not isinstance(n_dims[ax], int):
                raise ctx.unsupported(node, "has scales or sizes computed at run time and an "
                                      "output of unknown size")
            out[ax], scale[ax] = ys[ax], float(F32(ys[ax]) / F32(n_dims[ax]))
    if ys is not None:
        for ax in range(rank):
            if isinstance(ys[ax], int) and isinstance(out[ax], int) and ys[ax] != out[ax]:
                raise ctx.unsupported(node, f"has axis {ax} of length {ys[ax]}, where its "
                                      f"scales and sizes give {out[ax]}")
    return [(ax, n_dims[ax], out[ax], scale[ax], (full_roi[ax], full_roi[rank + ax]))
            for ax in range(rank)]


def _transposed_resize(ctx: RuleContext, node, g: str, plan, mode: str, coordinates: str,
                       nearest_mode: str, cubic_a: float, exclude: bool) -> str:
    b = ctx.b
    rank = len(plan)
    for ax, n, m, scale, roi in plan:
        if n == m and scale == 1.0 and coordinates != "tf_crop_and_resize":
            continue   # the identity (every mode maps i to i at scale 1)
        if not isinstance(n, int) or not isinstance(m, int):
            raise ctx.unsupported(node, f"resizes axis {ax}, whose length is unknown (a model "
                                  "with symbolic image sizes: give Explainer(..., "
                                  "input_size=(H, W)))")
        matrix = interpolation_matrix(n, m, scale, mode, coordinates, nearest_mode, cubic_a,
                                      exclude, roi)
        if np.array_equal(matrix, np.eye(n)):
            continue
        if ax == rank - 1:
            g = b.op("MatMul", g, b.const(matrix.astype(F32)))                 # [..., m]·[m, n]
        elif ax == rank - 2:
            g = b.op("MatMul", b.const(matrix.T.astype(F32)), g)               # [n, m]·[..., m, W]
        else:
            perm = [d for d in range(rank) if d != ax] + [ax]
            back = list(np.argsort(perm))
            moved = b.op("MatMul", b.op("Transpose", g, perm=perm), b.const(matrix.astype(F32)))
            g = b.op("Transpose", moved, perm=[int(p) for p in back])
    return g


@GRADIENT.rule("Resize")
def resize(ctx, node, grads):
    """dx = g ×_k M_kᵀ over the resized axes (the module docstring)."""
    a = attrs_of(node)
    if a.get("antialias", 0):
        raise ctx.unsupported(node, "uses antialias=1")
    opset_forms = ctx.index.opset >= 11
    mode = attr_text(node, "mode", "nearest")
    if opset_forms:
        coordinates = attr_text(node, "coordinate_transformation_mode", "half_pixel")
        nearest_mode = attr_text(node, "nearest_mode", "round_prefer_floor")
    else:
        coordinates, nearest_mode = "asymmetric", "simple"
    plan = _axis_plan(ctx, node, opset_forms)
    dx = _transposed_resize(ctx, node, grads[0], plan, mode, coordinates, nearest_mode,
                            float(a.get("cubic_coeff_a", -0.75)), bool(a.get("exclude_outside", 0)))
    return [dx] + [None] * (len(node.input) - 1)


@GRADIENT.rule("Upsample")
def upsample(ctx, node, grads):
    """Upsample-7/9 (asymmetric coordinates; nearest rounds down, up when shrinking): as
    Resize-10."""
    mode = attr_text(node, "mode", "nearest")
    if mode == "bilinear":
        mode = "linear"
    plan = _axis_plan(ctx, node, opset_forms=False)
    dx = _transposed_resize(ctx, node, grads[0], plan, mode, "asymmetric", "simple", -0.75, False)
    return [dx] + [None] * (len(node.input) - 1)
