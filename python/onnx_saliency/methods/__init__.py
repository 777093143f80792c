"""Saliency methods. A method is the backward walk it needs plus an extraction head (base.py).

Pass names (`"gradcam"`) or objects carrying options (`GradCAM(relu=False)`, `TSGB(gamma=0.8)`,
`Extraction("identity3x3", "max_abs")`) to `Explainer`.
"""

from __future__ import annotations

from typing import Callable

from ..errors import MethodError
from .base import Method
from .ebp import EBP, ContrastiveEBP
from .gradcam import GradCAM
from .gradient import (Deconvnet, Gradient, GradientSum, GuidedBackprop, InputXGradient,
                       LinearApprox)
from .normgrad import EXTRACTIONS, Extraction, NormGrad, NormGradConv, NormGradSelective
from .tsgb import TSGB

REGISTRY: dict[str, Callable[[], Method]] = {
    "gradient": Gradient, "gradient_sum": GradientSum, "input_x_gradient": InputXGradient,
    "linear_approx": LinearApprox, "guided_backprop": GuidedBackprop, "deconvnet": Deconvnet,
    "gradcam": GradCAM, "normgrad": NormGrad, "normgrad_conv": NormGradConv,
    "normgrad_selective": NormGradSelective, "tsgb": TSGB, "ebp": EBP, "cebp": ContrastiveEBP,
}


def resolve(method: str | Method) -> Method:
    """A method object from a name or an object."""
    if isinstance(method, Method):
        return method
    if isinstance(method, str) and method in REGISTRY:
        return REGISTRY[method]()
    raise MethodError(f"Unknown method {method!r}; available: {', '.join(sorted(REGISTRY))}.")


__all__ = ["Method", "resolve", "REGISTRY", "Gradient", "GradientSum", "InputXGradient",
           "LinearApprox", "GuidedBackprop", "Deconvnet", "GradCAM", "Extraction", "EXTRACTIONS",
           "NormGrad", "NormGradConv", "NormGradSelective", "TSGB", "EBP",
           "ContrastiveEBP"]
