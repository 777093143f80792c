"""Make docs/detection.png and docs/segmentation.png, the README's pictures of the Detection and
Region targets: real trained models on real photos, every model and photo from an installed
package (the test extra: `pip install ".[test]"`), nothing downloaded.

* Detection: NudeNet 3.4.2's YOLOv8n detector (`nudenet/320n.onnx`, 18 classes, raw output
  [1, 4 + 18, 2100] at 320 x 320, symbolic H, W: explained with `input_size=(320, 320)`) on
  scikit-image's astronaut photo (public domain, NASA), preprocessed as NudeNet does (pad right
  and bottom with black to a square, cv2 resize to 320 x 320, /255, channels B, G, R as
  `NudeDetector.detect` feeds an image file). Rows: its detections after per-class NMS (the
  face, FACE_FEMALE 0.72, and the same face's next class, FACE_MALE 0.49, which NudeNet's own
  class-agnostic NMS would drop), each explained as `targets.Detection(class_, anchor)`.
* Segmentation: PP-OCRv4's text detector (DBNet, `rapidocr_onnxruntime/models/
  ch_PP-OCRv4_det_infer.onnx` of rapidocr-onnxruntime 1.4.4, Apache-2.0; output [1, 1, H, W],
  the text probability after a Sigmoid) on scikit-image's `page` (a grey scan of printed text
  under uneven light, 191 x 384), preprocessed as rapidocr does (grey to BGR, the short side resized to 736
  and both sides rounded to multiples of 32, (v/255 - 0.5)/0.5). Rows: `targets.Region(0)` (the
  pixels the model predicts as text, p > 0.5) and `targets.Region(0, mask=...)` over the box of
  the heading's word "segmentation" (found from the page's ink, see `word_box`).

Maps are sampled back onto the photo through the geometry of its preprocessing (`viz.Fit`; the
photo enlarged by a whole factor to at least the model's resolution, then each tile resized),
scaled as docs/overlays.png is (make_readme_figure.shown: the 99.5th percentile is 1); boxes
are drawn on every tile of their row. Every panel is first checked against the map of a one-method explainer, and what each
caption says (class, score, anchor; the region's pixels) is asserted.

    pip install ".[test]"
    python examples/make_target_figures.py
"""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_readme_figure import COLORMAP, colour_bar, font, shown  # noqa: E402

import onnx_saliency as osal  # noqa: E402
from onnx_saliency import targets as T, viz  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
NUDENET_SIZE = 320
METHODS = {"Gradient": "gradient", "Input x gradient": "input_x_gradient",   # title: method
           "Grad-CAM": "gradcam", "NormGrad": "normgrad"}   # layer methods at the default layer
OCR_LIMIT = 736            # rapidocr's Det.limit_side_len with limit_type "min"
WORD = "segmentation"      # the heading "Region-based segmentation": its second word
MASK_TINT = (0, 200, 255)  # the explained region on the photo panel


