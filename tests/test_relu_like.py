"""Guided backprop and deconvnet rectify at every ReLU-like unit (docs/methods.md §1; the rules in
backward/rules/activations.py): Relu, LeakyRelu, PRelu and Clip with min 0 (ReLU6), not only at
Relu nodes; other units keep their true gradient; a model with nothing to rectify warns.

The PyTorch reference writes each unit as y = s ⊙ x + c, with the slope s and offset c taken
from ONNX Runtime's own forward pass of the explainer graph (its decisions at every kink), so
that last-bit differences between the engines cannot flip a unit; its backward is the method's:
  gradient  g ⊙ s                       (s = f'(x))
  guided    max(g, 0) ⊙ s               at ReLU-like units, g ⊙ s elsewhere
  deconvnet max(g, 0) ⊙ 1[x < max]      at ReLU-like units (the Clip's cap), g ⊙ s elsewhere
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

import onnx_saliency as osal
from onnx_saliency.runtime import make_session

from conftest import export_torchvision, rel_err

torch = pytest.importorskip("torch")
METHODS = ["gradient", "guided_backprop", "deconvnet"]
UNIT_OPS = ("Relu", "LeakyRelu", "PRelu", "Clip")


def _unit_inputs(ex: osal.Explainer) -> tuple[list, dict]:
    """The explainer graph's values at the input of every unit (in graph order), from the
    explainer's own forward pass, and its maps."""
    nodes = [n for n in ex.canonical.model.graph.node if n.op_type in UNIT_OPS]
    model = onnx.ModelProto()
    model.CopyFrom(ex.model)
    names = [n.input[0] for n in nodes]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in names)
    return nodes, model


class _Unit(torch.autograd.Function):
    """y = s·x + c; backward: (rectify ? max(g, 0) : g) · back."""

    @staticmethod
    def forward(ctx, x, s, c, back, rectify):
        ctx.save_for_backward(back)
        ctx.rectify = rectify
        return x * s + c

    @staticmethod
    def backward(ctx, g):
        (back,) = ctx.saved_tensors
        return (torch.relu(g) if ctx.rectify else g) * back, None, None, None, None


class _PinnedUnit(torch.nn.Module):
    """A unit module replaced by _Unit with ORT's decisions at its input `x_ort`."""

    def __init__(self, module, x_ort: np.ndarray, method: str):
        super().__init__()
        x = torch.from_numpy(x_ort)
        pos, relu_like = x > 0, True
        if isinstance(module, torch.nn.LeakyReLU):
            s, c, cap = torch.where(pos, 1.0, module.negative_slope), 0.0, torch.ones_like(x)
        elif isinstance(module, torch.nn.PReLU):
            slope = module.weight.detach().reshape(1, -1, 1, 1)
            s, c, cap = torch.where(pos, torch.ones_like(x), slope), 0.0, torch.ones_like(x)
        else:  # Hardtanh family: ReLU6 = Hardtanh(0, 6), ReLU = Hardtanh(0, inf)
            lo, hi = (0.0, float("inf")) if isinstance(module, torch.nn.ReLU) else \
                (module.min_val, module.max_val)
            below, above = x <= lo, x >= hi
            s = (~below & ~above).float()
            c = lo * below.float() + (hi * above.float() if hi != float("inf") else 0.0)
            cap = (~above).float()
            relu_like = lo == 0.0
        s = s.float()
        self.s, self.c = s, torch.as_tensor(c).float()
        rectify = relu_like and method != "gradient"
        self.back = cap if (relu_like and method == "deconvnet") else s
        self.rectify = rectify

    def forward(self, x):
        return _Unit.apply(x, self.s, self.c, self.back, self.rectify)


