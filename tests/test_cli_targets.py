"""`onnx-saliency explain`'s target forms (issue #18, item 3): --target class:K, --region (a
predicted or a given mask), --box / --anchor / --detection on a YOLO-layout detector,
--reference, --cotangent. Each form, run end to end through cli.main, gives the maps of the
Python API with the same target object (max |difference| <= 1e-6: the same graph on the same
input, so the same numbers up to ONNX Runtime's run-to-run determinism); the photo-pixel geometry
(boxes and masks fitted with --resize) is checked against positions worked out by hand for each
mode; maps.json's scores against NumPy on ONNX Runtime's forward output; the explained box drawn
on the overlay within ±1 px; every bad form is one line with exit status 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import onnx_saliency as osal
from onnx_saliency import cli, targets as T, viz

from conftest import tiny_cnn

MODEL = (32, 32)                     # the tiny models' input H, W
PHOTO = (48, 64)                     # the photos' h, w (not the model's aspect: the fit matters)
K_SEG, K_DET = 4, 3
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
TOL = 1e-6                            # CLI maps vs the API's: same graph, same input


def _model(path: Path, nodes, inits: dict, output: str, out_dims) -> Path:
    graph = helper.make_graph(
        nodes, path.stem, [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                         ["N", 3, *MODEL])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", *out_dims])],
        [numpy_helper.from_array(np.asarray(v, np.float32 if np.asarray(v).dtype.kind == "f"
                                            else np.int64), k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _weights(rng, *shape) -> np.ndarray:
    fan_in = int(np.prod(shape[1:]))
    return rng.standard_normal(shape) / math.sqrt(fan_in)


def segmenter(path: Path) -> Path:
    """Conv(3->8, 3x3) -> Relu -> Conv(8->K, 3x3, stride 2): dense logits [N, K, 16, 16], half
    the input's resolution (so a mask is resampled to the output's H×W)."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["out"], pads=[1, 1, 1, 1],
                              strides=[2, 2])]
    inits = {"w1": _weights(rng, 8, 3, 3, 3), "b1": rng.standard_normal(8) * 0.1,
             "w2": _weights(rng, K_SEG, 8, 3, 3), "b2": rng.standard_normal(K_SEG) * 0.1}
    return _model(path, nodes, inits, "out", [K_SEG, 16, 16])


