"""Pictures: heat-map overlays of saliency maps on their images, with a colour bar, and a grid
comparing methods and layers for one image (Pillow for drawing, `cmap` for perceptually uniform
colour maps)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
from cmap import Colormap
from PIL import Image, ImageDraw

BAR_WIDTH = 14


def display_map(saliency: np.ndarray) -> np.ndarray:
    """[H,W] map -> [0,1] for display: max(M,0)/max M for signed maps with a positive part, else
    |M|/max|M|; a constant map becomes all zeros."""
    m = np.asarray(saliency, np.float64)
    if m.max() > 0 and m.min() < 0:
        m = np.maximum(m, 0)
    m = np.abs(m)
    top = m.max()
    return m / top if top > 0 else np.zeros_like(m)


def overlay(image: np.ndarray, saliency: np.ndarray, alpha: float = 0.55,
            colormap: str = "inferno", colorbar: bool = False) -> Image.Image:
    """Blend a colour-mapped map onto an RGB uint8 image [H,W,3] of the same size; with
    `colorbar`, a bar on the right runs from 0 (bottom) to 1 (top) of the display scale."""
    heat = Colormap(colormap)(display_map(saliency))[..., :3]
    base = np.asarray(image, np.float64) / 255.0
    mixed = (1 - alpha) * base + alpha * heat
    picture = Image.fromarray(np.clip(mixed * 255 + 0.5, 0, 255).astype(np.uint8))
    return with_colorbar(picture, colormap) if colorbar else picture


def with_colorbar(picture: Image.Image, colormap: str = "inferno") -> Image.Image:
    """The picture with a vertical colour bar (0 at the bottom, 1 at the top) on its right."""
    h = picture.height
    ramp = np.linspace(1, 0, h)[:, None].repeat(BAR_WIDTH, 1)
    bar = Image.fromarray((Colormap(colormap)(ramp)[..., :3] * 255 + 0.5).astype(np.uint8))
    canvas = Image.new("RGB", (picture.width + BAR_WIDTH + 4, h), "white")
    canvas.paste(picture, (0, 0))
    canvas.paste(bar, (picture.width + 4, 0))
    return canvas


def save_overlay(path: Path, image: np.ndarray, saliency: np.ndarray, **kw) -> None:
    overlay(image, saliency, **kw).save(path)


def grid(image: np.ndarray, maps: Mapping[str, np.ndarray], columns: int = 4,
         colormap: str = "inferno", alpha: float = 0.55) -> Image.Image:
    """One image and its maps side by side (the image first, then one labelled overlay per map
    key, e.g. every method and layer of an explainer), `columns` tiles per row."""
    tiles = [("image", Image.fromarray(np.asarray(image, np.uint8)))]
    tiles += [(key, overlay(image, m, alpha, colormap)) for key, m in maps.items()]
    h, w = np.asarray(image).shape[:2]
    label_h = 14
    rows = -(-len(tiles) // columns)
    cols = min(columns, len(tiles))
    canvas = Image.new("RGB", (cols * w, rows * (h + label_h)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, tile) in enumerate(tiles):
        x, y = (i % columns) * w, (i // columns) * (h + label_h)
        draw.text((x + 2, y + 1), label[: max(4, w // 6)], fill="black")
        canvas.paste(tile, (x, y + label_h))
    return with_colorbar(canvas, colormap)
