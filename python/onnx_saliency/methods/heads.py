"""Extraction heads: turn (activation x, backward signal g) at a tapped tensor into a map.

All heads return an [N, h, w] tensor (channels aggregated, spatial grid of the tap).
Channel aggregations: sum Σ_c t; max max_c t; max_abs max_c |t|; l2 ‖t‖₂; pos_l2 ‖max(t,0)‖₂.
"""

from __future__ import annotations

from ..errors import MethodError
from ..graph import GraphBuilder

AGGREGATIONS = ("sum", "max", "max_abs", "l2", "pos_l2")


def aggregate(b: GraphBuilder, t: str, how: str) -> str:
    """Aggregate over the channel axis 1, dropping it."""
    if how == "sum":
        return b.reduce("ReduceSum", t, [1], keepdims=False)
    if how == "max":
        return b.reduce("ReduceMax", t, [1], keepdims=False)
    if how == "max_abs":
        return b.reduce("ReduceMax", b.op("Abs", t), [1], keepdims=False)
    if how == "l2":
        return b.reduce("ReduceL2", t, [1], keepdims=False)
    if how == "pos_l2":
        return b.reduce("ReduceL2", b.op("Relu", t), [1], keepdims=False)
    raise MethodError(f"Unknown channel aggregation '{how}'; choose one of {', '.join(AGGREGATIONS)}.")


def check_aggregation(how: str) -> None:
    if how not in AGGREGATIONS:
        raise MethodError(
            f"Unknown channel aggregation '{how}'; choose one of {', '.join(AGGREGATIONS)}.")
