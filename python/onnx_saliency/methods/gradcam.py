"""Grad-CAM (docs/methods.md §1): M_u = ReLU(Σ_c x_{c,u} · ḡ_c), ḡ_c the spatial mean of g_c."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Method


@dataclass(frozen=True)
class GradCAM(Method):
    """Grad-CAM at any 4-D layer; `relu=False` keeps the signed map (Captum's default)."""

    name = "gradcam"
    layer_method = True
    default_at_input = False
    relu: bool = True
    at: str | None = None

    def head(self, ctx, x, g):
        b = ctx.b
        weights = b.reduce("ReduceMean", g, [2, 3], keepdims=True)
        cam = b.reduce("ReduceSum", b.op("Mul", x, weights), [1], keepdims=False)
        return b.op("Relu", cam) if self.relu else cam
