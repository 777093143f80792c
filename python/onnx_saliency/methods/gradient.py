"""The gradient family (docs/methods.md §1): one backward rule each, then a channel aggregation.

gradient:         g = ∂y_t/∂x (true gradient), map max_c |g|   (the "bias" extraction)
gradient_sum:     Σ_c g
input_x_gradient: Σ_c x_c g_c at the input (signed)
linear_approx:    Σ_c x_c g_c at any layer (signed; the "scaling" extraction)
guided_backprop:  ReLU backward max(g,0)·1[x>0], map max_c |g|
deconvnet:        ReLU backward max(g,0), map max_c |g|
"""

from __future__ import annotations

from dataclasses import dataclass

from ..backward.rules import DECONVNET, GUIDED_BACKPROP
from ..backward.walk import TableWalk
from .base import Method
from .heads import aggregate, check_aggregation


@dataclass(frozen=True)
class Gradient(Method):
    """Raw gradient at the input; `aggregate` over channels (default max |·|, TorchRay's)."""

    name = "gradient"
    aggregate: str = "max_abs"

    def __post_init__(self):
        check_aggregation(self.aggregate)

    def head(self, ctx, x, g):
        return aggregate(ctx.b, g, self.aggregate)


@dataclass(frozen=True)
class GradientSum(Gradient):
    """Σ_c g: the signed channel sum of the gradient."""

    name = "gradient_sum"
    aggregate: str = "sum"


@dataclass(frozen=True)
class GuidedBackprop(Gradient):
    """Guided backprop: ReLU passes max(g, 0) where x > 0."""

    name = "guided_backprop"

    def walk(self, layers):
        return TableWalk(GUIDED_BACKPROP)


@dataclass(frozen=True)
class Deconvnet(Gradient):
    """Deconvnet: ReLU passes max(g, 0) regardless of the forward sign."""

    name = "deconvnet"

    def walk(self, layers):
        return TableWalk(DECONVNET)


@dataclass(frozen=True)
class InputXGradient(Method):
    """Σ_c x_c · g_c at the image input (signed)."""

    name = "input_x_gradient"

    def head(self, ctx, x, g):
        return aggregate(ctx.b, ctx.b.op("Mul", x, g), "sum")


@dataclass(frozen=True)
class LinearApprox(Method):
    """Linear approximation at a layer: Σ_c x_c · g_c (signed), the scaling extraction."""

    name = "linear_approx"
    layer_method = True
    default_at_input = True
    at: str | None = None

    def head(self, ctx, x, g):
        return aggregate(ctx.b, ctx.b.op("Mul", x, g), "sum")
