"""Detection targets on real detectors (issue #18): NudeNet's trained YOLOv8n (PyPI nudenet
3.4.2, yolov8 layout, symbolic image size) on a real photo, against central finite differences
through ONNX Runtime on the shipped file; a YOLOv5n export (PyPI yolov5 7.0.14, random weights,
yolov5 layout) against PyTorch autograd pinned to ONNX Runtime's max-pool decisions and against
finite differences. Fixtures: tests/detectors.py."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import onnx_saliency as osal
from onnx_saliency import targets as T

import detectors
from conftest import pinned_decisions, rel_err


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _directional_check(score, x, grad, region, rng, eps: float, tol: float) -> list[float]:
    """Central differences (s(x + εv) − s(x − εv)) / 2ε against ⟨∇s, v⟩ for random directions
    v: three inside `region` (y0, y1, x0, x1: where the explained candidate looks) and one over
    the whole image. Returns the relative errors; each must be ≤ tol."""
    errors = []
    y0, y1, x0, x1 = region
    for i in range(4):
        v = np.zeros_like(x)
        if i < 3:
            v[..., y0:y1, x0:x1] = rng.standard_normal(v[..., y0:y1, x0:x1].shape)
        else:
            v = rng.standard_normal(x.shape).astype(np.float32)
        fd = (score(x + eps * v) - score(x - eps * v)) / (2 * eps)
        exact = float((grad.astype(np.float64) * v).sum())
        errors.append(abs(fd - exact) / abs(exact))
    assert max(errors) <= tol, errors
    return errors


@pytest.fixture(scope="module")
def nudenet():
    path = detectors.nudenet_model_path()
    x, frame = detectors.nudenet_preprocess(detectors.astronaut())
    ex = osal.Explainer(path, methods=["gradient", "gradcam", "tsgb"],
                        input_size=(detectors.NUDENET_SIZE, detectors.NUDENET_SIZE))
    logits = ex.run(x, T.Detection())["logits"]
    face = T.candidates(logits)[0][0]
    return path, x, ex, face


def test_nudenet_finds_the_face_and_its_gradient_matches_finite_differences(nudenet):
    """The top detection on the astronaut is FACE_FEMALE; the input gradient of its score (the
    Detection target by anchor, and the same candidate found from its box) matches central
    differences through ONNX Runtime on the shipped model: ε = 3e-4 on [0, 1] pixels, relative
    error ≤ 1e-2 per direction (measured ≤ 1.3e-3 over six seeds; the error grows with ε, 4e-2
    at ε = 3e-3, from the network's curvature)."""
    path, x, ex, face = nudenet
    classes = detectors.nudenet_classes()
    assert classes[face.class_] == "FACE_FEMALE" and face.score > 0.5
    session = _session(path)
    row = 4 + face.class_

    def score(image):
        return float(session.run(None, {"images": image.astype(np.float32)})[0][0, row, face.anchor])

    g = osal.gradient(path, x, target=face.target(), input_size=(320, 320))
    x1, y1, x2, y2 = (int(round(v)) for v in face.box)
    errors = _directional_check(score, x, g, (y1, y2, x1, x2), np.random.default_rng(0),
                                3e-4, 1e-2)
    print("nudenet directional relative errors", errors)
    # the box finds the same candidate; its gradient is IoU · the anchor's (IoU = 1 here)
    by_box = T.Detection(box=face.box)
    assert by_box.chosen(ex.run(x, by_box)["logits"])[0].anchor == face.anchor
    g_box = osal.gradient(path, x, target=by_box, input_size=(320, 320))
    assert rel_err(g_box, g) < 1e-5
    maps = ex.explain(x, face.target())
    assert rel_err(maps["gradient"], np.abs(g).max(1)) < 1e-6


def test_nudenet_gradcam_reads_the_neck_output_at_the_faces_stride(nudenet):
    """YOLOv8's Detect reads the neck outputs model.15, model.18, model.21 (strides 8, 16, 32);
    the default Grad-CAM of the face candidate equals Grad-CAM at its level's tensor, and its
    peak lies inside the face box."""
    path, x, ex, face = nudenet
    levels = ex._levels
    names = [ex.layer_names.friendly(lv.tensor) for lv in levels]
    assert names == ["model.15", "model.18", "model.21"]
    assert [lv.grid for lv in levels] == [(40, 40), (20, 20), (10, 10)]
    level = next(i for i, lv in enumerate(levels) if lv.start <= face.anchor < lv.stop)
    at_level = osal.Explainer(path, methods=["gradcam"], layers=[names[level]],
                              input_size=(320, 320)).explain(x, face.target())
    got = ex.explain(x, face.target())["gradcam@neck"]
    want = at_level[f"gradcam@{names[level]}"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    peak_y, peak_x = np.unravel_index(np.argmax(got[0]), got[0].shape)
    x1, y1, x2, y2 = face.box
    assert x1 <= peak_x <= x2 and y1 <= peak_y <= y2


@pytest.fixture(scope="module")
def yolov5(tmp_path_factory):
    path = tmp_path_factory.mktemp("yolov5") / "yolov5n.onnx"
    net = detectors.yolov5_export(path, size=160)
    from PIL import Image
    rgb = np.asarray(Image.fromarray(detectors.astronaut()).resize((160, 160), Image.BILINEAR))
    x = (rgb.transpose(2, 0, 1)[None] / 255.0).astype(np.float32)
    return path, net, x


def test_yolov5_detection_matches_pinned_autograd_and_finite_differences(yolov5):
    """The yolov5-layout score obj·p of the top candidate and of a chosen anchor/class: the input
    gradient against PyTorch autograd of the same score, pinned to ONNX Runtime's SPPF max-pool
    argmaxes (≤ 1e-4 relative: float32, two engines), and against central differences through
    ONNX Runtime (ε = 3e-4, ≤ 1e-2 relative per direction)."""
    import torch
    path, net, x = yolov5
    ex = osal.Explainer(path, methods=["gradient"])
    logits = ex.run(x, T.Detection())["logits"]
    top = T.Detection().chosen(logits)[0]
    other = T.candidates(logits, score_threshold=0.0, max_candidates=50)[0][-1]
    session = _session(path)
    for target in (T.Detection(), T.Detection(anchor=other.anchor, class_=other.class_)):
        c = target.chosen(logits)[0]
        g = osal.gradient(path, x, target=target)
        xt = torch.tensor(x, requires_grad=True)
        with pinned_decisions(path, net, x):
            y = net(xt)[0]
        (y[0, c.anchor, 4] * y[0, c.anchor, 5 + c.class_]).backward()
        assert rel_err(g, xt.grad.numpy()) < 1e-4

        def score(image, c=c):
            out = session.run(None, {"images": image.astype(np.float32)})[0]
            return float(out[0, c.anchor, 4]) * float(out[0, c.anchor, 5 + c.class_])

        x1, y1, x2, y2 = (int(np.clip(round(v), 0, 160)) for v in c.box)
        region = (y1, max(y2, y1 + 8), x1, max(x2, x1 + 8))
        _directional_check(score, x, g, region, np.random.default_rng(1), 3e-4, 1e-2)
    assert top.anchor == T.candidates(logits, score_threshold=0.0)[0][0].anchor
