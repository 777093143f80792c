"""ONNX Runtime's fused com.microsoft ops, rewritten by the canonical pass
`contrib_ops.standard_contrib_ops` into standard ONNX.

Two models:
- a small PyTorch CNN + token MLP, optimized by ONNX Runtime itself the way users save
  optimized models (SessionOptions.optimized_model_filepath at ORT_ENABLE_EXTENDED, CPU): it
  holds FusedConv with each activation (Relu, Sigmoid, Tanh, LeakyRelu, Clip, HardSigmoid),
  FusedMatMul (transA, alpha), BiasGelu and QuickGelu;
- ops the CPU optimizer does not write there (Gelu, FastGelu with bias, SkipLayerNormalization
  with bias and its extra outputs, FusedGemm, FusedMatMul with transB), built with
  onnx.helper, at opsets 16 (LayerNormalization written out), 17 and 20 (ONNX's Gelu).
  (BiasAdd has no CPU kernel in ONNX Runtime: its rewrite, X + bias + skip, is not run here.)

Checks: the canonical model has no com.microsoft node left and its logits equal those of the
optimized model in ONNX Runtime within 1e-5 (float32 rounding: the rewrite computes the same
sums in another order); the gradient of Σ_n logit[n, t_n] with respect to the image matches an
independent reference: PyTorch autograd in float64 for the first model (every ReLU/LeakyReLU/
Clip/HardSigmoid input is asserted ≥ 1e-3 from its kink, against ~1e-6 of float32 rounding:
both sides take the same branch), within 1e-4 relative to |∇| (float32); central finite
differences through ONNX Runtime's own fused kernels for the second (smooth: step 1e-2 in
float32, truncation ~1e-5 and rounding ~1e-4, tolerance 2e-3 relative to |∇|·|v|).
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_saliency as osal
from onnx_saliency.canonical import canonicalize
from onnx_saliency.contrib_ops import DOMAIN
from onnx_saliency.errors import UnsupportedOpError

torch = pytest.importorskip("torch")


def _run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


def _grad(model, x, targets):
    graph = osal.backward_graph(model, ["x"])
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x.astype(np.float32), "target": targets})[0].astype(np.float64)


def _check_rewrite(model, x):
    canon = canonicalize(model).model
    left = sorted({n.op_type for n in canon.graph.node if n.domain == DOMAIN})
    assert not left, left
    np.testing.assert_allclose(_run(canon, x), _run(model, x), rtol=1e-5, atol=1e-5)


class _Net(torch.nn.Module):
    """Conv+activation pairs ORT fuses into FusedConv, then tokens through a Linear + GELU
    (BiasGelu), a LayerNorm and a x·sigmoid(1.702x) (QuickGelu). `kinks` records every kinked
    activation's input with its kinks."""

    def __init__(self):
        super().__init__()
        conv = torch.nn.Conv2d
        self.convs = torch.nn.ModuleList([conv(3, 4, 3, padding=1), conv(4, 4, 1), conv(4, 4, 1),
                                          conv(4, 4, 1), conv(4, 4, 1), conv(4, 8, 1)])
        self.fc1, self.fc2 = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
        self.ln = torch.nn.LayerNorm(8)
        self.head = torch.nn.Linear(8 * 16, 5)
        self.kinks = []

    def forward(self, x):
        acts = [(torch.relu, [0.0]), (torch.sigmoid, []), (torch.tanh, []),
                (lambda z: torch.nn.functional.leaky_relu(z, 0.1), [0.0]),
                (lambda z: torch.clamp(z, -1, 1), [-1.0, 1.0]),
                (torch.nn.functional.hardsigmoid, [-3.0, 3.0])]
        self.kinks = []
        for conv, (act, kinks) in zip(self.convs, acts):
            z = conv(x)
            self.kinks.append((z.detach(), kinks))
            x = act(z)
        t = x.flatten(2).transpose(1, 2)                                    # [N, 16, 8]
        t = self.ln(t + torch.nn.functional.gelu(self.fc1(t)))
        h = self.fc2(t)
        t = t + h * torch.sigmoid(1.702 * h)
        return self.head(t.flatten(1))


