"""The detector fixtures of tests/detectors.py: NudeNet's trained YOLOv8n (yolov8 layout) finds
the astronaut's face, `nudenet_preprocess` reproduces NudeNet's OpenCV preprocessing, and the
YOLOv5n export (yolov5 layout) computes what its torch module computes."""

import ast

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import detectors


def _session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def _detections(boxes_xyxy, scores, classes, threshold=0.25, iou=0.45):
    """Greedy per-class NMS over candidates above `threshold`, best first: (anchor, class,
    score, box)."""
    kept = []
    for a in np.argsort(-scores):
        if scores[a] < threshold:
            break
        if all(k[1] != classes[a] or _iou(k[3], boxes_xyxy[a]) <= iou for k in kept):
            kept.append((int(a), int(classes[a]), float(scores[a]), boxes_xyxy[a]))
    return kept


def test_nudenet_model_and_classes(tmp_path):
    """The shipped 320n.onnx: input `images` [N, 3, H, W], output [N, 4 + 18, A] with
    A = 2100 at 320 x 320 (40² + 20² + 10² grid cells), and its static-H, W copy computes
    the same (bitwise: same graph, same kernels); the class list read from nudenet's source
    equals the one Ultralytics wrote into the model's metadata."""
    path = detectors.nudenet_model_path()
    model = onnx.load(str(path), load_external_data=False)
    names = ast.literal_eval({p.key: p.value for p in model.metadata_props}["names"])
    classes = detectors.nudenet_classes()
    assert len(classes) == 18 and classes == [names[i] for i in range(len(names))]
    session = _session(path)
    assert [i.name for i in session.get_inputs()] == ["images"]
    x = np.zeros((2, 3, 320, 320), np.float32)
    x[1] = detectors.nudenet_preprocess(detectors.astronaut())[0][0]
    y = session.run(None, {"images": x})[0]
    assert y.shape == (2, 4 + 18, 2100)
    static = _session(detectors.nudenet_static_model(tmp_path / "320n_static.onnx"))
    assert [d for d in static.get_inputs()[0].shape[1:]] == [3, 320, 320]
    np.testing.assert_array_equal(static.run(None, {"images": x})[0], y)


@pytest.mark.parametrize("crop", [(slice(None), slice(None)), (slice(40, 400), slice(0, 470)),
                                  (slice(0, 200), slice(100, 230))])
def test_nudenet_preprocess_matches_nudenet(crop):
    """`nudenet_preprocess` against NudeNet's own `_read_image` (cv2) on what cv2.imread would
    give for the image (BGR): the padding and scale agree exactly and the blobs agree to one
    uint8 level (1/255: cv2's fixed-point resize may round differently on other SIMD paths;
    measured 0 on the dev machine, square, wide and tall images, down- and upscaled)."""
    pytest.importorskip("cv2")
    nudenet = pytest.importorskip("nudenet.nudenet")
    rgb = np.ascontiguousarray(detectors.astronaut()[crop])
    x, frame = detectors.nudenet_preprocess(rgb)
    blob, _, _, x_pad, y_pad, width, height = nudenet._read_image(
        np.ascontiguousarray(rgb[..., ::-1]), 320)
    assert (frame.pad_x, frame.pad_y, frame.width, frame.height) == (x_pad, y_pad, width, height)
    assert frame.scale == max(width, height) / 320
    assert x.shape == blob.shape == (1, 3, 320, 320) and x.dtype == blob.dtype
    assert np.abs(x - blob).max() <= 1 / 255 + 1e-6
    rgb_x, _ = detectors.nudenet_preprocess(rgb, channels="rgb")
    np.testing.assert_array_equal(rgb_x, x[:, ::-1])


def test_nudenet_finds_the_face():
    """On the astronaut photo NudeNet's detector (NudeNet's own channel order, BGR) gives a
    confident FACE_FEMALE (score > 0.5; 0.72 measured) whose box, mapped back to the image,
    overlaps the face scikit-image's LBP cascade finds (an independent detector) with
    IoU > 0.5 (0.67 measured)."""
    from skimage import data, feature

    image = detectors.astronaut()
    x, frame = detectors.nudenet_preprocess(image)
    out = _session(detectors.nudenet_model_path()).run(None, {"images": x})[0][0]
    cx, cy, w, h = out[:4]
    boxes = frame.to_image(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1))
    scores, classes = out[4:].max(0), out[4:].argmax(0)
    names = detectors.nudenet_classes()
    found = _detections(boxes, scores, classes)
    for anchor, k, score, box in found[:5]:
        print(f"anchor {anchor} {names[k]} {score:.4f} box (image px) {np.round(box, 1)}")
    assert found and names[found[0][1]] == "FACE_FEMALE" and found[0][2] > 0.5

    cascade = feature.Cascade(data.lbp_frontal_face_cascade_filename())
    faces = cascade.detect_multi_scale(img=image, scale_factor=1.2, step_ratio=1,
                                       min_size=(60, 60), max_size=(300, 300))
    assert len(faces) == 1
    f = faces[0]
    reference = (f["c"], f["r"], f["c"] + f["width"], f["r"] + f["height"])
    print("scikit-image LBP cascade face (image px):", reference)
    assert _iou(found[0][3], reference) > 0.5


def test_yolov5_export_matches_torch(tmp_path):
    """The YOLOv5n export (random weights, seed 0) at 160 x 160: output `output0` [1, 1575, 85]
    in the yolov5 layout (boxes in input pixels, objectness and class probabilities in (0, 1));
    ONNX Runtime agrees with the torch module elementwise within rtol 1e-3 + atol 1e-5
    (float32 through ~60 convs with different summation orders: measured max relative error
    ~1e-4 on the box columns, whose values reach ~1000, max absolute 4e-3). The output depends
    on the image (not the bias-dominated network the package's initialisation gives) and the
    top candidate is clear of the runner-up, so targets built on it are not ties."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "yolov5n.onnx"
    module = detectors.yolov5_export(path, size=160, seed=0)
    session = _session(path)
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["output0"]
    x, _ = detectors.nudenet_preprocess(detectors.astronaut(), size=160, channels="rgb")
    y = session.run(None, {"images": x})[0]
    assert y.shape == (1, 3 * (20 * 20 + 10 * 10 + 5 * 5), 85)
    with torch.no_grad():
        (reference,) = module(torch.from_numpy(x))
        (black,) = module(torch.zeros_like(torch.from_numpy(x)))
    reference, black = reference.numpy(), black.numpy()
    np.testing.assert_allclose(y, reference, rtol=1e-3, atol=1e-5)
    err = np.abs(y - reference)
    print(f"yolov5 ORT vs torch: max abs {err.max():.2e}, "
          f"max rel {(err / np.maximum(np.abs(reference), 1e-3)).max():.2e}")
    assert ((y[..., 4:] > 0) & (y[..., 4:] < 1)).all() and (y[..., 2:4] > 0).all()
    assert np.abs(y - black).mean() > 0.1 * np.abs(y).mean()
    score = (y[0, :, 4:5] * y[0, :, 5:]).max(1)
    top = np.sort(score)[::-1]
    print("yolov5 top scores:", top[:3], "anchor", int(score.argmax()))
    assert top[0] - top[1] > 0.01
