"""A real deployed model no one here wrote: PaddleOCR's text-direction classifier (MobileNetV3,
opset 11, weights as Constant nodes, HardSigmoid squeeze-excitation, dynamic input shape), as
shipped in rapidocr-onnxruntime==1.4.4. Checked against central finite differences of the
model's own ONNX Runtime forward pass (float32, h = 1e-2 on unit directions; tolerance 2% of
|∇f|·|v|, the float32 noise floor of a 40-layer network).

Not pinned, and no near-tie can break it: both sides are ORT, and the FD step (1e-2) straddles
many kinks by design, which the 2% allows for; a ReLU/HardSwish/HardSigmoid decided the other
way at a near-tie changes the analytic gradient in one unit's receptive field only, which
projected on a random unit direction v is far under 2% of |∇f|."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

import onnx_saliency as osal
from conftest import rapidocr_classifier


def test_text_direction_classifier_gradient_matches_finite_differences():
    path = rapidocr_classifier()
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 3, 48, 192)).astype(np.float32)
    targets = np.array([0, 1])
    with np.errstate(all="ignore"):
        ex = osal.Explainer(path, methods=["gradient_sum", "gradcam"])
    graph = osal.backward_graph(path, ["x"])
    grad = ort.InferenceSession(graph.SerializeToString()).run(
        None, {"x": x, "target": targets})[0].astype(np.float64)
    assert grad.shape == x.shape

    fwd = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits_node = ex.canonical.output_name
    assert logits_node != ex.canonical.original_output  # the trailing Softmax was bypassed
    # the logits are the Softmax input: evaluate them through the explainer's forward part
    def f(z):
        return ex.run(z.astype(np.float32), targets)["logits"][[0, 1], targets].astype(np.float64).sum()

    checked = 0
    for _ in range(4):
        v = rng.standard_normal(x.shape)
        v /= np.linalg.norm(v)
        h = 1e-2
        fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
        analytic = float((grad * v).sum())
        assert abs(fd - analytic) <= 0.02 * np.linalg.norm(grad), (fd, analytic)
        checked += 1
    assert checked == 4
    # the explainer's logits equal the shipped model's pre-softmax scores (softmax of them = probs)
    probs = fwd.run(None, {"x": x})[0]
    logits = ex.run(x, targets)["logits"]
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(1, keepdims=True), probs, rtol=1e-4, atol=1e-6)
    maps = ex.explain(x, target=targets)
    assert maps["gradient_sum"].shape == (2, 48, 192)
    assert any(k.startswith("gradcam@") for k in maps)