def _reference(net, units, x_ort_values, x, targets, method) -> np.ndarray:
    """max_c |∂ logit_t / ∂ x| of `net` with every unit pinned and rectified as `method`."""
    replaced = {}
    for (parent, attr), value in zip(units, x_ort_values):
        module = getattr(parent, attr)
        replaced[(parent, attr)] = module
        setattr(parent, attr, _PinnedUnit(module, value, method))
    try:
        xt = torch.from_numpy(x).requires_grad_(True)
        logits = net(xt)
        logits.gather(1, torch.as_tensor(targets)[:, None]).sum().backward()
        return xt.grad.abs().amax(1).numpy()
    finally:
        for (parent, attr), module in replaced.items():
            setattr(parent, attr, module)


def _unit_modules(net) -> list:
    """(parent, attribute) of every activation module, in forward order (the modules are used
    once each, in registration order, in both nets below)."""
    kinds = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.Hardtanh, torch.nn.LeakyReLU, torch.nn.PReLU)
    out = []
    for parent in net.modules():
        for attr, child in parent.named_children():
            if isinstance(child, kinds):
                out.append((parent, attr))
    return out


def _check_against_reference(onnx_path, net, x, targets, tol):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex = osal.Explainer(onnx_path, methods=METHODS, fused=False)
    nodes, model = _unit_inputs(ex)
    units = _unit_modules(net)
    assert len(units) == len(nodes), (len(units), [n.op_type for n in nodes])
    session = make_session(model)
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(None, {ex.canonical.input_name: x, "target": targets})))
    unit_values = [values[n.input[0]] for n in nodes]
    maps = {m: values[m] for m in METHODS}
    for method in METHODS:
        ref = _reference(net, units, unit_values, x, targets, method)
        assert rel_err(maps[method], ref) < tol, (method, rel_err(maps[method], ref))
    return maps


def test_guided_and_deconvnet_rectify_relu6_on_mobilenet_v2(tmp_path):
    path = tmp_path / "mobilenet_v2.onnx"
    net = export_torchvision("mobilenet_v2", path, 64)
    assert sum(n.op_type == "Clip" for n in onnx.load(str(path)).graph.node) == 35
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    maps = _check_against_reference(path, net, x, np.array([3, 7]), 1e-4)
    # the defect this guards against: guided backprop equal to the plain gradient on ReLU6 nets
    for method in ("guided_backprop", "deconvnet"):
        assert rel_err(maps[method], maps["gradient"]) > 0.1


class _EveryUnit(torch.nn.Module):
    """Conv stages with LeakyReLU, PReLU, ReLU6, Hardtanh(-1, 1) (not ReLU-like) and ReLU."""

    def __init__(self):
        super().__init__()
        acts = [torch.nn.LeakyReLU(0.1), torch.nn.PReLU(6), torch.nn.ReLU6(),
                torch.nn.Hardtanh(-1.0, 1.0), torch.nn.ReLU()]
        layers, cin = [], 3
        for act in acts:
            layers += [torch.nn.Conv2d(cin, 6, 3, padding=1), act]
            cin = 6
        self.features = torch.nn.Sequential(*layers)
        self.fc = torch.nn.Linear(6, 5)
        with torch.no_grad():
            self.features[3].weight.uniform_(0.05, 0.4)   # PReLU slopes, per channel
            for conv in self.features[::2]:
                conv.weight.mul_(3.0)                     # units on both sides of their kinks

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def test_every_relu_like_unit_against_pytorch(tmp_path):
    torch.manual_seed(0)
    net = _EveryUnit().eval()
    path = tmp_path / "units.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 12, 12),), str(path), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert {"LeakyRelu", "PRelu", "Relu"} <= set(ops) and ops.count("Clip") == 2
    x = np.random.default_rng(1).standard_normal((2, 3, 12, 12)).astype(np.float32)
    maps = _check_against_reference(path, net, x, np.array([0, 4]), 1e-5)
    assert rel_err(maps["guided_backprop"], maps["deconvnet"]) > 0.1


