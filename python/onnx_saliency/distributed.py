"""Whole data sets beyond one machine: the explainer graph as a per-worker payload.

`BatchExplainer` holds only the saved explainer graph (bytes) and opens its ONNX Runtime session
lazily on the worker, so it pickles cheaply and plugs into existing engines unchanged:

    graph = open("explainer.onnx", "rb").read()           # Explainer(...).save(...)
    # Ray Data: a callable class per worker
    ds.map_batches(BatchExplainer, fn_constructor_args=(graph,), batch_format="numpy")
    # Dask: one payload, mapped over partitions of batches
    dask.bag.from_sequence(batches).map(BatchExplainer(graph)).compute()

A batch is a mapping {"image": float32 [N,C,H,W], "target": int64 [N] (−1 = top-1, optional)},
plus, for a graph saved with another target kind, its other inputs by name (`target_mask`,
`target_anchor`, `target_box`, …: the graph's metadata `onnx_saliency.target` lists them); the
result is the same mapping plus the explained output and one [N,H,W] array per map.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import onnx

from .errors import InputError
from .runtime import make_session


class BatchExplainer:
    def __init__(self, graph: bytes, providers=None, threads: int | None = None):
        self.graph = bytes(graph)
        self.providers = providers
        self.threads = threads
        self._session = None

    def __getstate__(self):  # the session stays on its worker
        return {"graph": self.graph, "providers": self.providers, "threads": self.threads,
                "_session": None}

    @property
    def session(self):
        if self._session is None:
            self._session = make_session(onnx.load_from_string(self.graph), self.providers,
                                         self.threads)
        return self._session

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "image" not in batch:
            raise InputError("A batch needs an 'image' array [N,C,H,W].")
        images = np.ascontiguousarray(batch["image"], np.float32)
        inputs = self.session.get_inputs()
        feeds = {inputs[0].name: images}
        for spec in inputs[1:]:
            value = batch.get(spec.name)
            if value is None and spec.name == "target":
                value = np.full(len(images), -1)          # each image's top-1
            if value is None:
                raise InputError(f"The explainer graph takes '{spec.name}' ({spec.type} "
                                 f"{spec.shape}); add it to the batch.")
            feeds[spec.name] = np.ascontiguousarray(
                value, np.int64 if "int64" in spec.type else np.bool_ if "bool" in spec.type
                else np.float32)
        outs = self.session.run(None, feeds)
        names = [o.name for o in self.session.get_outputs()]
        return {**batch, "logits": outs[0], **dict(zip(names[1:], outs[1:]))}
