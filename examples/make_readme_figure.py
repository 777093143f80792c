"""Make docs/overlays.png: several methods on the bundled real image (the README's picture).
Each panel is first checked against the map of a one-method explainer of its name.

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
model = data / "text_direction_cls.onnx"
methods = ["gradient", "guided_backprop", "gradcam", "normgrad_selective", "tsgb", "ebp"]
maps = {k: v[0] for k, v in osal.Explainer(model, methods=methods).explain(x).items()}
for method in methods:
    (key, alone), = osal.Explainer(model, methods=[method]).explain(x).items()
    np.testing.assert_allclose(maps[key], alone[0], rtol=0, atol=1e-4 * np.abs(alone).max(), err_msg=key)
out = Path(__file__).resolve().parents[1] / "docs" / "overlays.png"
viz.grid(rgb, maps, columns=4).save(out)
print(f"wrote {out}")
