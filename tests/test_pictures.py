"""Pictures (issue #20, item 2): overlays at the photo's resolution for every --resize mode, the
map put back where the model saw it, the colour bar's ticks and label, captions, float and uint8
images drawn alike, one error for a bad image, `explain` on the bundled model reproducing `demo`,
and the built-in ImageNet class names."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cmap import Colormap
from PIL import Image

from conftest import tiny_cnn
from onnx_saliency import cli, viz
from onnx_saliency.errors import InputError

PHOTO = (300, 500)                        # (h, w): a landscape photo, not the model's aspect
MODEL = (224, 224)
DATA = resources.files("onnx_saliency") / "data"
BUNDLED = str(DATA / "text_direction_cls.onnx")
SAMPLE = str(DATA / "sample_text.png")


def _photo(seed: int = 0, size=PHOTO) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _tiny_model(path: Path, classes: int = 3, size=(32, 32)) -> Path:
    """conftest.tiny_cnn with static H×W (seed 1)."""
    return tiny_cnn(path, size, classes, seed=1)


# --- geometry -----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", viz.RESIZE_MODES)
def test_overlay_is_at_the_photos_resolution_for_every_resize_mode(mode):
    photo = _photo()
    fitted, fit = viz.fit_image(Image.fromarray(photo), MODEL, mode)
    assert fitted.size == (MODEL[1], MODEL[0]) and fit.photo_size == PHOTO
    saliency = np.random.default_rng(2).standard_normal(MODEL)
    assert viz.overlay(photo, saliency, fit=fit).size == (PHOTO[1], PHOTO[0])
    full = viz.overlay(photo, saliency, fit=fit, colorbar=True, caption="class 1")
    assert full.size == (PHOTO[1] + viz.BAR_AREA, PHOTO[0] + viz.CAPTION_H)
    tiles = viz.grid(photo, {"a": saliency, "b": -saliency}, columns=3, fit=fit, caption="c")
    assert tiles.size == (3 * PHOTO[1] + viz.BAR_AREA, PHOTO[0] + viz.LABEL_H + viz.CAPTION_H)
    small = _photo(size=(60, 100))                 # enlarged by a whole factor, 4 = ceil(400/100)
    _, small_fit = viz.fit_image(Image.fromarray(small), MODEL, mode)
    assert viz.overlay(small, saliency, fit=small_fit, min_long_side=400).size == (400, 240)


def _expected_photo_point(mode: str, i: int, j: int) -> tuple[float, float]:
    """Where model pixel (i, j)'s centre lies on the PHOTO, by each mode's own definition (crop:
    short side to 224 then centre crop; pad: long side to 224, centred; squash: both axes)."""
    (h, w), (mh, mw) = PHOTO, MODEL
    if mode == "squash":
        return (i + 0.5) * h / mh, (j + 0.5) * w / mw
    if mode == "crop":
        s = mh / h                                  # the short side (300) becomes 224
        return (i + 0.5) / s, (w - mw / s) / 2 + (j + 0.5) / s
    s = mw / w                                      # pad: the long side (500) becomes 224, the
    nh = round(h * s)                               # short one round(300 s) rows, centred
    return (i + 0.5 - (mh - nh) // 2) * h / nh, (j + 0.5) / s


@pytest.mark.parametrize("mode", viz.RESIZE_MODES)
@pytest.mark.parametrize("hot", [(10, 20), (112, 112), (150, 200), (80, 3)])
def test_a_hot_pixel_lands_where_the_model_saw_it(mode, hot):
    """A map that is 1 at one model pixel peaks on the photo at that pixel's photo coordinates
    (the mode's closed form, ±1 photo pixel: the bilinear peak is the photo pixel whose centre is
    nearest)."""
    _, fit = viz.fit_image(Image.fromarray(_photo()), MODEL, mode)
    i, j = hot
    if mode == "pad" and not fit.model_box[1] <= i < fit.model_box[3]:
        i = int(fit.model_box[1]) + 5                # a pixel of the photo, not of the padding
    m = np.zeros(MODEL)
    m[i, j] = 1.0
    back = viz.to_photo(m, fit)
    assert back.shape == PHOTO
    y, x = np.unravel_index(np.nanargmax(back), back.shape)
    ey, ex = _expected_photo_point(mode, i, j)
    assert abs(y + 0.5 - ey) <= 1 and abs(x + 0.5 - ex) <= 1, (y, x, ey, ex)


def test_crop_leaves_the_unseen_sides_out_and_pad_leaves_the_padding_out():
    _, crop = viz.fit_image(Image.fromarray(_photo()), MODEL, "crop")
    back = viz.to_photo(np.ones(MODEL), crop)
    unseen = np.isnan(back).all(0)
    assert unseen[:100].all() and unseen[400:].all() and not unseen[100:400].any()
    picture = np.asarray(viz.overlay(_photo(), np.ones(MODEL), fit=crop), np.float64)
    washed = viz.OUTSIDE_KEEP * _photo()[:, :100] + (1 - viz.OUTSIDE_KEEP) * viz.OUTSIDE_GREY
    np.testing.assert_allclose(picture[:, :100], washed, atol=1)   # the cropped-off sides pale
    _, pad = viz.fit_image(Image.fromarray(_photo()), MODEL, "pad")
    m = np.zeros(MODEL)
    m[: int(pad.model_box[1])] = 1.0                 # saliency only on the padding rows
    m[int(pad.model_box[3]):] = 1.0
    assert np.array_equal(viz.to_photo(m, pad), np.zeros(PHOTO))    # none of it reaches the photo


@pytest.mark.parametrize("mode", viz.RESIZE_MODES)
def test_the_fit_inverts_pillows_resize(mode):
    """Independent of to_photo's formulas: a bright square drawn on the photo is found in the
    fitted model input (its centroid), and a map hot there comes back onto the square (within half
    a model pixel in photo pixels, plus one)."""
    for cy, cx in [(150, 250), (40, 180), (260, 330)]:
        photo = np.zeros((*PHOTO, 3), np.uint8)
        photo[cy - 3:cy + 4, cx - 3:cx + 4] = 255
        fitted, fit = viz.fit_image(Image.fromarray(photo), MODEL, mode)
        x = np.asarray(fitted, np.float64).mean(2)
        rows, cols = np.indices(x.shape)
        my, mx = (rows * x).sum() / x.sum(), (cols * x).sum() / x.sum()
        m = np.zeros(MODEL)
        m[round(my), round(mx)] = 1.0
        y, x_ = np.unravel_index(np.nanargmax(viz.to_photo(m, fit)), PHOTO)
        scale = max(fit.photo_box[2] - fit.photo_box[0], fit.photo_box[3] - fit.photo_box[1]) / MODEL[0]
        assert abs(y - cy) <= 0.5 * scale + 1.5 and abs(x_ - cx) <= 0.5 * scale + 1.5, (mode, y, x_)


# --- colour bar, caption, image types ---------------------------------------------------------

def test_colour_bar_has_its_ramp_ticks_and_label_and_the_caption_its_strip():
    photo = _photo()
    h, w = PHOTO
    m = np.random.default_rng(3).standard_normal(PHOTO)
    plain = np.asarray(viz.overlay(photo, m))
    barred = np.asarray(viz.overlay(photo, m, colorbar=True))
    np.testing.assert_array_equal(barred[:, :w], plain)
    x0, top, bottom = w + 4, 6, h - 6
    ramp = barred[top:bottom, x0 + viz.BAR_WIDTH // 2].astype(int)
    inferno = Colormap("inferno")
    assert np.abs(ramp[0] - np.asarray(inferno(1.0))[:3] * 255).max() <= 2         # 1 at the top
    assert np.abs(ramp[-1] - np.asarray(inferno(0.0))[:3] * 255).max() <= 2        # 0 at the bottom
    dark = barred.astype(int).sum(2) < 200
    for v in viz.TICKS:
        y = round(bottom - 1 - v * (bottom - top - 1))
        assert dark[y - 1:y + 2, x0 + viz.BAR_WIDTH:x0 + viz.BAR_WIDTH + 3].any(), v      # mark
        assert dark[y - 6:y + 7, x0 + viz.BAR_WIDTH + 5:x0 + viz.BAR_WIDTH + 25].any(), v  # value
    label = dark[:, w + viz.BAR_AREA - 15:w + viz.BAR_AREA]
    rows = np.flatnonzero(label.any(1))
    assert rows.size and rows.max() - rows.min() > 80       # the whole label, written upwards
    captioned = np.asarray(viz.overlay(photo, m, colorbar=True, caption="class 7 \"x\" p=0.5"))
    np.testing.assert_array_equal(captioned[viz.CAPTION_H:], barred)
    strip = captioned[:viz.CAPTION_H].astype(int).sum(2)
    assert (strip[:, :80] < 200).sum() > 20 and (strip[:, 200:] == 765).all()   # text, then white
    assert viz.caption_for(7, 0.4567, "tench", "gradcam@layer4") == \
        'class 7 "tench" p=0.457 · gradcam@layer4'


def test_float_images_are_drawn_like_their_uint8_twins():
    photo = _photo(size=(30, 40))
    m = np.random.default_rng(4).standard_normal((30, 40))
    maps = {"a": m, "b": -m}
    for dtype in (np.float64, np.float32):
        twin = photo.astype(dtype) / dtype(255)
        assert np.array_equal(np.asarray(viz.overlay(twin, m, colorbar=True, caption="c")),
                              np.asarray(viz.overlay(photo, m, colorbar=True, caption="c")))
        assert np.array_equal(np.asarray(viz.grid(twin, maps)), np.asarray(viz.grid(photo, maps)))
    grey = photo[..., 0]
    assert np.array_equal(np.asarray(viz.overlay(grey / 255.0, m)),
                          np.asarray(viz.overlay(np.repeat(grey[..., None], 3, 2), m)))


@pytest.mark.parametrize("image, words", [
    (np.full((8, 8, 3), 1.5), "in \\[0, 1\\]"),
    (np.full((8, 8, 3), -0.1), "in \\[0, 1\\]"),
    (np.full((8, 8, 3), np.nan), "NaN"),
    (np.full((8, 8, 3), 7, np.int64), "uint8 \\[0, 255\\] or float \\[0, 1\\], not int64"),
    (np.zeros((8, 8, 4), np.uint8), "\\[H, W, 3\\]"),
    (np.zeros((8, 8, 2), np.uint8), "\\[H, W, 3\\]"),
    (np.zeros(8, np.uint8), "\\[H, W, 3\\]"),
    (np.zeros((0, 8, 3), np.uint8), "\\[H, W, 3\\]"),
])
def test_bad_images_get_one_error(image, words):
    for draw in (lambda: viz.overlay(image, np.zeros((8, 8))), lambda: viz.grid(image, {})):
        with pytest.raises(InputError, match=words) as exc:
            draw()
        assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match="map must be \\[H, W\\]"):
        viz.overlay(np.zeros((8, 8, 3), np.uint8), np.zeros((1, 8, 8)))
    _, fit = viz.fit_image(Image.new("RGB", (10, 8)), (4, 4), "crop")
    with pytest.raises(InputError, match="model's input was \\[4, 4\\]"):
        viz.to_photo(np.zeros((5, 5)), fit)
    with pytest.raises(InputError, match="resize mode"):
        viz.fit_image(Image.new("RGB", (10, 8)), (4, 4), "stretch")


# --- the command line ---------------------------------------------------------------------------

def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


@pytest.mark.parametrize("mode", viz.RESIZE_MODES)
def test_explain_writes_photo_sized_captioned_overlays(tmp_path, mode):
    """Each --resize mode: the .npy at the model's size, the overlay at the photo's, drawn from
    that map through the mode's fit, and captioned with the class and its softmax probability of
    the model's own logits (an ONNX Runtime forward of the same preprocessing: ImageNet mean/std,
    pad filled with the mean colour)."""
    model = _tiny_model(tmp_path / "tiny.onnx")
    photo = _photo(5)
    Image.fromarray(photo).save(tmp_path / "p.png")
    out = tmp_path / "out"
    assert cli.main(["explain", str(model), str(tmp_path / "p.png"), "--resize", mode,
                     "--out", str(out), "--method", "gradient"]) == 0
    entry = json.loads((out / "maps.json").read_text())["maps"][0]
    saliency = np.load(out / entry["npy"])
    assert saliency.shape == (32, 32)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    fill = tuple(int(round(255 * v)) for v in mean)
    fitted, fit = viz.fit_image(Image.fromarray(photo), (32, 32), mode, fill)
    assert entry["photo_box"] == list(fit.photo_box) and entry["model_box"] == list(fit.model_box)
    x = ((np.asarray(fitted) / 255.0 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
    logits = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0][0]
    cls = int(logits.argmax())
    p = _softmax(logits.astype(np.float64))[cls]
    assert entry["target"] == cls and abs(entry["probability"] - p) < 1e-6
    caption = viz.caption_for(cls, entry["probability"], None, "gradient")
    expected = viz.overlay(photo, saliency, colorbar=True, caption=caption, fit=fit,
                           min_long_side=viz.MIN_LONG_SIDE)
    with Image.open(out / entry["png"]) as png:
        assert png.size == (PHOTO[1] + viz.BAR_AREA, PHOTO[0] + viz.CAPTION_H)
        assert np.array_equal(np.asarray(png.convert("RGB")), np.asarray(expected))


def test_imagenet_labels_are_built_in_and_match_torchvision(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    names = (DATA / "imagenet_labels.txt").read_text("utf-8").splitlines()
    assert len(names) == 1000 and names == cli.imagenet_labels()
    assert names == list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    model = _tiny_model(tmp_path / "k1000.onnx", classes=1000)
    Image.fromarray(_photo(6, (40, 50))).save(tmp_path / "p.png")
    assert cli.main(["explain", str(model), str(tmp_path / "p.png"), "--labels", "imagenet",
                     "--target", "goldfish", "--out", str(tmp_path / "out")]) == 0
    entry = json.loads((tmp_path / "out" / "maps.json").read_text())["maps"][0]
    assert entry["target"] == 1 and entry["label"] == "goldfish"


def test_bundled_model_carries_its_preprocessing_and_explain_reproduces_demo(tmp_path):
    """`explain` on the bundled model, with no flags but the methods, gives demo's top-1 and maps
    (max |difference| <= 1e-6: the same input, so the same graph and numbers)."""
    meta = {p.key: json.loads(p.value) for p in onnx.load(BUNDLED).metadata_props}
    assert meta["onnx_saliency.size"] == [48, 192] and meta["onnx_saliency.labels"] == ["0", "180"]
    assert meta["onnx_saliency.mean"] == meta["onnx_saliency.std"] == [0.5] * 3
    assert meta["onnx_saliency.resize"] == "squash"
    assert Path(BUNDLED).stat().st_size < 1_000_000
    assert cli.main(["demo", "--out", str(tmp_path / "demo")]) == 0
    methods = [a for m in cli.DEMO_METHODS for a in ("--method", m)]
    assert cli.main(["explain", BUNDLED, SAMPLE, *methods, "--out", str(tmp_path / "exp")]) == 0
    demo = json.loads((tmp_path / "demo" / "maps.json").read_text())["maps"]
    mine = json.loads((tmp_path / "exp" / "maps.json").read_text())["maps"]
    assert [e["map"] for e in mine] == [e["map"] for e in demo] and len(demo) == 4
    for a, b in zip(demo, mine):
        assert a["target"] == b["target"] and a["label"] == b["label"] == "0"
        x, y = np.load(tmp_path / "demo" / a["npy"]), np.load(tmp_path / "exp" / b["npy"])
        assert x.shape == (48, 192) and np.abs(x - y).max() <= 1e-6, a["map"]
