"""The rule tables: op type -> backward rule, one table per backward method.

Methods of the gradient family differ only at ReLU-like units (Relu, LeakyRelu, PRelu, ReLU6's
Clip(0, M): activations.relu_like); TSGB replaces Conv, BatchNormalization and
the fully-connected rules; EBP the linear ops, residual Add and the activations; everything else
is the true gradient.
"""

from __future__ import annotations

from . import activations, conv, ebp, elementwise, linear, normalization, pooling, shape_ops, tsgb

GRADIENT = {**conv.RULES, **linear.RULES, **elementwise.RULES, **activations.RULES,
            **pooling.RULES, **normalization.RULES, **shape_ops.RULES}

RULE_TABLES = {
    "gradient": GRADIENT,
    "guided_backprop": {**GRADIENT, **activations.GUIDED_RULES},
    "deconvnet": {**GRADIENT, **activations.DECONVNET_RULES},
    "tsgb": {**GRADIENT, **tsgb.RULES},
    "ebp": {**GRADIENT, **ebp.RULES},
}
# contrastive EBP walks the EBP table twice to the contrast layer, then once more (explainer.py)
RULE_TABLES["cebp"] = RULE_TABLES["ebp"]
