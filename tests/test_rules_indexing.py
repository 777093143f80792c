"""The indexing and data-movement rules (rules/indexing.py, the run-time Slice/Split paths of
rules/shape_ops.py) beyond the finite-difference sweep over graphs/: exact NumPy references for
the scatter-adds (repeated indices accumulate), the run-time Slice paths against the constant
one, and torchvision's ShuffleNetV2 (run-time channel split, channel shuffle by Reshape/Transpose
with shapes from Shape) against PyTorch autograd pinned to ONNX Runtime's decisions.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import onnx_saliency as osal
from conftest import pinned_decisions, rel_err


def test_shufflenet_v2_input_gradient_matches_autograd(torchvision_model):
    """shufflenet_v2_x1_0 (seeded random weights, 64 px, two images with different targets):
    the input gradient equals PyTorch autograd's, pinned to ORT's ReLU and MaxPool decisions,
    within 1e-4 relative (max |ours − ref| / max |ref|; fp32 rounding of both engines is
    ~1e-6 of that)."""
    path, model = torchvision_model("shufflenet_v2_x1_0", 64)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 64, 64))
                         .astype(np.float32))
    targets = [3, 711]
    graph = osal.backward_graph(path, ["input"])
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    ours = sess.run(None, {"input": x.numpy(), "target": np.array(targets)})[0]
    xr = x.clone().requires_grad_(True)
    with pinned_decisions(path, model, x, graph=graph, target=targets):
        logits = model(xr)
    logits[torch.arange(2), torch.tensor(targets)].sum().backward()
    assert rel_err(ours, xr.grad.numpy()) <= 1e-4


# -- single nodes against exact NumPy references ------------------------------------------------

def _signal(nodes, inputs, out, wrt, feeds, inits=(), opset=17):
    """The gradient rules' signal at `wrt`, walked back from `out` seeded with the float input
    "cot", on a graph of `nodes` whose inputs are declared as `inputs` {name: (elem, dims)}
    (no canonicalisation: the declared shapes, unknown dims included, are what the rules see)."""
    from onnx_saliency.backward.rules import GRADIENT
    from onnx_saliency.backward.walk import backward
    from onnx_saliency.graph import GraphBuilder, GraphIndex

    outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, inputs.pop("__out__", None))]
    graph = helper.make_graph(
        nodes, "single", [helper.make_tensor_value_info(k, e, d) for k, (e, d) in inputs.items()],
        outputs, [numpy_helper.from_array(v, k) for k, v in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    index = GraphIndex(model)
    b = GraphBuilder(index)
    signal = backward(b, index, GRADIENT, {out: "cot"}, [wrt])[wrt]
    model.graph.node.extend(b.nodes)
    model.graph.initializer.extend(b.initializers)
    model.graph.output.append(helper.make_tensor_value_info(signal, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([signal], feeds)[0]


F, I64, I32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
RNG = np.random.default_rng(5)
X = RNG.standard_normal((2, 4, 3)).astype(np.float32)


def _scatter_add_reference(x_shape, axis, idx, cot):
    """Σ of cot at the gathered positions (np.add.at accumulates repeats)."""
    dx = np.zeros(x_shape)
    moved = np.moveaxis(dx, axis, 0)
    np.add.at(moved, np.asarray(idx).reshape(-1),
              np.moveaxis(cot.reshape(x_shape[:axis] + (-1,) + x_shape[axis + 1:]), axis, 0))
    return dx


GATHERS = [   # axis, indices (repeats and negatives), their dtype, constant or fed at run time
    (1, [0, 3, -1, 0, 2], I64, True), (1, [0, 3, -1, 0, 2], I64, False),
    (2, [[1, -1], [2, 0]], I32, False), (-1, 2, I64, True), (0, [1, -1, 1], I64, True),
    (1, [1, 2], I64, True), (1, [[1, 2, 3]], I64, True), (0, 1, I64, False)]


@pytest.mark.parametrize("axis,idx,elem,const", GATHERS)
def test_gather_scatter_adds_exactly(axis, idx, elem, const):
    """Gather's gradient is the scatter-add of the cotangent at the indices: repeated indices
    accumulate, negative ones count from the end; constant and run-time (int32 or int64)
    indices, scalar and 2-D ones, the zero-pad form for consecutive constants, and a batch
    axis of unknown size. Exact up to float32 summation order (1e-6)."""
    idx = np.asarray(idx, np.int64 if elem == I64 else np.int32)
    norm = np.where(idx < 0, idx + X.shape[axis], idx)
    y_shape = np.take(X, norm, axis=axis).shape
    cot = RNG.standard_normal(y_shape).astype(np.float32)
    feeds = {"x": X, "cot": cot}
    inputs = {"x": (F, ["n", 4, 3]), "cot": (F, list(y_shape))}
    inits = []
    if const:
        inits.append(("i", idx))
    else:
        inputs["i"] = (elem, list(idx.shape))
        feeds["i"] = idx
    got = _signal([helper.make_node("Gather", ["x", "i"], ["y"], axis=axis)], inputs, "y", "x",
                  feeds, inits)
    np.testing.assert_allclose(got, _scatter_add_reference(X.shape, axis % 3, norm, cot),
                               atol=1e-6)


def test_gather_elements_gather_nd_and_topk_scatter_add_exactly():
    """GatherElements (repeated and negative run-time indices), GatherND (batch_dims 0 and 1,
    repeated and negative tuples) and TopK's values: the NumPy scatter-add of the cotangent."""
    idx = np.array([[[0, -1, 1], [3, 3, 0]], [[1, 1, 1], [-4, 2, 2]]], np.int64)   # [2,2,3]
    cot = RNG.standard_normal(idx.shape).astype(np.float32)
    got = _signal([helper.make_node("GatherElements", ["x", "i"], ["y"], axis=1)],
                  {"x": (F, [2, 4, 3]), "i": (I64, [2, 2, 3]), "cot": (F, [2, 2, 3])}, "y", "x",
                  {"x": X, "i": idx, "cot": cot})
    ref = np.zeros(X.shape)
    n, _, k = np.indices(idx.shape)
    np.add.at(ref, (n, idx % 4, k), cot)
    np.testing.assert_allclose(got, ref, atol=1e-6)

    tuples = np.array([[1, -1], [0, 2], [1, 3], [0, 2]], np.int64)                # [4,2]
    cot = RNG.standard_normal((4, 3)).astype(np.float32)
    got = _signal([helper.make_node("GatherND", ["x", "i"], ["y"])],
                  {"x": (F, [2, 4, 3]), "i": (I64, [4, 2]), "cot": (F, [4, 3])}, "y", "x",
                  {"x": X, "i": tuples, "cot": cot})
    ref = np.zeros(X.shape)
    np.add.at(ref, (tuples[:, 0], tuples[:, 1] % 4), cot)
    np.testing.assert_allclose(got, ref, atol=1e-6)

    batched = np.array([[[1], [-1], [1]], [[0], [0], [2]]], np.int64)             # [2,3,1]
    cot = RNG.standard_normal((2, 3, 3)).astype(np.float32)
    got = _signal([helper.make_node("GatherND", ["x", "i"], ["y"], batch_dims=1)],
                  {"x": (F, ["n", 4, 3]), "i": (I64, ["n", 3, 1]), "cot": (F, [2, 3, 3])},
                  "y", "x", {"x": X, "i": batched, "cot": cot})
    ref = np.zeros(X.shape)
    np.add.at(ref, (np.arange(2)[:, None], batched[..., 0] % 4), cot)
    np.testing.assert_allclose(got, ref, atol=1e-6)

    cot = RNG.standard_normal((2, 2, 3)).astype(np.float32)
    nodes = [helper.make_node("TopK", ["x", "k"], ["y", "where"], axis=1)]
    got = _signal(nodes, {"x": (F, [2, 4, 3]), "cot": (F, [2, 2, 3])}, "y", "x",
                  {"x": X, "cot": cot}, [("k", np.array([2], np.int64))])
    ref = np.zeros(X.shape)
    top = np.argsort(-X, axis=1)[:, :2]
    np.put_along_axis(ref, top, cot, axis=1)
    np.testing.assert_allclose(got, ref, atol=1e-6)