def test_ort_optimized_cnn_explains_like_the_model(tmp_path):
    torch.manual_seed(0)
    net = _Net().eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 4, 4),), str(tmp_path / "m.onnx"), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}})
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(tmp_path / "m.onnx"), opts, providers=["CPUExecutionProvider"])
    model = onnx.load(str(tmp_path / "opt.onnx"))
    fused = [(n.op_type, n.attribute) for n in model.graph.node if n.domain == DOMAIN]
    activations = {helper.get_attribute_value(a).decode() for op, attrs in fused
                   if op == "FusedConv" for a in attrs if a.name == "activation"}
    assert activations == {"Relu", "Sigmoid", "Tanh", "LeakyRelu", "Clip", "HardSigmoid"}
    assert {"FusedMatMul", "BiasGelu", "QuickGelu"} <= {op for op, _ in fused}
    _check_rewrite(model, x)

    targets = np.array([1, 3], np.int64)
    grad = _grad(model, x, targets)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    net = net.double()
    logits = net(xt)
    logits[[0, 1], targets].sum().backward()
    for z, kinks in net.kinks:   # no input near a kink: both sides take the same branch
        for k in kinks:
            assert (z - k).abs().min() > 1e-3
    ref = xt.grad.numpy()
    assert np.abs(ref).max() > 0
    np.testing.assert_allclose(grad, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def _helper_model(opset: int) -> onnx.ModelProto:
    """x [N,3,4,4] -> Conv -> tokens t [N,16,8] -> the fused ops -> logits [N,5]."""
    rng = np.random.default_rng(opset)

    def w(name, *shape, scale=0.5):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    ms = {"domain": DOMAIN}
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv"),
        helper.make_node("Reshape", ["c", "tok_shape"], ["ct"], name="tokens"),
        helper.make_node("Transpose", ["ct"], ["t"], perm=[0, 2, 1], name="to_tokens"),
        helper.make_node("Gelu", ["t"], ["a"], name="gelu", **ms),
        helper.make_node("FastGelu", ["t", "bias1"], ["b"], name="fast_gelu", **ms),
        helper.make_node("BiasGelu", ["t", "bias2"], ["c2"], name="bias_gelu", **ms),
        helper.make_node("QuickGelu", ["t"], ["d"], name="quick_gelu", alpha=1.5, **ms),
        helper.make_node("Sum", ["a", "bias3", "b"], ["e"], name="sum"),
        helper.make_node("SkipLayerNormalization", ["e", "c2", "gamma", "beta", "bias4"],
                         ["y", "mean", "inv_std", "s"], name="skip_ln", epsilon=1e-5, **ms),
        helper.make_node("Add", ["y", "s"], ["ys"], name="add_sum"),
        helper.make_node("FusedMatMul", ["ys", "m1"], ["p"], name="matmul_tb", transB=1,
                         alpha=0.5, **ms),
        helper.make_node("FusedMatMul", ["d", "m2"], ["q"], name="matmul_ta", transA=1, **ms),
        helper.make_node("Flatten", ["p"], ["pf"], name="flat_p"),
        helper.make_node("Flatten", ["q"], ["qf"], name="flat_q"),
        helper.make_node("Concat", ["pf", "qf"], ["pq"], name="concat", axis=1),
        helper.make_node("FusedGemm", ["pq", "g1", "gb1"], ["h"], name="fused_gemm", transB=1,
                         activation="Tanh", **ms),
        helper.make_node("Gemm", ["h", "g2", "gb2"], ["logits"], name="head", transB=1),
    ]
    inits = [w("cw", 8, 3, 1, 1), w("cb", 8),
             numpy_helper.from_array(np.asarray([0, 8, 16], np.int64), "tok_shape"),
             w("bias1", 8), w("bias2", 8), w("bias3", 8), w("bias4", 8),
             numpy_helper.from_array((1 + rng.standard_normal(8) * 0.2).astype(np.float32),
                                     "gamma"), w("beta", 8),
             w("m1", 6, 8), w("m2", 16, 3), w("g1", 12, 16 * 6 + 8 * 3, scale=0.2), w("gb1", 12),
             w("g2", 5, 12), w("gb2", 5)]
    graph = helper.make_graph(
        nodes, "fused", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid(DOMAIN, 1)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("opset", [16, 17, 20])
def test_helper_built_fused_ops_match_ort(opset):
    model = _helper_model(opset)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4, 4))
    _check_rewrite(model, x)
    targets = np.array([0, 4], np.int64)
    grad = _grad(model, x, targets)
    assert np.abs(grad).max() > 0
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def f(z):
        return float(sess.run(None, {"x": z.astype(np.float32)})[0][[0, 1], targets].astype(
            np.float64).sum())

    h = 1e-2
    for _ in range(4):
        v = rng.standard_normal(x.shape)
        fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
        analytic = float((grad * v).sum())
        assert abs(fd - analytic) <= 2e-3 * np.linalg.norm(grad) * np.linalg.norm(v), (fd, analytic)


def test_unrewritten_fused_op_is_named():
    """A fused op the pass cannot write in standard ops (FusedMatMul moving its batch axes,
    transBatchA) is refused in one sentence naming node, op, domain and opset."""
    model = _helper_model(17)
    node = next(n for n in model.graph.node if n.name == "matmul_ta")
    node.attribute.append(helper.make_attribute("transBatchA", 1))
    with pytest.raises(UnsupportedOpError, match=r"Node 'matmul_ta' \(op FusedMatMul, domain "
                       r"com.microsoft, opset 1\) uses transBatchA/transBatchB\."):
        canonicalize(model)