@pytest.mark.parametrize("model,warns", [("activations", False), ("softmax_inside", True)])
def test_a_method_with_nothing_to_rectify_warns(graphs, model, warns):
    """activations.onnx has ReLU-like units; softmax_inside.onnx has none (Softmax only)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        osal.Explainer(graphs.build(model), methods=["gradient", "guided_backprop", "deconvnet"])
    messages = [str(w.message) for w in caught if "nothing is rectified" in str(w.message)]
    assert len(messages) == (2 if warns else 0)
    if warns:
        assert messages[0].startswith("guided_backprop:") and messages[1].startswith("deconvnet:")


def test_relu6_with_one_element_bounds_is_relu_like():
    """Clip(0, 6) whose min and max are [1]-shaped tensors (ONNX Runtime accepts them) is
    rectified like a scalar-bounded one."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c", "lo", "hi"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1)]
    x = np.random.default_rng(5).standard_normal((2, 3, 6, 6)).astype(np.float32)
    maps = {}
    for shape in ([], [1]):
        bounds = [numpy_helper.from_array(np.full(shape, v, np.float32), n)
                  for n, v in (("lo", 0.0), ("hi", 6.0))]
        graph = helper.make_graph(nodes, "clip1", [helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, ["N", 3, 6, 6])], [helper.make_tensor_value_info(
                "logits", TensorProto.FLOAT, ["N", 5])], inits + bounds)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        maps[len(shape)] = osal.Explainer(model, methods=METHODS, fused=False).explain(x, [1, 2])
    for method in METHODS:
        np.testing.assert_array_equal(maps[1][method], maps[0][method])
    assert rel_err(maps[1]["guided_backprop"], maps[1]["gradient"]) > 0.1


@pytest.mark.parametrize("lo, hi", [(0.0, 6.0), (-1.0, 1.0), (0.5, 3.0), (None, 2.0), (-3.0, None),
                                    (-1e-3, 1e30), (0.0, None), (-7.0, -2.0), (0.0, 1e-20)])
def test_clip_gradient_is_exactly_the_inside_indicator(tmp_path, lo, hi):
    """Clip's backward g·1[min < x < max], read off its output with exact float unit steps
    (activations.side_step: HardSigmoid with power-of-two gains), against NumPy's indicator
    on normal float32 inputs at, next to and far from each bound (and the Where form's fallback
    where no exact gain exists: the tiny and huge bounds). Any mismatch is a wrong mask, not
    rounding. (A subnormal activation, below 2^-126, can get a fractional step where the
    runtime does not flush it: as the ReLU mask, unit_step.)"""
    from onnx import TensorProto, helper, numpy_helper
    bounds = [b for b in (lo, hi) if b is not None]
    tiny = np.finfo(np.float32).tiny                      # the smallest normal float32
    special = [0.0, tiny, -tiny, 2 * tiny, -1e-30, 1e-30, 3.0, 6.0, 1e30, -1e30]
    for b in bounds:
        b32 = np.float32(b)
        special += [b32, b32 * 2, b32 / 2] + [v for v in (np.nextafter(b32, np.float32(np.inf)),
                                                          np.nextafter(b32, np.float32(-np.inf)))
                                              if v == 0 or abs(v) >= tiny]   # normal floats only
    rng = np.random.default_rng(0)
    x = np.concatenate([np.float32(special), rng.standard_normal(64 - len(special)).astype(np.float32) * 4])
    x = x.reshape(1, 1, 8, 8).astype(np.float32)
    inputs = ["x", "lo" if lo is not None else "", "hi" if hi is not None else ""]
    inits = [numpy_helper.from_array(np.float32(v), n) for n, v in (("lo", lo), ("hi", hi)) if v is not None]
    node = helper.make_node("Clip", inputs, ["y"])
    graph = helper.make_graph([node], "clip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 8, 8])], inits)
    path = tmp_path / "clip.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    g = osal.gradient(path, x, target=osal.targets.Cotangent(np.ones((1, 8, 8), np.float32)))
    inside = np.ones_like(x, bool)
    if lo is not None:
        inside &= x > np.float32(lo)
    if hi is not None:
        inside &= x < np.float32(hi)
    np.testing.assert_array_equal(g, inside.astype(np.float32))


def test_silu_is_one_rule_in_the_blocked_layout_ops(tmp_path):
    """x·Sigmoid(x) (SiLU as exporters write it) gets one rule, dx = g·(s + y(1 − s)) with
    Mul/Add/HardSigmoid only (no Sub, no gradient into the Sigmoid), equal to the analytic
    derivative s(1 + x(1 − s)) in float64 (≤ 1e-6 relative); where the Sigmoid's output is read
    elsewhere too, the two-node rules give the same gradient."""
    from onnx import TensorProto, helper
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 3, 8, 8)) * 4).astype(np.float32)
    s64 = 1 / (1 + np.exp(-x.astype(np.float64)))
    want = s64 * (1 + x * (1 - s64))
    for shared in (False, True):
        nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])]
        outputs = ["y"]
        if shared:   # the Sigmoid also read by another node: no fusion
            nodes += [helper.make_node("Add", ["y", "s"], ["z"])]
            outputs = ["z"]
        graph = helper.make_graph(nodes, "silu", [helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, ["N", 3, 8, 8])], [helper.make_tensor_value_info(
                outputs[0], TensorProto.FLOAT, ["N", 3, 8, 8])])
        path = tmp_path / f"silu_{shared}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        g = osal.gradient(path, x, target=osal.targets.Cotangent(np.ones((3, 8, 8), np.float32)))
        expected = want + (s64 * (1 - s64) if shared else 0)
        assert rel_err(g, expected) < 1e-6
        ops = [n.op_type for n in osal.backward_graph(path, ["x"]).graph.node]
        assert ("HardSigmoid" in ops) != shared


