"""Timing in one process: explain time as a ratio to the model's own ONNX Runtime forward pass
(what `onnx-saliency bench` prints; the benchmarks/ scripts use the same clock)."""

from __future__ import annotations

import statistics
import time
from typing import Sequence

import numpy as np


def median_time(fn, repeat: int) -> float:
    """Median wall time of `repeat` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ratio_table(model, methods: Sequence[str], batches: Sequence[int] = (1, 8), repeat: int = 3,
                threads: int | None = None, size: Sequence[int] | None = None) -> list[dict]:
    """One row per (method, batch): explain time / ORT forward time, fused when available."""
    from .explainer import Explainer
    from .runtime import make_session

    rows = []
    for method in methods:
        ex = Explainer(model, methods=[method], threads=threads)
        forward = make_session(ex.canonical.model, threads=threads)
        shape = [d if isinstance(d, int) else None for d in ex.input_shape[1:]]
        if size:
            shape[-2:] = list(size)
        shape = [d if d is not None else 224 for d in shape]
        for batch in batches:
            x = np.random.default_rng(0).standard_normal([batch] + shape).astype(np.float32)
            t_fwd = median_time(lambda: forward.run(None, {ex.canonical.input_name: x}), repeat)
            t_ex = median_time(lambda: ex.explain(x, None), repeat)
            rows.append({"method": method, "batch": batch, "ratio": t_ex / t_fwd,
                         "forward_ms": 1e3 * t_fwd})
    return rows