SLICES = [   # (starts, ends, axes, steps) on x [2, 4, 3]
    ([1], [3], [1], [1]), ([-3, 0], [2**62, -1], [1, 2], [1, 1]), ([5], [-9], [1], [1]),
    ([-1], [-2**62], [1], [-1]), ([3, 2], [0, -5], [1, 2], [-2, -1]), ([0], [4], [1], [3]),
    ([-2], [10], [-1], [2]), ([2], [1], [1], [1]), ([0, 1], [1, 2**62], [0, 1], [1, 1])]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICES)
@pytest.mark.parametrize("fed", ["none", "bounds", "all"])
def test_slice_puts_the_signal_back_where_it_came_from(starts, ends, axes, steps, fed):
    """Slice's gradient is the cotangent written back at the sliced positions, zeros elsewhere
    (NumPy: dx[slices] = cot), with the bounds constant (the Pad forms), fed at run time with
    constant axes and steps (the in-graph pads when steps are 1, else the scatter), or all fed
    (the scatter): out-of-range and INT_MAX bounds clamp, negative steps, empty slices, a batch
    axis of unknown size. Exact (no arithmetic on the values)."""
    picks = [slice(None)] * 3
    for s, e, a, st in zip(starts, ends, axes, steps):
        picks[a % 3] = slice(s, e, st)
    ref = np.zeros(X.shape, np.float32)
    cot = RNG.standard_normal(X[tuple(picks)].shape).astype(np.float32)
    ref[tuple(picks)] = cot
    names = ["starts", "ends", "axes", "steps"]
    values = {k: np.array(v, np.int64) for k, v in zip(names, (starts, ends, axes, steps))}
    runtime = {"none": [], "bounds": ["starts", "ends"], "all": names}[fed]
    inputs = {"x": (F, ["n", 4, 3]), "cot": (F, list(cot.shape))}
    inputs.update({k: (I64, [len(starts)]) for k in runtime})
    feeds = {"x": X, "cot": cot, **{k: values[k] for k in runtime}}
    inits = [(k, values[k]) for k in names if k not in runtime]
    got = _signal([helper.make_node("Slice", ["x", *names], ["y"])], inputs, "y", "x", feeds,
                  inits)
    np.testing.assert_array_equal(got, ref)


