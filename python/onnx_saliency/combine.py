"""Multi-layer combination (docs/methods.md §2), inside the explainer graph.

Per layer: M_l = minmax(resize(S_l)) over each image's whole map (a constant map gives 0, no
division by zero). Sum rule M = Σ_l w̃_l M_l; product rule M = Π_l M_l^{w̃_l}; w̃ = w / Σ w.
Weights: "uniform", "linear" (w_l = l/L in the order the layers are given), or a list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import MethodError
from .graph import GraphBuilder

COMBINATIONS = ("sum", "product")   # the values of combine=: how the layers' maps merge


@dataclass(frozen=True)
class Combination:
    """How the per-layer maps of each layer method become one map: `rule` is one of
    COMBINATIONS, `weights` "uniform", "linear" or one weight per layer."""

    rule: str
    weights: str | tuple[float, ...]

    def normalized_weights(self, n: int) -> np.ndarray:
        if self.weights == "uniform":
            w = np.ones(n)
        elif self.weights == "linear":
            w = np.arange(1, n + 1) / n
        else:
            w = np.asarray(self.weights, np.float64)
            if w.shape != (n,):
                raise MethodError(f"weights has {w.size} values for {n} layers; give one per layer.")
        return w / w.sum()

    def keys(self, requests) -> list[str]:
        return list(dict.fromkeys(_combined_key(r) for r in requests))

    def apply(self, b: GraphBuilder, maps: dict[str, str], requests) -> dict[str, str]:
        """Replace each layer method's per-layer maps by their combination."""
        groups: dict[str, list[str]] = {}
        for req in requests:
            groups.setdefault(_combined_key(req), []).append(maps[req.key])
        out = {}
        for key, layer_maps in groups.items():
            if len(layer_maps) == 1 and "@" not in key:
                out[key] = layer_maps[0]
                continue
            w = self.normalized_weights(len(layer_maps))
            normed = [minmax(b, m) for m in layer_maps]
            if self.rule == "sum":
                terms = [b.op("Mul", m, b.const(np.float32(wi))) for m, wi in zip(normed, w)]
                out[key] = b.sum(terms)
            else:
                terms = [b.op("Pow", m, b.const(np.float32(wi))) for m, wi in zip(normed, w)]
                result = terms[0]
                for t in terms[1:]:
                    result = b.op("Mul", result, t)
                out[key] = result
        return out


def _combined_key(req) -> str:
    return f"{req.method.name}@combined" if req.method.layer_method else req.key


def minmax(b: GraphBuilder, m: str) -> str:
    """(M − min) / (max − min) per image over [N, H, W]; 0 where the map is constant."""
    lo = b.reduce("ReduceMin", m, [1, 2], keepdims=True)
    hi = b.reduce("ReduceMax", m, [1, 2], keepdims=True)
    span = b.op("Max", b.op("Sub", hi, lo), b.const(np.float32(1e-30)))
    return b.op("Div", b.op("Sub", m, lo), span)


def combination(rule: str | None, weights: str | Sequence[float], requests) -> Combination | None:
    """The combination asked for, validated (None: keep one map per layer)."""
    if rule is None:
        return None
    if rule not in COMBINATIONS:
        raise MethodError(f"combine must be 'sum' or 'product', not {rule!r}.")
    if isinstance(weights, str):
        if weights not in ("uniform", "linear"):
            raise MethodError(f"weights must be 'uniform', 'linear' or a list, not {weights!r}.")
        w: str | tuple[float, ...] = weights
    else:
        w = tuple(float(x) for x in weights)
        if any(not np.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
            raise MethodError("weights must be non-negative finite numbers with a positive sum.")
    if not any(r.method.layer_method for r in requests):
        raise MethodError("combine needs a layer method (e.g. normgrad_selective) and layers.")
    return Combination(rule, w)
