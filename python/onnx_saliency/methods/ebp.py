"""Excitation backprop (METHODS.md §1): the EBP rule table, map Σ_c p at the layer.

ebp:  p from a one-hot on the target (the walk of rules/ebp.py), map Σ_c p.
cebp: contrastive: p⁺ from the classifier, p⁻ from the classifier with negated weights, both to
      the contrast layer (the last fully-connected layer's input: VGG16 relu7, ResNet50's pooled
      layer4), their difference walked on to the layer with the EBP rules; map ReLU(Σ_c p).
Default layers (METHODS.md): VGG16 features.23 (pool4), ResNet50 layer3, and the same stage in
the other VGGs and ResNets; other networks: the general default (the last spatial tensor before
the classifier's global pooling).
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Method
from .heads import aggregate


def _default_tap(index, image):
    """The paper's layer by family, else None (the explainer's general default): ResNets
    layer3; VGGs the fourth pool's output, pool4 (VGG16 features.23, VGG16-BN features.33,
    VGG11 features.15)."""
    from ..layers import LayerNames, architecture, vgg_pools
    names = LayerNames(index, image)
    family = architecture(names)
    if family == "resnet":
        return names.resolve("layer3")
    if family == "vgg":
        return vgg_pools(names)[3].output[0]
    return None


@dataclass(frozen=True)
class EBP(Method):
    """Excitation backprop at a layer; map Σ_c p."""

    name = "ebp"
    rule = "ebp"
    runtime_weights = False   # its rules are built from the weights' values
    layer_method = True
    default_at_input = False
    at: str | None = None

    def default_tap(self, index, image):
        return _default_tap(index, image)

    def head(self, b, x, g):
        return aggregate(b, g, "sum")


@dataclass(frozen=True)
class ContrastiveEBP(EBP):
    """Contrastive excitation backprop; map ReLU(Σ_c p). `contrast`: the contrast layer
    (default: the last fully-connected layer's input)."""

    name = "cebp"
    rule = "cebp"
    contrast: str | None = None

    def rule_options(self) -> dict:
        return {"contrast": self.contrast}

    def head(self, b, x, g):
        return b.op("Relu", aggregate(b, g, "sum"))
