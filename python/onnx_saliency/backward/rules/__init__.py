"""The rule tables: op type -> backward rule, one table per backward method.

Methods of the gradient family differ only at ReLU; everything else is the true gradient.
"""

from __future__ import annotations

from . import activations, conv, elementwise, linear, normalization, pooling, shape_ops

GRADIENT = {**conv.RULES, **linear.RULES, **elementwise.RULES, **activations.RULES,
            **pooling.RULES, **normalization.RULES, **shape_ops.RULES}

RULE_TABLES = {
    "gradient": GRADIENT,
    "guided_backprop": {**GRADIENT, "Relu": activations.relu_guided},
    "deconvnet": {**GRADIENT, "Relu": activations.relu_deconvnet},
}
