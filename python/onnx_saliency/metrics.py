"""Evaluation metrics of saliency maps.

class_sensitivity (METHODS.md §3): p = softmax(f(x)); c_max = argmax p, c_min = argmin p;
ρ = Spearman rank correlation over all pixels between S_{c_max} + 1e-6 and S_{c_min} + 1e-6
(signed maps at input resolution). Reported per image and as mean ± std over the set, NaN
(e.g. a constant map) ignored. Lower = more class-sensitive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

from .errors import MethodError

OFFSET = 1e-6


@dataclass(frozen=True)
class ClassSensitivity:
    per_image: np.ndarray   # ρ per image (NaN where undefined)
    mean: float
    std: float


def class_sensitivity(explainer, images: np.ndarray, key: str | None = None,
                      batch_size: int = 16) -> ClassSensitivity:
    """Spearman ρ between the maps of each image's most and least likely classes.

    `key`: which map of the explainer (default: its only map)."""
    names = explainer.map_names
    if key is None:
        if len(names) != 1:
            raise MethodError(f"The explainer makes several maps {names}; pass key=.")
        key = names[0]
    elif key not in names:
        raise MethodError(f"No map named {key!r}; the explainer makes {names}.")
    rhos = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        logits = explainer.run(x, None)["logits"]
        scores = logits.reshape(len(x), logits.shape[1], -1).sum(-1) if logits.ndim > 2 else logits
        hi = explainer.explain(x, scores.argmax(1))[key]
        lo = explainer.explain(x, scores.argmin(1))[key]
        for a, b in zip(hi, lo):
            rhos.append(spearmanr(a.ravel() + OFFSET, b.ravel() + OFFSET).statistic)
    rho = np.asarray(rhos, np.float64)
    return ClassSensitivity(rho, float(np.nanmean(rho)), float(np.nanstd(rho)))