def test_expand_tile_and_depth_to_space_with_unknown_shapes():
    """The run-time forms: Expand onto a shape fed at run time with x's dims unknown (the
    broadcast axes found in the graph), Tile with fed repeats, DepthToSpace (CRD) with unknown
    spatial size, against NumPy (sums over the broadcast / repeat axes; the inverse
    permutation). Exact up to float32 summation order (1e-5)."""
    x = RNG.standard_normal((2, 1, 3)).astype(np.float32)
    cot = RNG.standard_normal((5, 2, 4, 3)).astype(np.float32)
    got = _signal([helper.make_node("Expand", ["x", "shape"], ["y"])],
                  {"x": (F, ["a", "b", 3]), "shape": (I64, [4]), "cot": (F, [5, 2, 4, 3]),
                   "__out__": [None, None, None, 3]}, "y", "x",
                  {"x": x, "shape": np.array([5, 1, 4, 1], np.int64), "cot": cot})
    np.testing.assert_allclose(got, cot.sum(axis=(0, 2), keepdims=True)[0], atol=1e-5)

    reps = np.array([3, 1, 2], np.int64)
    cot = RNG.standard_normal((6, 4, 6)).astype(np.float32)
    got = _signal([helper.make_node("Tile", ["x", "reps"], ["y"])],
                  {"x": (F, ["n", 4, 3]), "reps": (I64, [3]), "cot": (F, [6, 4, 6])}, "y", "x",
                  {"x": X, "reps": reps, "cot": cot})
    np.testing.assert_allclose(got, cot.reshape(3, 2, 4, 2, 3).sum(axis=(0, 3)), atol=1e-5)

    x = RNG.standard_normal((2, 8, 3, 2)).astype(np.float32)
    cot = RNG.standard_normal((2, 2, 6, 4)).astype(np.float32)
    got = _signal([helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode="CRD")],
                  {"x": (F, ["n", 8, "h", "w"]), "cot": (F, [2, 2, 6, 4])}, "y", "x",
                  {"x": x, "cot": cot})
    # y[n, c, 2h+i, 2w+j] = x[n, 4c + 2i + j, h, w]
    ref = cot.reshape(2, 2, 3, 2, 2, 2).transpose(0, 1, 3, 5, 2, 4).reshape(2, 8, 3, 2)
    np.testing.assert_array_equal(got, ref)


PADS = [([0, 1, 2, 0, 0, 1], None), ([0, -1, 2, 1, 0, -2], None), ([0, -2, -1, 0, -1, 0], None),
        ([1, -3], [2]), ([-1, 2, 0, -1], [1, 2])]


@pytest.mark.parametrize("pads,axes", PADS)
@pytest.mark.parametrize("fed", [False, True])
def test_pad_puts_the_signal_back_where_it_came_from(pads, axes, fed):
    """Constant-mode Pad's gradient is the cotangent read back at the kept positions, zeros
    where the pads cropped (NumPy reference: pad or crop each axis by hand), with the pads
    constant or fed at run time (Swin's window padding), positive and negative, with and
    without `axes` (opset 18). Exact."""
    rank = X.ndim
    full = [0] * (2 * rank)
    for k, a in enumerate(axes or range(rank)):
        full[a], full[rank + a] = pads[k], pads[len(pads) // 2 + k]
    padded = np.pad(X, [(max(b, 0), max(e, 0)) for b, e in zip(full[:rank], full[rank:])])
    crop = tuple(slice(max(-b, 0), padded.shape[i] - max(-e, 0))
                 for i, (b, e) in enumerate(zip(full[:rank], full[rank:])))
    cot = RNG.standard_normal(padded[crop].shape).astype(np.float32)
    # reference: the cotangent at each x position that survives into y, else 0
    spread = np.zeros(padded.shape, np.float32)
    spread[crop] = cot
    inner = tuple(slice(max(b, 0), max(b, 0) + X.shape[i]) for i, b in enumerate(full[:rank]))
    ref = spread[inner]
    names = ["x", "pads", "", "axes"] if axes else ["x", "pads"]
    inputs = {"x": (F, ["n", 4, 3]), "cot": (F, list(cot.shape))}
    feeds = {"x": X, "cot": cot}
    inits = [("axes", np.array(axes, np.int64))] if axes else []
    if fed:
        inputs["pads"] = (I64, [len(pads)])
        feeds["pads"] = np.array(pads, np.int64)
    else:
        inits.append(("pads", np.array(pads, np.int64)))
    got = _signal([helper.make_node("Pad", names, ["y"])], inputs, "y", "x", feeds, inits,
                  opset=18)
    np.testing.assert_array_equal(got, ref)
