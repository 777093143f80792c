"""Excitation backprop (docs/methods.md §1): the EBP rule table, map Σ_c p at the layer.

ebp:  p from the seeds (the walk of rules/ebp.py), map Σ_c p.
cebp: contrastive (ContrastiveWalk): p⁺ from the classifier, p⁻ from the classifier with
      negated weights, both to the contrast layer (the last fully-connected layer's input: VGG16
      relu7, ResNet50's pooled layer4), their difference p⁺ − p⁻ walked on to the layer with the
      EBP rules; map ReLU(Σ_c p).
Default layers (docs/methods.md §1): VGG16 features.23 (pool4), ResNet50 layer3, and the same stage in
the other VGGs and ResNets; other networks: the general default (the last spatial tensor before
the classifier's global pooling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..backward import classifier
from ..backward.rules.ebp import EBP as EBP_RULES, EBPOptions
from ..backward.walk import Seeds, Signals, TableWalk, backward
from ..errors import ModelError
from ..graph import GraphBuilder, GraphIndex
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
    runtime_weights = False   # its rules are built from the weights' values
    layer_method = True
    default_at_input = False
    at: str | None = None

    def walk(self, layers):
        return TableWalk(EBP_RULES, EBPOptions())

    def default_tap(self, index, image):
        return _default_tap(index, image)

    def head(self, ctx, x, g):
        return aggregate(ctx.b, g, "sum")


@dataclass(frozen=True)
class ContrastiveEBP(EBP):
    """Contrastive excitation backprop; map ReLU(Σ_c p). `contrast`: the contrast layer
    (default: the last fully-connected layer's input)."""

    name = "cebp"
    contrast: str | None = None

    def walk(self, layers):
        if self.contrast is not None:
            return ContrastiveWalk(layers.resolve(self.contrast))
        contrast = classifier.classifier_input(layers.index)
        if contrast is None:
            raise ModelError("cebp needs a fully-connected classifier to contrast; give "
                             "ContrastiveEBP(contrast=<layer>) explicitly.")
        return ContrastiveWalk(contrast)

    def head(self, ctx, x, g):
        return ctx.b.op("Relu", aggregate(ctx.b, g, "sum"))


@dataclass(frozen=True)
class ContrastiveWalk:
    """c-EBP's walk: p⁺ and p⁻ (the classifier's weights negated) from the seeds to `contrast`,
    then p⁺ − p⁻ from there to the taps, all with the EBP rules."""

    contrast: str

    def __call__(self, b: GraphBuilder, index: GraphIndex, seeds: Seeds,
                 wrt: Sequence[str]) -> Signals:
        c = self.contrast
        pos = backward(b, index, EBP_RULES, seeds, [c], EBPOptions())[c]
        negated = EBPOptions(negated=classifier.classifier(index))
        neg = backward(b, index, EBP_RULES, seeds, [c], negated)[c]
        if pos is None or neg is None:
            raise ModelError(f"No signal reaches the contrast layer '{c}'.")
        diff = b.op("Sub", pos, neg)
        wrt = list(wrt)
        result = backward(b, index, EBP_RULES, {c: diff}, [t for t in wrt if t != c], EBPOptions())
        result.update({t: diff for t in wrt if t == c})
        return result

    def warning(self, index, seeds, wrt):
        return None
