"""Timing in one process: explain time as a ratio to the model's own ONNX Runtime forward pass
(what `onnx-saliency bench` prints; the benchmarks/ scripts use the same clock)."""

from __future__ import annotations

import math
import statistics
import time
from typing import Sequence

import numpy as np


def paired_ratio(fn, reference, repeat: int, min_seconds: float = 0.0) -> tuple[float, float]:
    """Median over the rounds of time(fn) / time(reference), the two timed back to back in each
    round (after one warm-up call each), and the median reference time. Pairing keeps the
    ratio honest on a shared machine whose speed drifts between (and during) measurements.
    Rounds: `repeat`, or more where that is under `min_seconds` of rounds (as the warm-up
    calls took): a 10 ms forward pass swings 2x from call to call on a busy 2-core machine, and
    a median of a few such ratios is noise."""
    start = time.perf_counter()
    fn()
    reference()
    warm = time.perf_counter() - start
    rounds = max(repeat, math.ceil(min_seconds / warm) if warm > 0 else repeat)
    ratios, refs = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        reference()
        mid = time.perf_counter()
        fn()
        end = time.perf_counter()
        ratios.append((end - mid) / (mid - start))
        refs.append(mid - start)
    return statistics.median(ratios), statistics.median(refs)


def ratio_table(model, methods: Sequence[str], batches: Sequence[int] = (1, 8), repeat: int = 3,
                threads: int | None = None, size: Sequence[int] | None = None,
                runtime: str = "onnxruntime") -> list[dict]:
    """One row per (method, batch): explain time / forward time, both in `runtime` (ONNX
    Runtime: fused when available; OpenVINO: the portable graph and its own forward)."""
    from .explainer import Explainer

    rows = []
    for method in methods:
        ex = Explainer(model, methods=[method], threads=threads, runtime=runtime)
        forward = ex.forward_session()
        shape = [d if isinstance(d, int) else None for d in ex.input_shape[1:]]
        if size:
            shape[-2:] = list(size)
        shape = [d if d is not None else 224 for d in shape]
        for batch in batches:
            x = np.random.default_rng(0).standard_normal([batch] + shape).astype(np.float32)
            ratio, t_fwd = paired_ratio(
                lambda: ex.explain(x, None),
                lambda: forward.run(None, {ex.input_name: x}), repeat)
            rows.append({"method": method, "batch": batch, "ratio": ratio,
                         "forward_ms": 1e3 * t_fwd})
    return rows