def detector(path: Path, layout: str = "yolov8") -> Path:
    """A YOLO-style single-stage detector on an 8×8 grid (stride 4, A = 64 candidates):
    Conv(3->8, 3x3) -> Relu -> Conv(8->C, 4x4, stride 4) -> Reshape [N, C, 64]; boxes
    cx, cy = (sigmoid(t) + cell) * 4, w, h = exp(t) * 4; class scores (and, yolov5, objectness)
    sigmoid. yolov8: [N, 4+K, A]; yolov5: [N, A, 5+K] (a Transpose)."""
    rng = np.random.default_rng(4)
    c = 4 + (layout == "yolov5") + K_DET
    cells = np.arange(64)
    grid = np.stack([cells % 8, cells // 8]).astype(np.float32)[None]          # [1, 2, 64]
    final = "out" if layout == "yolov8" else "rows"
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], strides=[4, 4]),
             helper.make_node("Reshape", ["c2", "shape"], ["head"]),
             helper.make_node("Slice", ["head", "s0", "s2", "axis1"], ["txy"]),
             helper.make_node("Slice", ["head", "s2", "s4", "axis1"], ["twh"]),
             helper.make_node("Slice", ["head", "s4", "send", "axis1"], ["tcls"]),
             helper.make_node("Sigmoid", ["txy"], ["sxy"]),
             helper.make_node("Add", ["sxy", "grid"], ["gxy"]),
             helper.make_node("Mul", ["gxy", "stride"], ["xy"]),
             helper.make_node("Exp", ["twh"], ["ewh"]),
             helper.make_node("Mul", ["ewh", "stride"], ["wh"]),
             helper.make_node("Sigmoid", ["tcls"], ["cls"]),
             helper.make_node("Concat", ["xy", "wh", "cls"], [final], axis=1)]
    if layout == "yolov5":
        nodes.append(helper.make_node("Transpose", ["rows"], ["out"], perm=[0, 2, 1]))
    inits = {"w1": _weights(rng, 8, 3, 3, 3), "b1": rng.standard_normal(8) * 0.1,
             "w2": _weights(rng, c, 8, 4, 4), "b2": rng.standard_normal(c) * 0.1,
             "shape": np.array([0, c, 64], np.int64), "grid": grid,
             "stride": np.float32(4.0), "axis1": np.array([1], np.int64),
             "s0": np.array([0], np.int64), "s2": np.array([2], np.int64),
             "s4": np.array([4], np.int64), "send": np.array([c], np.int64)}
    return _model(path, nodes, inits, "out", [c, 64] if layout == "yolov8" else [64, c])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_targets")
    return {"seg": segmenter(folder / "seg.onnx"), "det": detector(folder / "det.onnx"),
            "det5": detector(folder / "det5.onnx", "yolov5"),
            "emb": tiny_cnn(folder / "emb.onnx", MODEL, classes=8, seed=5),
            "cls": tiny_cnn(folder / "cls.onnx", MODEL, classes=3, seed=6)}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(7)
    paths = [folder / "a.png", folder / "b.png"]
    for p in paths:   # smooth random photos (blurred noise), so the models see some structure
        small = rng.integers(0, 255, (PHOTO[0] // 8, PHOTO[1] // 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize(PHOTO[::-1], Image.BICUBIC).save(p)
    return paths


def model_input(photo: Path, mode: str) -> np.ndarray:
    """The photo as the CLI gives it to the model (ImageNet mean/std, the pad filled with the
    mean colour): [1, 3, 32, 32]."""
    fill = tuple(int(round(255 * v)) for v in MEAN)
    with Image.open(photo) as img:
        fitted, _ = viz.fit_image(img.convert("RGB"), MODEL, mode, fill)
    x = (np.asarray(fitted) / 255.0 - MEAN) / STD
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def forward(model: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]


def run_cli(capsys, *argv) -> tuple[int, str]:
    try:
        code = cli.main(list(map(str, argv)))
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def explain(capsys, model, photos, out, *flags, methods=("gradient",)) -> list[dict]:
    argv = ["explain", model, *photos, "--out", out, *flags]
    for m in methods:
        argv += ["--method", m]
    code, err = run_cli(capsys, *argv)
    assert code == 0 and err == "", err
    return json.loads((Path(out) / "maps.json").read_text())["maps"]


def assert_same_maps(entries, out: Path, model, photos, mode, target, methods=("gradient",)):
    """Each image's CLI maps (.npy) against Explainer.run on the same input with `target`, a
    target object or a function of the image's index giving one."""
    ex = osal.Explainer(str(model), methods=list(methods))
    for i, photo in enumerate(photos):
        t = target(i) if callable(target) else target
        api = ex.run(model_input(photo, mode), t)
        mine = [e for e in entries if Path(e["image"]).name == photo.name]
        assert sorted(e["map"] for e in mine) == sorted(ex.map_names)
        for e in mine:
            got = np.load(out / e["npy"])
            assert np.abs(api[e["map"]][0]).max() > 0, e["map"]       # not a trivial zero map
            assert np.abs(got - api[e["map"]][0]).max() <= TOL, e["map"]


# -- classes ----------------------------------------------------------------------------------

def test_class_forms_are_todays_target(models, photos, tmp_path, capsys):
    """--target class:1, class:LABEL and LABEL are --target 1: the same maps (Class(1) through
    the API), entries and captions as before; top1 is each image's argmax."""
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    runs = {}
    for form in ["1", "class:1", "class:dog", "dog"]:
        out = tmp_path / form.replace(":", "_")
        runs[form] = explain(capsys, models["cls"], photos, out, "--target", form,
                             "--labels", labels)
        assert all(e["target"] == 1 and e["label"] == "dog" for e in runs[form])
        assert_same_maps(runs[form], out, models["cls"], photos, "crop", T.Class(1))
    strip = lambda entries: [{k: v for k, v in e.items() if k != "image"} for e in entries]
    assert all(strip(runs[f]) == strip(runs["1"]) for f in runs)
    top = explain(capsys, models["cls"], photos, tmp_path / "top1")
    for e in top:
        logits = forward(models["cls"], model_input(Path(e["image"]), "crop"))[0]
        assert e["target"] == int(logits.argmax())


def assert_overlay(out: Path, entry: dict, caption: str, mode: str, box=None) -> None:
    """The overlay PNG is viz.overlay of its map on the photo (fit, colour bar, `caption`, the
    CLI's enlargement), with `box` (photo pixels) drawn by viz.draw_box on the picture."""
    with Image.open(entry["image"]) as img:
        photo = img.convert("RGB")
        fit = viz.fit_image(photo, MODEL, mode)[1]
    expected = np.array(viz.overlay(np.asarray(photo), np.load(out / entry["npy"]),
                                    colorbar=True, caption=caption, fit=fit,
                                    min_long_side=viz.MIN_LONG_SIDE))
    if box is not None:
        k = math.ceil(viz.MIN_LONG_SIDE / max(PHOTO))
        top, h, w = viz.CAPTION_H, PHOTO[0] * k, PHOTO[1] * k
        expected[top:top + h, :w] = viz.draw_box(expected[top:top + h, :w], [v * k for v in box])
    with Image.open(out / entry["png"]) as png:
        assert np.array_equal(np.asarray(png.convert("RGB")), expected)


# -- regions ----------------------------------------------------------------------------------

def test_region_of_the_predicted_pixels(models, photos, tmp_path, capsys):
    """--region class:K: Region(K) (the pixels predicted as K); maps.json's pixel count and
    score (Σ of class K's logits there) from ONNX Runtime's forward output."""
    outs = [forward(models["seg"], model_input(p, "crop"))[0] for p in photos]
    k = int(np.bincount(np.concatenate([o.argmax(0).ravel() for o in outs]),
                        minlength=K_SEG).argmax())        # the class with the most pixels
    out = tmp_path / "out"
    entries = explain(capsys, models["seg"], photos, out, "--region", f"class:{k}",
                      methods=("gradient", "input_x_gradient"))
    assert_same_maps(entries, out, models["seg"], photos, "crop", T.Region(k),
                     ("gradient", "input_x_gradient"))
    for e in entries:
        o = outs[[p.name for p in photos].index(Path(e["image"]).name)]
        predicted = o.argmax(0) == k
        assert e["target"] == {"kind": "region", "class": k, "mask": "predicted",
                               "pixels": int(predicted.sum())}
        assert e["target"]["pixels"] > 0
        assert abs(e["score"] - o[k][predicted].astype(np.float64).sum()) <= 1e-4 * (
            1 + abs(e["score"]))


def hand_fitted_mask(mask: np.ndarray, mode: str) -> np.ndarray:
    """The 48×64 photo mask at the 16×16 output of a 32×32 model, nearest at the output pixels'
    centres (u = 2j + 1 in model pixels), worked out by hand per mode:
    squash x = 2u, y = 1.5v; crop (photo region x 8..56, 48 px wide) x = 8 + 1.5u, y = 1.5v;
    pad (photo at 32×24, rows 4..28) x = 2u, y = 2(v − 4) for 4 <= v < 28, else padding."""
    u = 2 * np.arange(16) + 1.0
    if mode == "squash":
        return mask[np.ix_(np.floor(1.5 * u).astype(int), np.floor(2 * u).astype(int))]
    if mode == "crop":
        return mask[np.ix_(np.floor(1.5 * u).astype(int), np.floor(8 + 1.5 * u).astype(int))]
    out = np.zeros((16, 16), bool)
    rows = (u >= 4) & (u < 28)
    out[rows] = mask[np.ix_(np.floor(2 * (u[rows] - 4)).astype(int),
                            np.floor(2 * u).astype(int))]
    return out


@pytest.mark.parametrize("mode", viz.RESIZE_MODES)
def test_region_mask_is_fitted_like_the_photo(models, photos, tmp_path, capsys, mode):
    """--region 2 --region-mask PNG (in photo pixels, 48×64) under each --resize: the maps of
    Region(2, the mask placed by hand at the 16×16 output, hand_fitted_mask)."""
    rng = np.random.default_rng(11)
    blobs = Image.fromarray(rng.integers(0, 2, (6, 8), dtype=np.uint8) * 255)
    mask = np.asarray(blobs.resize(PHOTO[::-1], Image.BILINEAR)) > 127        # blobs, odd edges
    path = tmp_path / "mask.png"
    rgb = np.zeros((*PHOTO, 3), np.uint8)
    rgb[mask] = (0, 90, 0)                                                    # non-black: in
    Image.fromarray(rgb).save(path)
    expected = hand_fitted_mask(mask, mode)
    assert 0 < expected.sum() < expected.size
    out = tmp_path / "out"
    entries = explain(capsys, models["seg"], photos, out, "--region", "2", "--region-mask", path,
                      "--resize", mode)
    assert_same_maps(entries, out, models["seg"], photos, mode, T.Region(2, expected))
    assert {e["target"]["pixels"] for e in entries} == {int(expected.sum())}
    assert entries[0]["target"]["mask"] == str(path)
    caption = f"region class 2 (mask.png mask, {int(expected.sum())} px) · gradient"
    assert_overlay(out, entries[0], caption, mode)


# -- detections -------------------------------------------------------------------------------

def photo_to_model(box, mode: str) -> tuple:
    """A 48×64 photo's box in the 32×32 model input's pixels, by hand: squash x/2, y·2/3; crop
    (x − 8)·2/3, y·2/3; pad x/2, 4 + y/2."""
    x1, y1, x2, y2 = box
    if mode == "squash":
        return (x1 / 2, y1 * 2 / 3, x2 / 2, y2 * 2 / 3)
    if mode == "crop":
        return ((x1 - 8) * 2 / 3, y1 * 2 / 3, (x2 - 8) * 2 / 3, y2 * 2 / 3)
    return (x1 / 2, 4 + y1 / 2, x2 / 2, 4 + y2 / 2)


def model_to_photo(box, mode: str) -> tuple:
    x1, y1, x2, y2 = box
    if mode == "squash":
        return (x1 * 2, y1 * 1.5, x2 * 2, y2 * 1.5)
    if mode == "crop":
        return (8 + x1 * 1.5, y1 * 1.5, 8 + x2 * 1.5, y2 * 1.5)
    return (x1 * 2, (y1 - 4) * 2, x2 * 2, (y2 - 4) * 2)


def candidates_of(out: np.ndarray):
    """(boxes x1y1x2y2 [A, 4], class scores [A, K]) of one image's YOLOv8 output [4+K, A]."""
    cx, cy, w, h = out[:4].astype(np.float64)
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1), out[4:].T.astype(float)


def iou(boxes: np.ndarray, box) -> np.ndarray:
    ix = np.clip(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0, None)
    iy = np.clip(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    inter = ix * iy
    return inter / (area + (box[2] - box[0]) * (box[3] - box[1]) - inter)


def assert_box_drawn(png: Path, box_photo) -> int:
    """The overlay's white stroke (viz.draw_box) centred within ±1 px on the box's outermost
    pixels, photo enlarged ×k (viz.MIN_LONG_SIDE) under the caption strip; returns how many of
    the four sides lie inside the picture (and were checked)."""
    k = math.ceil(viz.MIN_LONG_SIDE / max(PHOTO))
    h, w = PHOTO[0] * k, PHOTO[1] * k
    with Image.open(png) as img:
        picture = np.asarray(img.convert("RGB"))[viz.CAPTION_H:viz.CAPTION_H + h, :w]
    white = (picture == 255).all(2)
    x1, y1, x2, y2 = (v * k for v in box_photo)
    left, top = math.floor(x1), math.floor(y1)
    right, bottom = math.ceil(x2) - 1, math.ceil(y2) - 1
    mid_row = int(np.clip((top + bottom) // 2, 0, h - 1))
    mid_col = int(np.clip((left + right) // 2, 0, w - 1))
    checked = 0
    for pos, line, size in ((left, white[mid_row], w), (right, white[mid_row], w),
                            (top, white[:, mid_col], h), (bottom, white[:, mid_col], h)):
        if 2 <= pos < size - 2:
            near = np.flatnonzero(line[max(0, pos - 4):pos + 5]) + max(0, pos - 4)
            assert near.size >= 2 and abs(near.mean() - pos) <= 1, (pos, near)
            checked += 1
    return checked


@pytest.mark.parametrize("mode", viz.RESIZE_MODES)
def test_box_is_fitted_like_the_photo_and_drawn(models, photos, tmp_path, capsys, mode):
    """--box x1,y1,x2,y2:0 in photo pixels: the maps of Detection(box=the box mapped by hand
    into model pixels, class_=0); maps.json's candidate = argmax IoU × score (NumPy on ORT's
    output), its box back in photo pixels; the box drawn on the overlay within ±1 px."""
    asked = (22.0, 14.0, 46.0, 36.0)
    out = tmp_path / "out"
    entries = explain(capsys, models["det"], photos, out, "--box", "22,14,46,36:0",
                      "--resize", mode, methods=("gradient", "input_x_gradient"))
    model_box = photo_to_model(asked, mode)
    assert_same_maps(entries, out, models["det"], photos, mode,
                     T.Detection(class_=0, box=model_box), ("gradient", "input_x_gradient"))
    for e in entries:
        o = forward(models["det"], model_input(Path(e["image"]), mode))[0]
        boxes, scores = candidates_of(o)
        weight = iou(boxes, model_box) * scores[:, 0]
        a = int(weight.argmax())
        t = e["target"]
        assert (t["kind"], t["mode"], t["anchor"], t["class"]) == ("detection", "box", a, 0)
        assert abs(t["score"] - weight[a]) <= 1e-5 and e["score"] == t["score"]
        assert np.allclose(t["asked_box"], asked)
        assert np.allclose(t["box"], model_to_photo(boxes[a], mode), atol=1e-4)
        assert assert_box_drawn(out / e["png"], t["box"]) >= 3
        caption = f"box: anchor {a} class 0 IoU·score {weight[a]:.3f} · {e['map']}"
        assert_overlay(out, e, caption, mode, t["box"])


def test_anchor_and_top_detections(models, photos, tmp_path, capsys):
    """--anchor 5:1 is Detection(anchor=5, class_=1) (score: class 1's score of candidate 5);
    --detection top is Detection() (the candidate with the highest best-class score), on a
    YOLOv8 layout; --detection top:1 --detector-layout yolov5 on a YOLOv5 layout (objectness ×
    class score)."""
    out = tmp_path / "anchor"
    entries = explain(capsys, models["det"], photos, out, "--anchor", "5:1")
    assert_same_maps(entries, out, models["det"], photos, "crop", T.Detection(class_=1, anchor=5))
    for e in entries:
        o = forward(models["det"], model_input(Path(e["image"]), "crop"))[0]
        assert (e["target"]["anchor"], e["target"]["class"]) == (5, 1)
        assert abs(e["score"] - o[4 + 1, 5]) <= 1e-6
    out = tmp_path / "top"
    entries = explain(capsys, models["det"], photos, out, "--detection", "top")
    assert_same_maps(entries, out, models["det"], photos, "crop", T.Detection())
    for e in entries:
        o = forward(models["det"], model_input(Path(e["image"]), "crop"))[0]
        a, k = np.unravel_index(o[4:].T.argmax(), (64, K_DET))
        assert (e["target"]["anchor"], e["target"]["class"]) == (a, k)
        assert "score" in e and assert_box_drawn(out / e["png"], e["target"]["box"]) >= 1
    out = tmp_path / "v5"
    entries = explain(capsys, models["det5"], photos, out, "--detection", "top:1",
                      "--detector-layout", "yolov5")
    assert_same_maps(entries, out, models["det5"], photos, "crop",
                     T.Detection(class_=1, layout="yolov5"))
    for e in entries:
        o = forward(models["det5"], model_input(Path(e["image"]), "crop"))[0]   # [A, 5+K]
        score = o[:, 4] * o[:, 5 + 1]
        assert e["target"]["anchor"] == int(score.argmax())
        assert abs(e["score"] - score.max()) <= 1e-6


def test_detection_class_by_label(models, photos, tmp_path, capsys):
    """--detection top:dog with --labels: Detection(class_=1); maps.json names the label."""
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    out = tmp_path / "out"
    entries = explain(capsys, models["det"], photos, out, "--detection", "top:dog",
                      "--labels", labels)
    assert_same_maps(entries, out, models["det"], photos, "crop", T.Detection(class_=1))
    for e in entries:
        o = forward(models["det"], model_input(Path(e["image"]), "crop"))[0]
        assert (e["target"]["anchor"], e["target"]["class"]) == (int(o[5].argmax()), 1)
        assert e["label"] == "dog" and e["target"]["asked_class"] == 1


def test_report_names_the_detection(models, photos, tmp_path, capsys):
    """--report with a detection target: each figure's caption names the kind, the explained
    candidate and its score (not the raw maps.json entry)."""
    out, report = tmp_path / "out", tmp_path / "report.html"
    code, _ = run_cli(capsys, "explain", models["det"], *photos, "--out", out, "--detection",
                      "top:1", "--report", report)
    assert code == 0
    page = report.read_text()
    entries = json.loads((out / "maps.json").read_text())["maps"]
    t = entries[0]["target"]
    assert f"detection: mode top, anchor {t['anchor']}, class 1 (score " in page
    assert "{'kind'" not in page and "&#x27;kind&#x27;" not in page


def test_draw_box_places_its_stroke_on_the_box_edges():
    """viz.draw_box: a 3 px white stroke centred on the box's outermost pixels (⌊x1⌋,
    ⌈x2⌉ − 1), a 1 px dark edge on each side; parts outside the picture left out."""
    grey = np.full((40, 50, 3), 128, np.uint8)
    for box in [(10, 5, 30, 20), (10.4, 5.6, 29.5, 19.2), (-5, -5, 20, 60)]:
        drawn = viz.draw_box(grey, box)
        assert drawn.shape == grey.shape and (grey == 128).all()      # a copy
        white, dark = (drawn == 255).all(2), (drawn == 0).all(2)
        left, top = math.floor(box[0]), math.floor(box[1])
        right, bottom = math.ceil(box[2]) - 1, math.ceil(box[3]) - 1
        row = min(max((top + bottom) // 2, 0), 39)
        cols = np.flatnonzero(white[row])
        expect = [c for p in (left, right) if 0 <= p < 50 for c in range(p - 1, p + 2)
                  if 0 <= c < 50]
        assert cols.tolist() == expect, (box, cols)
        edges = np.flatnonzero(dark[row])
        assert all(any(abs(e - c) == 1 for c in cols) for e in edges) and edges.size
    with pytest.raises(osal.errors.InputError, match="x2 > x1"):
        viz.draw_box(grey, (5, 5, 5, 9))


# -- embeddings and cotangents ----------------------------------------------------------------

def test_reference_embedding_one_for_all_and_one_per_image(models, photos, tmp_path, capsys):
    """--reference r.npy: Embedding(r) ([8]) and, one row per image ([2, 8]), each image's
    row even one image per batch; maps.json's score = cos(e, r) from ORT's forward output."""
    rng = np.random.default_rng(12)
    rows = rng.standard_normal((2, 8)).astype(np.float32)
    np.save(tmp_path / "r.npy", rows[0])
    np.save(tmp_path / "rows.npy", rows)
    for name, target, flags in [("r.npy", lambda i: T.Embedding(rows[0]), []),
                                ("rows.npy", lambda i: T.Embedding(rows[i]),
                                 ["--batch-size", "1"])]:
        out = tmp_path / f"out_{name}"
        entries = explain(capsys, models["emb"], photos, out, "--reference", tmp_path / name,
                          *flags)
        assert_same_maps(entries, out, models["emb"], photos, "crop", target)
        for e in entries:
            i = [p.name for p in photos].index(Path(e["image"]).name)
            emb = forward(models["emb"], model_input(photos[i], "crop"))[0].astype(np.float64)
            r = rows[0] if name == "r.npy" else rows[i]
            cos = emb @ r / (np.linalg.norm(emb) * np.linalg.norm(r))
            assert e["target"] == {"kind": "embedding", "reference": str(tmp_path / name)}
            assert abs(e["score"] - cos) <= 1e-5


def test_cotangent(models, photos, tmp_path, capsys):
    """--cotangent a.npy ([3]: every image) is Cotangent(a); maps.json's score ⟨a, logits⟩."""
    a = np.array([0.5, -2.0, 1.0], np.float32)
    np.save(tmp_path / "a.npy", a)
    out = tmp_path / "out"
    entries = explain(capsys, models["cls"], photos, out, "--cotangent", tmp_path / "a.npy")
    assert_same_maps(entries, out, models["cls"], photos, "crop", T.Cotangent(a))
    for e in entries:
        logits = forward(models["cls"], model_input(Path(e["image"]), "crop"))[0]
        assert abs(e["score"] - float(a @ logits)) <= 1e-5
        assert e["target"]["kind"] == "cotangent"


# -- bad forms --------------------------------------------------------------------------------

BAD = {   # name: (model, flags, words in the one-line error)
    "box three numbers": ("det", ["--box", "1,2,3"], "needs four numbers x1,y1,x2,y2"),
    "box not numbers": ("det", ["--box", "a,b,c,d"], "needs four numbers"),
    "box upside down": ("det", ["--box", "30,30,10,10"], "x1 < x2 and y1 < y2"),
    "box empty class": ("det", ["--box", "1,2,30,40:"], "no class after ':'"),
    "box class out of range": ("det", ["--box", "1,2,30,40:7"], "outside [0, 3)"),
    "box class unknown label": ("det", ["--box", "1,2,30,40:zebra"], "class label"),
    "box outside the photo": ("det", ["--box", "10,10,65,20"], "not inside the photo"),
    "box cropped off": ("det", ["--box", "0,0,6,10"], "--resize crop cuts off"),
    "anchor negative": ("det", ["--anchor", "-1"], "candidate index"),
    "anchor out of range": ("det", ["--anchor", "64"], "outside [0, 64)"),
    "detection not top": ("det", ["--detection", "best"], "'top'"),
    "detection on a classifier": ("cls", ["--detection", "top"], "single-stage detector"),
    "detector layout alone": ("det", ["--detector-layout", "yolov5"], "needs --box"),
    "two forms": ("det", ["--box", "1,2,30,40", "--anchor", "3"], "not allowed with"),
    "target and region": ("seg", ["--target", "1", "--region", "1"], "not allowed with"),
    "region class out of range": ("seg", ["--region", "9"], "outside [0, 4)"),
    "region on a classifier": ("cls", ["--region", "1"], "dense output"),
    "mask without region": ("seg", ["--region-mask", "{tmp}/mask.png"], "needs --region"),
    "mask not an image": ("seg", ["--region", "1", "--region-mask", "{tmp}/bad.png"],
                          "not a readable image"),
    "mask of another size": ("seg", ["--region", "1", "--region-mask", "{tmp}/small.png"],
                             "photo's pixels"),
    "reference wrong length": ("emb", ["--reference", "{tmp}/r5.npy"], "D = 8"),
    "reference wrong rows": ("emb", ["--reference", "{tmp}/r3x8.npy"], "3 rows for 2 image"),
    "reference not npy": ("emb", ["--reference", "{tmp}/bad.png"], "not a .npy file"),
    "reference zero": ("emb", ["--reference", "{tmp}/zero8.npy"], "zero vector"),
    "cotangent wrong shape": ("cls", ["--cotangent", "{tmp}/r5.npy"], "shape"),
    "target class:label unknown": ("cls", ["--target", "class:zebra"], "class label"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_forms_are_one_line_usage_errors(models, photos, tmp_path, capsys, case):
    model, flags, words = BAD[case]
    Image.fromarray(np.full((*PHOTO, 3), 255, np.uint8)).save(tmp_path / "mask.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    np.save(tmp_path / "r5.npy", np.ones(5, np.float32))
    np.save(tmp_path / "r3x8.npy", np.ones((3, 8), np.float32))
    np.save(tmp_path / "zero8.npy", np.zeros(8, np.float32))
    flags = [f.format(tmp=tmp_path) for f in flags]
    code, err = run_cli(capsys, "explain", models[model], *photos, "--out", tmp_path / "out",
                        *flags)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("onnx-saliency: error:"), err
    assert words in err, err
    assert not (tmp_path / "out").exists()