def test_hard_swish_gradient_is_exact_at_and_beside_its_corners(tmp_path):
    """HardSwish's backward (1×1 depthwise Convs with fused Clips, activations.hard_swish) against
    PyTorch's formula in NumPy: 0 for x < −3, x/3 + 1/2 for −3 ≤ x ≤ 3, 1 for x > 3, on float32
    inputs at, next to and far from ±3 (the steps exact: any mismatch there is a wrong step) and
    random ones (the middle within 1 ulp of float32 rounding: 1e-6 absolute); the same values
    through the Where form after a Reshape to [N, 64] (no channels)."""
    from onnx import TensorProto, helper
    special = [-3.0, 3.0, 0.0, -1.5, 1.5, 1e30, -1e30, 1e20, -1e20, 2.9, -2.9, 3.1, -3.1]
    for b in (-3.0, 3.0):
        b32 = np.float32(b)
        special += [np.nextafter(b32, np.float32(np.inf)), np.nextafter(b32, np.float32(-np.inf))]
    rng = np.random.default_rng(0)
    x = np.concatenate([np.float32(special), rng.standard_normal(64 - len(special)).astype(np.float32) * 4])
    x64 = x.astype(np.float64)
    want = np.where(x64 < -3, 0.0, np.where(x64 > 3, 1.0, x64 / 3 + 0.5))
    for flat in (False, True):
        nodes = [helper.make_node("HardSwish", ["r" if flat else "x"], ["y"])]
        inits = []
        if flat:
            nodes.insert(0, helper.make_node("Reshape", ["x", "shape"], ["r"]))
            inits = [onnx.numpy_helper.from_array(np.array([-1, 64], np.int64), "shape")]
        out = [None, 64] if flat else ["N", 1, 8, 8]
        graph = helper.make_graph(nodes, "hs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], inits)
        path = tmp_path / f"hs{flat}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        g = osal.gradient(path, x.reshape(1, 1, 8, 8),
                          target=osal.targets.Cotangent(np.ones(out[1:], np.float32)))
        np.testing.assert_allclose(g.reshape(-1), want, rtol=0, atol=1e-6)
        steps = (np.abs(np.abs(x64) - 3) > 0) & (np.abs(np.abs(x64) - 3) < 1e-5)
        np.testing.assert_array_equal(g.reshape(-1)[steps & (np.abs(x64) > 3)],
                                      want[steps & (np.abs(x64) > 3)])
        ops = [n.op_type for n in osal.backward_graph(path, ["x"]).graph.node]
        assert ("Greater" in ops) == flat, ops   # the Where form compares
