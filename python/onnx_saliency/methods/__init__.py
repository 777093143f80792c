"""Saliency methods. A method is a backward rule table plus an extraction head (see base.py).

Pass names (`"gradcam"`) or objects carrying options (`GradCAM(relu=False)`) to `Explainer`.
"""

from __future__ import annotations

from ..errors import MethodError
from .base import Method
from .gradcam import GradCAM
from .gradient import (Deconvnet, Gradient, GradientSum, GuidedBackprop, InputXGradient,
                       LinearApprox)

REGISTRY: dict[str, type[Method]] = {cls.name: cls for cls in (
    Gradient, GradientSum, InputXGradient, LinearApprox, GuidedBackprop, Deconvnet, GradCAM)}


def resolve(method: str | Method) -> Method:
    """A method object from a name or an object."""
    if isinstance(method, Method):
        return method
    if isinstance(method, str) and method in REGISTRY:
        return REGISTRY[method]()
    raise MethodError(f"Unknown method {method!r}; available: {', '.join(sorted(REGISTRY))}.")


__all__ = ["Method", "resolve", "REGISTRY", "Gradient", "GradientSum", "InputXGradient",
           "LinearApprox", "GuidedBackprop", "Deconvnet", "GradCAM"]
