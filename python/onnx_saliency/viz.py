"""Pictures: heat-map overlays of saliency maps on their images (Pillow + the `cmap` colour maps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cmap import Colormap
from PIL import Image


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
            colormap: str = "inferno") -> Image.Image:
    """Blend a colour-mapped map onto an RGB uint8 image [H,W,3] of the same size."""
    heat = Colormap(colormap)(display_map(saliency))[..., :3]
    base = np.asarray(image, np.float64) / 255.0
    mixed = (1 - alpha) * base + alpha * heat
    return Image.fromarray(np.clip(mixed * 255 + 0.5, 0, 255).astype(np.uint8))


def save_overlay(path: Path, image: np.ndarray, saliency: np.ndarray, **kw) -> None:
    overlay(image, saliency, **kw).save(path)
