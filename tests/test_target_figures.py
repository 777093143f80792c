"""The README's detection and segmentation pictures (examples/make_target_figures.py, issue #18):
the script's figure functions run here into a temporary folder (they check every panel against a
one-method explainer and assert their captions themselves); this file checks, against references
outside the script, that the preprocessing is the packages' own, that the box lands on the face
(scikit-image's own face detector) and is drawn where the picture says, that the README's claims
about the maps hold, that the committed PNGs exist and are small, and runs the README's detector
block. The models and photos come from the test extra (nudenet, rapidocr-onnxruntime,
scikit-image); nothing is downloaded."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
MAX_BYTES = 300_000

pytest.importorskip("nudenet")
pytest.importorskip("rapidocr_onnxruntime")
pytest.importorskip("skimage")
figures = pytest.importorskip("make_target_figures")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    folder = tmp_path_factory.mktemp("figures")
    return (figures.detection_figure(folder / "detection.png"),
            figures.segmentation_figure(folder / "segmentation.png"))


def test_preprocessing_is_the_packages_own():
    """The script's inputs equal, exactly, what NudeNet's `_read_image` makes of the photo's
    file (cv2.imread's BGR array) and what rapidocr's own DetPreProcess (limit 736, type
    "min", mean = std = 0.5) makes of the grey page after its LoadImage (GRAY2BGR)."""
    import cv2
    from nudenet.nudenet import _read_image
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess
    from skimage import data

    photo = data.astronaut()
    x, fit = figures.nudenet_input(photo)
    want = _read_image(cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), 320)[0]
    np.testing.assert_array_equal(x, want)
    assert fit.model_box == (0.0, 0.0, 320.0, 320.0) and fit.photo_box == (0.0, 0.0, 512.0, 512.0)
    wide = np.ascontiguousarray(photo[:300])            # a non-square photo: padded at the bottom
    x, fit = figures.nudenet_input(wide)
    np.testing.assert_array_equal(x, _read_image(cv2.cvtColor(wide, cv2.COLOR_RGB2BGR), 320)[0])
    assert fit.model_box == pytest.approx((0, 0, 320, 300 * 320 / 512))

    page = data.page()
    x, fit = figures.ocr_input(page)
    want = DetPreProcess(736, "min", [0.5] * 3, [0.5] * 3)(cv2.cvtColor(page, cv2.COLOR_GRAY2BGR))
    np.testing.assert_array_equal(x, want)
    assert x.shape == (1, 3, 736, 1472) and fit.model_size == (736, 1472)


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / union


def _box_is_drawn(png: np.ndarray, box) -> None:
    """viz.draw_box's stroke: 3 light pixels centred on the box's outermost column/row, a dark
    pixel on both sides; checked along the middle half of each side (dithering allows a few
    off pixels: means over the line, light ≥ 225, dark ≤ 60)."""
    x1, y1, x2, y2 = box
    left, top = int(np.floor(x1)), int(np.floor(y1))
    right, bottom = int(np.ceil(x2)) - 1, int(np.ceil(y2)) - 1
    ys = slice(top + (bottom - top) // 4, bottom - (bottom - top) // 4)
    xs = slice(left + (right - left) // 4, right - (right - left) // 4)
    for line, outside in ((png[ys, left], png[ys, left - 2]), (png[ys, right], png[ys, right + 2]),
                          (png[top, xs], png[top - 2, xs]), (png[bottom, xs], png[bottom + 2, xs])):
        assert line.mean() >= 225 and outside.mean() <= 60, (box, line.mean(), outside.mean())


def test_detection_figure(made):
    """The picture has the layout returned (2 rows: FACE_FEMALE 0.72, FACE_MALE 0.49), is under
    300 KB, and has the face's box drawn on each of its 5 tiles per row; the box, mapped to
    photo pixels, overlaps the face that scikit-image's LBP cascade finds by IoU ≥ 0.5 (measured
    0.66: NudeNet's box also holds the chin and hair line); Grad-CAM of FACE_FEMALE lies ≥ 95%
    in its box (measured 99.4%) and Grad-CAM of FACE_MALE is zero everywhere (README)."""
    from skimage import data, feature

    info, _ = made
    path = info["path"]
    assert path.stat().st_size < MAX_BYTES
    png = np.asarray(Image.open(path).convert("RGB"))
    assert png.shape[1::-1] == info["size"]
    assert info["captions"] == ["FACE_FEMALE, score 0.72 (anchor 1668, stride 16)",
                                "FACE_MALE, score 0.49 (anchor 418, stride 8)"]
    assert [len(row) for row in info["drawn_boxes"]] == [5, 5]
    for row in info["drawn_boxes"]:
        for box in row:
            _box_is_drawn(png, box)
    cascade = feature.Cascade(data.lbp_frontal_face_cascade_filename())
    faces = cascade.detect_multi_scale(img=data.astronaut(), scale_factor=1.2, step_ratio=1,
                                       min_size=(60, 60), max_size=(200, 200))
    assert len(faces) == 1
    f = faces[0]
    face = (f["c"], f["r"], f["c"] + f["width"], f["r"] + f["height"])
    for box in info["photo_boxes"]:
        assert _iou(box, face) >= 0.5, (box, face)
    female, male = info["maps"]
    c = info["candidates"][0]
    x1, y1, x2, y2 = (int(round(v)) for v in c.box)
    cam = female["Grad-CAM"]
    assert cam[y1:y2, x1:x2].sum() >= 0.95 * cam.sum() > 0
    assert not male["Grad-CAM"].any() and male["NormGrad"].any()


def test_segmentation_figure(made):
    """The picture has the layout returned, is under 300 KB, its first row explains the 8
    predicted text regions (p > 0.5) and its second the word box, drawn on its 5 tiles; the box
    (5% of the output) lies in the page's top text line and holds its second word. README's
    numbers: the share of each map's |mass| in the word box for Region(0, mask=box): gradient
    ≥ 0.4 (measured 0.50), NormGrad ≥ 0.99 (measured 1.00), Grad-CAM ≤ 0.2 (measured 0.10)."""
    _, info = made
    path = info["path"]
    assert path.stat().st_size < MAX_BYTES
    png = np.asarray(Image.open(path).convert("RGB"))
    assert png.shape[1::-1] == info["size"]
    assert info["regions"] == 8
    assert info["captions"][0].startswith(f"Region(0): the {int(info['text'].sum()):,} output "
                                          "pixels with p > 0.5")
    assert info["captions"][1] == 'Region(0, mask): the box of the word "segmentation"'
    assert info["drawn_boxes"][0] == [] and len(info["drawn_boxes"][1]) == 5
    for box in info["drawn_boxes"][1]:
        _box_is_drawn(png, box)
    word, text = info["word"], info["text"]
    x1, y1, x2, y2 = info["word_box"]
    assert 0.03 <= word.mean() <= 0.07
    top_rows = np.flatnonzero(text.any(1))[0]
    assert y1 <= top_rows < y2 and text[y1:y2, x1:x2].mean() > 0.2
    assert x1 > 0.3 * text.shape[1]             # "segmentation", after "Region-based"
    share = {k: np.abs(m)[word].sum() / np.abs(m).sum() for k, m in info["maps"][1].items()}
    assert share["Gradient"] >= 0.4 and share["NormGrad"] >= 0.99, share
    assert share["Grad-CAM"] <= 0.2, share


def test_committed_pictures_exist_and_are_small(made):
    """docs/detection.png and docs/segmentation.png are committed, under 300 KB each, with the
    layout the script draws now."""
    for info, name in zip(made, ("detection.png", "segmentation.png")):
        path = ROOT / "docs" / name
        assert path.is_file(), f"{path} is missing: python examples/make_target_figures.py"
        assert path.stat().st_size < MAX_BYTES
        assert Image.open(path).size == info["size"]


def test_readme_detector_block(tmp_path, monkeypatch):
    """The README's detector block, verbatim: it finds FACE_FEMALE (0.74 with Pillow's
    resize, as its comment says) at anchor 1668 and writes face.png."""
    from test_readme import python_block

    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(python_block("targets.candidates("), "README detector", "exec"), scope)
    face = scope["face"]
    assert (face.class_, face.anchor, round(face.score, 2)) == (1, 1668, 0.74)
    assert list(scope["maps"]) == ["gradient", "gradcam@neck"]
    assert Image.open(tmp_path / "face.png").size[1] == 512
