"""Pictures: heat-map overlays of saliency maps on their images, at the image's own resolution,
with a colour bar (ticks and a label) and a caption, and a grid comparing methods and layers for
one image (Pillow for drawing, `cmap` for perceptually uniform colour maps).

Geometry. A photo of h×w pixels is fitted to the model's H×W input by `fit_image` (`--resize`):
`squash` resizes it whole (aspect lost); `crop` (the default, what users of ImageNet models expect:
torchvision's Resize + CenterCrop, resize the short side and centre-crop, here without its 256/224
margin) resizes the largest centred region of the model's aspect ratio; `pad` resizes the whole
photo to fit inside and fills the rest (letterbox; the CLI fills with the mean colour, zero after
normalisation). The `Fit` it returns says which photo region (`photo_box`) became which input
region (`model_box`); `to_photo` samples a map back through it, bilinearly at photo pixel centres,
so each map value lands where the model saw it: photo pixels the model never saw (cropped off)
are NaN and drawn washed out, the padding is left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import numpy as np
from cmap import Colormap
from PIL import Image, ImageDraw, ImageFont

from .errors import InputError

RESIZE_MODES = ("crop", "pad", "squash")
DEFAULT_RESIZE = "crop"
BAR_WIDTH = 14           # the colour ramp
BAR_AREA = 64            # ramp, ticks, tick labels and the rotated label, right of the picture
BAR_LABEL = "saliency (normalised)"
TICKS = (0.0, 0.5, 1.0)
CAPTION_H = 18           # the caption strip above a picture
LABEL_H = 14             # a grid tile's label strip
MIN_LONG_SIDE = 400      # the CLI enlarges smaller photos' overlays by a whole factor to this
OUTSIDE_KEEP, OUTSIDE_GREY = 0.4, 200.0   # photo pixels the model did not see: washed out pale,
                                          # 0.4 photo + 0.6 grey 200 (unlike any heat colour)


@lru_cache(maxsize=None)
def _font(size: int = 11):
    return ImageFont.load_default(size=size)


@dataclass(frozen=True)
class Fit:
    """The photo's region `photo_box` (left, top, right, bottom in photo pixels) became the model
    input's region `model_box` (in input pixels); sizes are (height, width)."""

    photo_size: tuple[int, int]
    model_size: tuple[int, int]
    photo_box: tuple[float, float, float, float]
    model_box: tuple[float, float, float, float]

    @classmethod
    def squash(cls, photo_size, model_size) -> "Fit":
        (h, w), (mh, mw) = photo_size, model_size
        return cls((h, w), (mh, mw), (0.0, 0.0, float(w), float(h)),
                   (0.0, 0.0, float(mw), float(mh)))

    def scaled(self, k: int) -> "Fit":
        """The same fit for the photo enlarged k times."""
        return Fit((self.photo_size[0] * k, self.photo_size[1] * k), self.model_size,
                   tuple(v * k for v in self.photo_box), self.model_box)


