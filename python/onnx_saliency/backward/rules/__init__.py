"""The backward rules, one function per op type, each registered in its rule table (table.py).

GRADIENT (the true gradient) is filled by the modules imported here: conv, linear, elementwise,
activations, pooling, normalization, shape_ops. The methods' tables are made over it and change
only some rules: GUIDED_BACKPROP and DECONVNET at ReLU-like units (activations.py), TSGB at Conv,
BatchNormalization, the fully-connected layers, Relu and MaxPool (tsgb.py), EBP at the linear
ops, residual Add and the activations (ebp.py). Import the package before walking the gradient
table: importing it registers every gradient rule.
"""

from __future__ import annotations

from ..table import GRADIENT
from . import activations, conv, elementwise, linear, normalization, pooling, shape_ops
from . import einsum, reductions, resize  # noqa: F401  (registers their rules)
from . import indexing  # noqa: F401  (registers its rules)
from . import quantized  # noqa: F401  (registers its rules)
from .activations import DECONVNET, GUIDED_BACKPROP

__all__ = ["GRADIENT", "GUIDED_BACKPROP", "DECONVNET", "activations", "conv", "elementwise",
           "linear", "normalization", "pooling", "shape_ops"]
