"""TSGB (docs/methods.md §5): the TSGB rule table, then M = Σ_c x ⊙ ĝ_x (signed relevance).

At the input (default) x is the image; `tsgb@<layer>` reads the relevance at that layer.
`normalize=True` gives the display form max(M, 0) / max|M| per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backward.rules import tsgb as tsgb_rules
from ..backward.walk import TableWalk
from ..errors import MethodError
from .base import Method


@dataclass(frozen=True)
class TSGB(Method):
    """Target-selective gradient backprop. gamma: TSGB-FC's γ (0.75–0.9 suggested for ResNets);
    fc: "last" (the classifier only, the authors' code) or "all" fully-connected layers;
    conv_head: on a model without FC layers (detectors, segmenters), TSGB-FC location by
    location at the 1×1 convs that score the classes, instead of TSGB-Conv there."""

    name = "tsgb"
    runtime_weights = False   # its rules are built from the weights' values
    layer_method = True
    default_at_input = True
    gamma: float = 1.0
    fc: str = "last"
    conv_head: bool = False
    normalize: bool = False
    at: str | None = None

    def __post_init__(self):
        if self.fc not in ("last", "all"):
            raise MethodError(f"TSGB fc must be 'last' or 'all', not {self.fc!r}.")
        if not np.isfinite(self.gamma):
            raise MethodError("TSGB gamma must be a finite number.")

    def walk(self, layers):
        return TableWalk(tsgb_rules.TSGB, tsgb_rules.TSGBOptions(float(self.gamma), self.fc,
                                                                 bool(self.conv_head)))

    def head(self, ctx, x, g):
        b = ctx.b
        m = b.squeeze(tsgb_rules.relevance(ctx, x, g), [1])
        if not self.normalize:
            return m
        peak = b.reduce("ReduceMax", b.op("Abs", m), [1, 2], keepdims=True)
        return b.op("Div", b.op("Relu", m), b.op("Max", peak, b.const(np.float32(1e-30))))