def as_rgb8(image) -> np.ndarray:
    """An image as RGB uint8 [H,W,3]: uint8 in [0, 255] or float in [0, 1], [H,W,3], [H,W,1] or
    [H,W] (grey); anything else is an InputError."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3 or 0 in a.shape:
        raise InputError(f"the image must be [H, W, 3] (or [H, W] grey), not shape "
                         f"{list(np.shape(image))}")
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise InputError("a float image must hold values in [0, 1], not NaN or Inf")
        if a.min() < 0 or a.max() > 1:
            raise InputError(f"a float image must hold values in [0, 1], not [{a.min():.4g}, "
                             f"{a.max():.4g}]; pass uint8 [0, 255], or float divided by 255")
        return np.floor(a * 255.0 + 0.5).astype(np.uint8)
    raise InputError(f"the image must be uint8 [0, 255] or float [0, 1], not {a.dtype}")


def fit_image(image: Image.Image, size, mode: str = DEFAULT_RESIZE, fill=(0, 0, 0)):
    """(the photo fitted to the model's (H, W) input as a Pillow image, its Fit): `mode` squash,
    crop or pad (module docstring); `fill` is pad's colour."""
    if mode not in RESIZE_MODES:
        raise InputError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, not '{mode}'")
    mh, mw = int(size[0]), int(size[1])
    w, h = image.size
    if mode == "squash" or (w, h) == (mw, mh):
        fit = Fit.squash((h, w), (mh, mw))
        return image.resize((mw, mh), Image.BILINEAR), fit
    if mode == "crop":
        s = max(mw / w, mh / h)
        cw, ch = mw / s, mh / s
        box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
        fit = Fit((h, w), (mh, mw), box, (0.0, 0.0, float(mw), float(mh)))
        return image.resize((mw, mh), Image.BILINEAR, box=box), fit
    s = min(mw / w, mh / h)
    nw, nh = min(mw, max(1, round(w * s))), min(mh, max(1, round(h * s)))
    x0, y0 = (mw - nw) // 2, (mh - nh) // 2
    canvas = Image.new(image.mode, (mw, mh), fill if image.mode == "RGB" else fill[0])
    canvas.paste(image.resize((nw, nh), Image.BILINEAR), (x0, y0))
    fit = Fit((h, w), (mh, mw), (0.0, 0.0, float(w), float(h)),
              (float(x0), float(y0), float(x0 + nw), float(y0 + nh)))
    return canvas, fit


def _axis(n_out: int, lo: float, hi: float, n_in: int, in_lo: float, in_hi: float):
    """Bilinear weights [n_out, n_in] sampling n_in map pixels at the n_out photo pixel centres
    (photo [lo, hi] is map [in_lo, in_hi]; samples held inside the map pixels of [in_lo, in_hi],
    so no padding leaks in), and which photo pixels lie in [lo, hi]."""
    c = np.arange(n_out) + 0.5
    inside = (c >= lo) & (c <= hi)
    first = max(0, math.floor(in_lo + 1e-9))
    last = min(n_in - 1, math.ceil(in_hi - 1e-9) - 1)
    u = np.clip(in_lo + (c - lo) * (in_hi - in_lo) / (hi - lo) - 0.5, first, last)
    i0 = np.floor(u).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    t = u - i0
    weights = np.zeros((n_out, n_in))
    np.add.at(weights, (np.arange(n_out), i0), 1 - t)
    np.add.at(weights, (np.arange(n_out), i1), t)
    return weights, inside


def to_photo(saliency: np.ndarray, fit: Fit) -> np.ndarray:
    """A map at the model's input size sampled back onto the photo ([h, w], float32): bilinear at
    photo pixel centres through the fit; NaN where the model did not see the photo."""
    m = np.asarray(saliency, np.float32)
    if m.shape != tuple(fit.model_size):
        raise InputError(f"the map is {list(m.shape)} but the model's input was "
                         f"{list(fit.model_size)}")
    (h, w), (pl, pt, pr, pb), (ml, mt, mr, mb) = fit.photo_size, fit.photo_box, fit.model_box
    rows, in_rows = _axis(h, pt, pb, m.shape[0], mt, mb)
    cols, in_cols = _axis(w, pl, pr, m.shape[1], ml, mr)
    out = rows.astype(np.float32) @ m @ cols.T.astype(np.float32)
    out[~in_rows, :] = np.nan
    out[:, ~in_cols] = np.nan
    return out


def display_map(saliency: np.ndarray) -> np.ndarray:
    """[H,W] map -> [0,1] for display: max(M,0)/max M for signed maps with a positive part, else
    |M|/max|M|; a constant map becomes all zeros; NaN (unseen) stays NaN (float32 stays float32)."""
    m = np.asarray(saliency)
    m = m if m.dtype in (np.float32, np.float64) else m.astype(np.float64)
    seen = ~np.isnan(m)
    if not seen.any():
        return m.copy()
    if m[seen].max() > 0 and m[seen].min() < 0:
        m = np.maximum(m, 0)
    m = np.abs(m)
    top = m[seen].max()
    return m / top if top > 0 else np.where(seen, 0.0, np.nan)


def _check_map(saliency) -> np.ndarray:
    m = np.asarray(saliency, np.float64)
    if m.ndim != 2 or 0 in m.shape:
        raise InputError(f"a saliency map must be [H, W], not shape {list(m.shape)}")
    return m


def _blend(rgb: np.ndarray, saliency: np.ndarray, fit: Fit | None, alpha: float,
           colormap: str) -> np.ndarray:
    m = _check_map(saliency)
    fit = fit or Fit.squash(rgb.shape[:2], m.shape)
    if tuple(fit.photo_size) != rgb.shape[:2]:
        raise InputError(f"the image is {list(rgb.shape[:2])} but the fit is for a "
                         f"{list(fit.photo_size)} photo")
    shown = display_map(to_photo(m, fit))
    unseen = np.isnan(shown)
    heat = _lut(colormap)[np.rint(np.nan_to_num(shown) * 255).astype(np.uint8)]
    base = rgb.astype(np.float32)
    mixed = (1 - alpha) * base + alpha * heat
    if unseen.any():
        mixed[unseen] = OUTSIDE_KEEP * base[unseen] + (1 - OUTSIDE_KEEP) * OUTSIDE_GREY
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


@lru_cache(maxsize=None)
def _lut(colormap: str) -> np.ndarray:
    """The colour map at 256 levels, [256, 3] float32 in [0, 255]."""
    return (np.asarray(Colormap(colormap)(np.linspace(0, 1, 256)))[:, :3] * 255).astype(np.float32)


def _enlarged(rgb: np.ndarray, fit: Fit | None, min_long_side: int):
    """The photo enlarged by the smallest whole factor that makes its long side >= min_long_side
    (small images stay readable), and its fit."""
    k = max(1, math.ceil(min_long_side / max(rgb.shape[:2]))) if min_long_side else 1
    if k == 1:
        return rgb, fit
    h, w = rgb.shape[:2]
    big = np.asarray(Image.fromarray(rgb).resize((w * k, h * k), Image.BILINEAR))
    return big, fit.scaled(k) if fit else None


def overlay(image, saliency: np.ndarray, alpha: float = 0.55, colormap: str = "inferno",
            colorbar: bool = False, caption: str | None = None, fit: Fit | None = None,
            min_long_side: int = 0, box=None) -> Image.Image:
    """The colour-mapped map blended onto the image (uint8 [0, 255] or float [0, 1]) at the
    image's resolution: `fit` says how the image was fitted to the model (default: the map
    stretched over the whole image); with `colorbar`, a bar on the right from 0 (bottom) to 1
    (top) of the display scale, with ticks and its label; `caption`, a line of text above;
    `min_long_side`, small images enlarged by a whole factor until their long side reaches it;
    `box` (x1, y1, x2, y2 in the image's pixels), a rectangle drawn on the blend (`draw_box`)."""
    rgb = as_rgb8(image)
    m = _check_map(saliency)
    if min_long_side and fit is None:
        fit = Fit.squash(rgb.shape[:2], m.shape)
    k = rgb.shape[0]
    rgb, fit = _enlarged(rgb, fit, min_long_side)
    blended = _blend(rgb, m, fit, alpha, colormap)
    if box is not None:
        k = rgb.shape[0] / k   # the whole enlargement factor
        blended = draw_box(blended, [v * k for v in box])
    picture = Image.fromarray(blended)
    if colorbar:
        picture = with_colorbar(picture, colormap)
    return with_caption(picture, caption) if caption else picture


def _text_fitting(draw: ImageDraw.ImageDraw, text: str, width: float, font) -> str:
    """`text`, shortened with an ellipsis until it fits in `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…" if text else ""


def with_colorbar(picture: Image.Image, colormap: str = "inferno", label: str = BAR_LABEL,
                  ticks=TICKS) -> Image.Image:
    """The picture with a vertical colour bar on its right: 0 at the bottom, 1 at the top, tick
    marks and their values at `ticks`, and `label` written upwards beside it (when it fits)."""
    h, w = picture.height, picture.width
    top, bottom = 6, max(7, h - 6)       # room for the end ticks' text
    ramp = np.linspace(1, 0, bottom - top)[:, None].repeat(BAR_WIDTH, 1)
    bar = Image.fromarray((Colormap(colormap)(ramp)[..., :3] * 255 + 0.5).astype(np.uint8))
    canvas = Image.new("RGB", (w + BAR_AREA, max(h, bottom + 6)), "white")
    canvas.paste(picture, (0, 0))
    x0 = w + 4
    canvas.paste(bar, (x0, top))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    for v in ticks:
        y = bottom - 1 - v * (bottom - top - 1)
        draw.line([(x0 + BAR_WIDTH, y), (x0 + BAR_WIDTH + 3, y)], fill="black")
        draw.text((x0 + BAR_WIDTH + 5, y), f"{v:g}", fill="black", font=font, anchor="lm")
    for text in (label, label.split(" ")[0]):
        length = draw.textlength(text, font=font)
        if length <= h - 4:
            strip = Image.new("RGB", (math.ceil(length) + 2, 14), "white")
            ImageDraw.Draw(strip).text((1, 7), text, fill="black", font=font, anchor="lm")
            strip = strip.rotate(90, expand=True)
            canvas.paste(strip, (w + BAR_AREA - 15, (h - strip.height) // 2))
            break
    return canvas


def with_caption(picture: Image.Image, caption: str) -> Image.Image:
    """The picture under a white strip holding `caption` (one line, shortened to fit)."""
    canvas = Image.new("RGB", (picture.width, picture.height + CAPTION_H), "white")
    canvas.paste(picture, (0, CAPTION_H))
    draw = ImageDraw.Draw(canvas)
    font = _font(12)
    draw.text((3, CAPTION_H // 2), _text_fitting(draw, caption, picture.width - 6, font),
              fill="black", font=font, anchor="lm")
    return canvas


def save_overlay(path: Path, image, saliency: np.ndarray, **kw) -> None:
    overlay(image, saliency, **kw).save(path, format="PNG", compress_level=3)


def caption_for(target: int, probability: float | None = None, label: str | None = None,
                key: str | None = None) -> str:
    """'class 1 "180" p=0.934 · gradcam@layer': the class, its name and softmax probability."""
    parts = f"class {target}" + (f' "{label}"' if label else "")
    if probability is not None:
        parts += f" p={probability:.3f}"
    return parts + (f" · {key}" if key else "")


def grid(image, maps: Mapping[str, np.ndarray], columns: int = 4, colormap: str = "inferno",
         alpha: float = 0.55, fit: Fit | None = None, caption: str | None = None) -> Image.Image:
    """One image and its maps side by side (the image first, then one labelled overlay per map
    key, e.g. every method and layer of an explainer), `columns` tiles per row, at the image's
    resolution (maps placed through `fit`), one colour bar, and `caption` above."""
    rgb = as_rgb8(image)
    tiles = [("image", Image.fromarray(rgb))]
    tiles += [(key, Image.fromarray(_blend(rgb, m, fit, alpha, colormap)))
              for key, m in maps.items()]
    h, w = rgb.shape[:2]
    rows = -(-len(tiles) // columns)
    cols = min(columns, len(tiles))
    canvas = Image.new("RGB", (cols * w, rows * (h + LABEL_H)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, tile) in enumerate(tiles):
        x, y = (i % columns) * w, (i // columns) * (h + LABEL_H)
        draw.text((x + 2, y + LABEL_H // 2), _text_fitting(draw, label, w - 4, _font()),
                  fill="black", font=_font(), anchor="lm")
        canvas.paste(tile, (x, y + LABEL_H))
    picture = with_colorbar(canvas, colormap)
    return with_caption(picture, caption) if caption else picture


BOX_WIDTH = 3            # draw_box's light stroke, between two 1 px dark edges


def draw_box(image, box, width: int = BOX_WIDTH, colour=(255, 255, 255),
             edge=(0, 0, 0)) -> np.ndarray:
    """A copy of the image (uint8 RGB [H,W,3], or as `as_rgb8` takes) with the rectangle `box`
    (x1, y1, x2, y2 in pixels, continuous coordinates: pixel i spans [i, i+1)) drawn on it: a
    `width`-pixel stroke of `colour`, with a 1 px `edge` on both sides so that it reads on any
    colour map, centred on the box's outermost pixels (columns ⌊x1⌋ and ⌈x2⌉−1, rows likewise);
    parts outside the image are left out."""
    rgb = as_rgb8(image)
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(map(math.isfinite, (x1, y1, x2, y2))) or x2 <= x1 or y2 <= y1:
        raise InputError(f"a box must be (x1, y1, x2, y2) with x2 > x1 and y2 > y1, not {box!r}")
    left, top = math.floor(x1), math.floor(y1)
    right, bottom = max(left, math.ceil(x2) - 1), max(top, math.ceil(y2) - 1)
    picture = Image.fromarray(rgb)
    draw = ImageDraw.Draw(picture)
    half = width // 2
    for grow, fill, stroke in ((half + 1, edge, width + 2), (half, colour, width)):
        draw.rectangle([left - grow, top - grow, right + grow, bottom + grow], outline=fill,
                       width=stroke)
    return np.array(picture)
