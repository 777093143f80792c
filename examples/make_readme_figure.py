"""Make docs/overlays.png: several methods on the bundled real image (the README's picture).

    python examples/make_readme_figure.py
"""

from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

import onnx_saliency as osal
from onnx_saliency import viz

data = resources.files("onnx_saliency") / "data"
with Image.open(data / "sample_text.png") as img:
    rgb = np.asarray(img.convert("RGB").resize((192, 48)))
x = ((rgb.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5)[None].astype(np.float32)
ex = osal.Explainer(data / "text_direction_cls.onnx",
                    methods=["gradient", "guided_backprop", "gradcam", "normgrad_selective",
                             "tsgb", "ebp"])
maps = {k: v[0] for k, v in ex.explain(x).items()}
out = Path(__file__).resolve().parents[1] / "docs" / "overlays.png"
viz.grid(rgb, maps, columns=4).save(out)
print(f"wrote {out}")