def _package_file(package: str, *parts: str) -> Path:
    """A file inside an installed package, located without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{package} is not installed: pip install \".[test]\"")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise SystemExit(f"{path} is missing (see the test extra's pinned version)")
    return path


def nudenet_model() -> Path:
    return _package_file("nudenet", "320n.onnx")


def nudenet_classes() -> list[str]:
    from nudenet.nudenet import __labels as labels   # noqa: PLC0415 (imports cv2, as here)
    return list(labels)


def ocr_model() -> Path:
    return _package_file("rapidocr_onnxruntime", "models", "ch_PP-OCRv4_det_infer.onnx")


def nudenet_input(rgb: np.ndarray) -> tuple[np.ndarray, viz.Fit]:
    """NudeNet's `_read_image` for the photo's file (cv2.imread's BGR): pad right/bottom with
    black to a square of side s = max(h, w), resize to 320 x 320 (cv2, bilinear), /255, NCHW in
    B, G, R order; and the Fit: photo [0, w] x [0, h] is input [0, 320w/s] x [0, 320h/s]."""
    h, w = rgb.shape[:2]
    side = max(h, w)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    padded = cv2.copyMakeBorder(bgr, 0, side - h, 0, side - w, cv2.BORDER_CONSTANT)
    x = cv2.dnn.blobFromImage(padded, 1 / 255.0, (NUDENET_SIZE, NUDENET_SIZE), (0, 0, 0),
                              swapRB=False, crop=False)
    k = NUDENET_SIZE / side
    return x, viz.Fit((h, w), (NUDENET_SIZE, NUDENET_SIZE), (0.0, 0.0, float(w), float(h)),
                      (0.0, 0.0, w * k, h * k))


def ocr_input(grey: np.ndarray) -> tuple[np.ndarray, viz.Fit]:
    """rapidocr's text-detector preprocessing (LoadImage + DetPreProcess, limit_type "min"): grey
    to BGR, the short side scaled to 736 (when shorter), each side truncated then rounded to a
    multiple of 32, cv2 resize (bilinear, aspect not kept exactly), (v/255 - 0.5)/0.5 (v/255 in
    float32, the rest in float64, as rapidocr computes it), NCHW float32."""
    bgr = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    h, w = bgr.shape[:2]
    ratio = OCR_LIMIT / min(h, w) if min(h, w) < OCR_LIMIT else 1.0
    rh, rw = (int(round(int(n * ratio) / 32) * 32) for n in (h, w))
    resized = cv2.resize(bgr, (rw, rh))
    scaled = (resized.astype(np.float32) * (1 / 255.0)).astype(np.float64)   # rapidocr's dtypes
    x = ((scaled - 0.5) / 0.5).transpose(2, 0, 1)[None]
    return np.ascontiguousarray(x, np.float32), viz.Fit.squash((h, w), (rh, rw))


def check_alone(model: Path, x: np.ndarray, targets: list, maps: list[dict], methods: dict,
                input_size=None) -> None:
    """Each map of `maps` (per row, {title: [H, W]}) equals, within 1e-4 of its peak, the map
    that a one-method explainer of its method gives for the row's entry of `targets` (the row's
    target, or one that must be equivalent to it)."""
    for title, method in methods.items():
        alone = osal.Explainer(model, methods=[method], input_size=input_size)
        (key,) = alone.map_names
        for t, m in zip(targets, maps):
            want = alone.explain(x, t)[key][0]
            np.testing.assert_allclose(m[title], want, rtol=0, atol=1e-4 * np.abs(want).max(),
                                       err_msg=f"{key} {t!r}")


def titled(ex: osal.Explainer, out: dict, methods: dict) -> dict:
    """{title: map [H, W]} of one image's run `out`, in `methods`' order."""
    return {title: out[key][0] for title, key in zip(methods, ex.map_names)}


def enlarged(rgb: np.ndarray, fit: viz.Fit) -> tuple[np.ndarray, viz.Fit]:
    """The photo enlarged by the whole factor that brings it to the model's resolution at least
    (maps keep their detail before the tile's antialiased downscale), and its fit."""
    k = max(1, math.ceil(max(fit.model_size) / max(rgb.shape[:2])))
    if k == 1:
        return rgb, fit
    h, w = rgb.shape[:2]
    return np.asarray(Image.fromarray(rgb).resize((w * k, h * k), Image.BILINEAR)), fit.scaled(k)


def heat(rgb: np.ndarray, saliency: np.ndarray, fit: viz.Fit) -> np.ndarray:
    """The map sampled onto the (enlarged) photo through `fit`, scaled by `shown`, blended."""
    big, big_fit = enlarged(rgb, fit)
    return np.asarray(viz.overlay(big, shown(viz.to_photo(saliency, big_fit)), colormap=COLORMAP))


def tinted(rgb: np.ndarray, mask: np.ndarray, fit: viz.Fit) -> np.ndarray:
    """The (enlarged) photo with `mask` (bool, at the model's resolution, sampled nearest through
    `fit`) tinted and outlined in MASK_TINT."""
    big, big_fit = enlarged(rgb, fit)
    inside = viz.to_photo(mask.astype(np.float32), big_fit) >= 0.5
    edge = inside & ~(np.roll(inside, 1, 0) & np.roll(inside, -1, 0) & np.roll(inside, 1, 1)
                      & np.roll(inside, -1, 1))
    out = big.astype(np.float32)
    out[inside] = 0.65 * out[inside] + 0.35 * np.asarray(MASK_TINT, np.float32)
    out[edge] = MASK_TINT
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


@dataclass
class Row:
    tiles: list            # RGB arrays, any size (resized to the tile)
    caption: str
    box: tuple | None      # (x1, y1, x2, y2) in photo pixels, drawn on every tile
    photo_size: tuple      # (h, w) of the photo the box is in
    notes: dict = field(default_factory=dict)   # tile index -> a line written on the tile


def map_row(photo: np.ndarray, first: np.ndarray, maps: dict, fit: viz.Fit, caption: str,
            box) -> Row:
    """A row: `first` (the photo as annotated), then each map on the photo; a map that is zero
    everywhere (Grad-CAM's ReLU can cut a whole map) is said so on its tile."""
    notes = {j + 1: "0 everywhere" for j, m in enumerate(maps.values()) if not np.any(m)}
    return Row([first] + [heat(photo, m, fit) for m in maps.values()], caption, box,
               photo.shape[:2], notes)


def figure(rows: list[Row], titles: list[str], tile: tuple[int, int], footer: str):
    """Rows of tiles (w, h) under column titles, a caption under each row, the colour bar of
    `shown` on the right, a footer. Returns the picture and the boxes as drawn, in picture
    pixels, one list per row (what tests/test_target_figures.py checks)."""
    tw, th = tile
    head, cap, pad, bar_w = 34, 26, 6, 16
    title_font, cap_font, small = font(17), font(15), font(13)
    cols = len(titles)
    width = cols * (tw + pad) + 90
    height = head + len(rows) * (th + cap + pad) + 28
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(titles):
        draw.text((j * (tw + pad) + tw // 2, head // 2), title, fill="black", font=title_font,
                  anchor="mm")
    drawn = []
    for i, row in enumerate(rows):
        y = head + i * (th + cap + pad)
        boxes = []
        for j, rgb in enumerate(row.tiles):
            picture = np.asarray(Image.fromarray(rgb).resize((tw, th), Image.BILINEAR))
            if row.box is not None:
                sy, sx = th / row.photo_size[0], tw / row.photo_size[1]
                box = (row.box[0] * sx, row.box[1] * sy, row.box[2] * sx, row.box[3] * sy)
                picture = viz.draw_box(picture, box)
                boxes.append(tuple(v + o for v, o in zip(box, (j * (tw + pad), y) * 2)))
            canvas.paste(Image.fromarray(picture), (j * (tw + pad), y))
            if j in row.notes:
                at = (j * (tw + pad) + tw // 2, y + th - 14)
                draw.rectangle(draw.textbbox(at, row.notes[j], font=small, anchor="mm"),
                               fill="white", outline="white", width=3)
                draw.text(at, row.notes[j], fill="black", font=small, anchor="mm")
        drawn.append(boxes)
        draw.text((2, y + th + 4), row.caption, fill="black", font=cap_font)
    colour_bar(canvas, draw, (cols * (tw + pad) + 4, head + 4, height - 80), bar_w, small)
    draw.text((2, height - 22), footer, fill="dimgray", font=small)
    return canvas, drawn


def save_png(picture: Image.Image, path: Path) -> None:
    """256 colours, Floyd-Steinberg dithered: ~250 KB instead of ~600 KB. The palette: fast
    octree refined by one k-means pass, 0.05 s here, as close to the full-colour picture as
    docs/overlays.png's median cut with k-means (5-10 s); plain median cut or octree lose the
    faint heat colours of the pixel-level maps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    palette = picture.quantize(256, method=Image.Quantize.FASTOCTREE, kmeans=1)
    picture.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(path, optimize=True)


def detection_figure(path: Path = DOCS / "detection.png", tile: int = 224) -> dict:
    """docs/detection.png: NudeNet's detections on the astronaut, each explained by its class
    score at its anchor. Returns what was drawn: captions, candidates, boxes, maps per row."""
    from skimage import data
    photo = data.astronaut()
    model, classes = nudenet_model(), nudenet_classes()
    x, fit = nudenet_input(photo)
    size = (NUDENET_SIZE, NUDENET_SIZE)
    ex = osal.Explainer(model, methods=list(METHODS.values()), input_size=size)
    found = T.candidates(ex.run(x, T.Detection())["logits"])[0]     # the raw output, after NMS
    assert [(classes[c.class_], round(c.score, 2)) for c in found] == [
        ("FACE_FEMALE", 0.72), ("FACE_MALE", 0.49)], found
    chosen = [c.target() for c in found]
    outputs = [ex.run(x, t) for t in chosen]
    maps = [titled(ex, out, METHODS) for out in outputs]
    check_alone(model, x, chosen, maps, METHODS, input_size=size)
    rows, levels = [], (40 * 40, 40 * 40 + 20 * 20)
    for c, t, m, out in zip(found, chosen, maps, outputs):
        (explained,) = t.chosen(out["logits"])   # the graph's candidate, from its output
        assert (explained.anchor, explained.class_) == (c.anchor, c.class_), explained
        assert abs(explained.score - c.score) < 1e-6, (explained, c)
        stride = 8 if c.anchor < levels[0] else 16 if c.anchor < levels[1] else 32
        h, w = photo.shape[:2]
        box = tuple(float(v) for v in np.clip(np.asarray(c.box) * max(h, w) / NUDENET_SIZE,
                                              0, [w, h, w, h]))
        rows.append(map_row(photo, photo, m, fit, f"{classes[c.class_]}, score {c.score:.2f} "
                            f"(anchor {c.anchor}, stride {stride})", box))
    footer = ("NudeNet 3.4.2's YOLOv8n (320 x 320) on scikit-image's astronaut; each row explains "
              "one detection's class score, Grad-CAM and NormGrad at the neck level of its anchor.")
    picture, drawn = figure(rows, ["photo", *METHODS], (tile, tile), footer)
    save_png(picture, path)
    return {"path": path, "size": picture.size, "captions": [r.caption for r in rows],
            "candidates": found, "photo_boxes": [r.box for r in rows], "drawn_boxes": drawn,
            "maps": maps}


def word_box(x: np.ndarray, line: np.ndarray) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) at the model's resolution of the heading's second word: the ink (pixels
    darker than the midpoint of the 5th and 95th percentiles) of a band around the predicted
    text line `line` (bool; DBNet predicts a shrunk line, so the band reaches one line height
    beyond it on each side), split at the widest run of ink-free columns, which must be clearly
    wider (1.5x) than every other gap between letters; a margin of 1/8 of the ink's height."""
    rows, cols = np.flatnonzero(line.any(1)), np.flatnonzero(line.any(0))
    grow = rows[-1] + 1 - rows[0]
    y0, y1 = max(0, rows[0] - grow), min(x.shape[2], rows[-1] + 1 + grow)
    x0, x1 = max(0, cols[0] - grow), min(x.shape[3], cols[-1] + 1 + grow)
    band = x[0, 0, y0:y1, x0:x1]
    lo, hi = np.percentile(band, [5, 95])
    ink = band < (lo + hi) / 2
    has = np.flatnonzero(ink.any(0))
    gaps = np.diff(has) - 1                  # ink-free columns between inked ones
    order = np.argsort(gaps)[::-1]
    assert gaps[order[0]] >= 1.5 * gaps[order[1]], sorted(gaps)[-4:]
    first, last = has[order[0] + 1], has[-1]
    ink_rows = np.flatnonzero(ink[:, first:last + 1].any(1))
    margin = (ink_rows[-1] + 1 - ink_rows[0]) // 8
    return (int(max(0, x0 + first - margin)), int(max(0, y0 + ink_rows[0] - margin)),
            int(min(x.shape[3], x0 + last + 1 + margin)),
            int(min(x.shape[2], y0 + ink_rows[-1] + 1 + margin)))


def segmentation_figure(path: Path = DOCS / "segmentation.png", tile=(300, 150)) -> dict:
    """docs/segmentation.png: PP-OCRv4's text detector on scikit-image's page, explaining the
    predicted text and one word. Returns what was drawn: captions, masks, box, maps per row."""
    from scipy import ndimage
    from skimage import data
    grey = data.page()
    photo = np.repeat(grey[..., None], 3, 2)
    model = ocr_model()
    x, fit = ocr_input(grey)
    size = fit.model_size
    ex = osal.Explainer(model, methods=list(METHODS.values()), input_size=size)
    outputs = [ex.run(x, T.Region(0))]
    p = outputs[0]["logits"][0, 0]
    text = p > 0.5
    labels, n = ndimage.label(text)
    tops = [s[0].start for s in ndimage.find_objects(labels)]
    heading = labels == 1 + int(np.argmin(tops))           # the topmost text line
    bx = word_box(x, heading)
    word = np.zeros_like(text)
    word[bx[1]:bx[3], bx[0]:bx[2]] = True
    chosen = [T.Region(0), T.Region(0, mask=word)]
    outputs.append(ex.run(x, chosen[1]))
    maps = [titled(ex, out, METHODS) for out in outputs]
    # each one-method explainer is given Region(0)'s mask explicitly (the caption's p > 0.5)
    check_alone(model, x, [T.Region(0, mask=text), chosen[1]], maps, METHODS, input_size=size)
    assert np.array_equal(outputs[1]["logits"], outputs[0]["logits"])
    (h, w), (mh, mw) = fit.photo_size, fit.model_size
    box = (bx[0] * w / mw, bx[1] * h / mh, bx[2] * w / mw, bx[3] * h / mh)
    rows = [map_row(photo, tinted(photo, text, fit), maps[0], fit,
                    f"Region(0): the {int(text.sum()):,} output pixels with p > 0.5 "
                    f"({n} connected regions), tinted", None),
            map_row(photo, tinted(photo, word, fit), maps[1], fit,
                    f"Region(0, mask): the box of the word \"{WORD}\"", box)]
    footer = (f"PP-OCRv4 text detector (rapidocr-onnxruntime 1.4.4, input {mh} x {mw}) on "
              "scikit-image's page; each row explains the text probability summed over a mask.")
    picture, drawn = figure(rows, ["photo", *METHODS], tile, footer)
    save_png(picture, path)
    return {"path": path, "size": picture.size, "captions": [r.caption for r in rows],
            "text": text, "word": word, "word_box": bx, "photo_box": box, "drawn_boxes": drawn,
            "regions": n, "maps": maps}


def main() -> None:
    for make in (detection_figure, segmentation_figure):
        info = make()
        print(f"wrote {info['path']} ({info['path'].stat().st_size // 1000} KB): "
              + "; ".join(info["captions"]))


if __name__ == "__main__":
    main()
