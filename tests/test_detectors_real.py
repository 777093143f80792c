"""Targets on real models (issue #18): NudeNet's trained YOLOv8n (PyPI nudenet 3.4.2, yolov8
layout, symbolic image size) on a real photo, against central finite differences through ONNX
Runtime on the shipped file; a YOLOv5n export (PyPI yolov5 7.0.14, random weights, yolov5
layout) against PyTorch autograd pinned to ONNX Runtime's max-pool decisions and against finite
differences; RapidOCR's trained PP-OCRv4 text detector (a dense one-channel output) with Region
targets against autograd of its onnx2torch conversion. Fixtures: tests/detectors.py."""

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


def _ppocr_detector():
    import importlib.util
    from pathlib import Path
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    assert spec is not None and spec.submodule_search_locations, "rapidocr-onnxruntime missing"
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "ch_PP-OCRv4_det_infer.onnx"
    assert path.is_file(), path
    return path


def _as_torch(model):
    """The ONNX model as a PyTorch module (onnx2torch), its Constant nodes made initializers
    first (onnx2torch reads weights from initializers)."""
    import onnx
    from onnx2torch import convert
    model = onnx.ModelProto.FromString(model.SerializeToString())
    kept = []
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return convert(model).eval()


def test_text_detector_region_matches_autograd():
    """A real trained dense model: RapidOCR's PP-OCRv4 text detector (DBNet: one Sigmoid
    channel, symbolic image size, fixed with input_size) on a real photo of a sign, against
    PyTorch autograd of the same file converted by onnx2torch (an independent implementation
    of every op), its ReLU decisions pinned to ONNX Runtime's (its Clips are called in another
    order than the graph's and stay unpinned: measured 1.3e-5, tolerance 1e-4).
    - Region(0) on the pre-sigmoid logit map (`output=` names that intermediate tensor): Σ of
      the logits over the pixels it predicts as text (logit > 0) and over a given mask.
    - Region(0) on the probability output (p > 0.5: the same pixels): Σ of p there.
    Central differences through ORT are no reference here: the score sums thousands of float32
    logits near 30 (differences measured 1-7% apart from either gradient at any ε).
    The default layer is the FPN's concatenation feeding the DB head."""
    import onnx
    import torch
    from PIL import Image
    from skimage import data
    path = _ppocr_detector()
    # RapidOCR's preprocessing: the short side resized to 736 (scikit-image's photo of a sign,
    # 172 x 448 -> 736 x 1920), BGR, (pixel / 255 - 0.5) / 0.5; a 320 x 480 crop of its text
    sign = np.stack([data.text()] * 3, -1)
    big = np.asarray(Image.fromarray(sign).resize((1920, 736), Image.BILINEAR), np.float32)
    h, w = 320, 480
    crop = big[108:108 + h, 36:36 + w, ::-1]
    x = ((crop / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None].astype(np.float32)
    logit = "p2o.Add.281"                       # the head's map before its Sigmoid
    model = onnx.load(str(path))
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(logit))
    net = _as_torch(model)
    given = np.zeros((h, w), bool)
    given[60:140, 100:300] = True
    for output, target in ((logit, T.Region(0)), (logit, T.Region(0, given)),
                           (None, T.Region(0))):
        xt = torch.tensor(x, requires_grad=True)
        with pinned_decisions(model, net, x, kinds=("Relu",)) as pin:
            prob, z = net(xt)
        assert pin.calls["Relu"] == 12
        predicted = (z[0, 0] > 0).detach()
        assert 0.01 < float(predicted.float().mean()) < 0.6          # the sign's text is found
        mask = torch.from_numpy(given) if target.mask is not None else predicted
        (z if output else prob)[0, 0][mask].sum().backward()
        g = osal.gradient(path, x, target=target, input_size=(h, w), output=output)
        assert rel_err(g, xt.grad.numpy()) < 1e-4
    ex = osal.Explainer(path, methods=["gradient", "gradcam"], input_size=(h, w))
    assert ex.requests[1].tensor == "p2o.Concat.1"
    assert rel_err(ex.explain(x, T.Region(0))["gradient"], np.abs(g).max(1)) < 1e-6


def test_cli_explains_and_exports_the_symbolic_size_detector(tmp_path, capsys):
    """The CLI on NudeNet's file (symbolic H and W): `explain --size 320 320 --detection top`
    explains its face and draws the box; `export --size 320 320` writes a graph taking
    [N, 3, 320, 320] images."""
    import json

    import onnx
    from PIL import Image

    from onnx_saliency import cli
    path = detectors.nudenet_model_path()
    photo = tmp_path / "astronaut.png"
    Image.fromarray(detectors.astronaut()).save(photo)
    out = tmp_path / "out"
    assert cli.main(["explain", str(path), str(photo), "--size", "320", "320", "--mean", "0",
                     "--std", "1", "--resize", "pad", "--detection", "top", "--labels",
                     str(_labels(tmp_path)), "--out", str(out)]) == 0
    entry = json.loads((out / "maps.json").read_text())["maps"][0]
    assert entry["target"]["kind"] == "detection" and entry["label"].startswith("FACE")
    saved = tmp_path / "explainer.onnx"
    assert cli.main(["export", str(path), "-o", str(saved), "--size", "320", "320"]) == 0
    dims = onnx.load(str(saved)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 320, 320]


def _labels(folder):
    labels = folder / "nudenet_labels.txt"
    labels.write_text("\n".join(detectors.nudenet_classes()) + "\n")
    return labels
