"""Export-and-explain from PyTorch (needs the optional `torch` extra; imported only when called)."""

from __future__ import annotations

import io
import warnings
from typing import Any, Sequence

from .errors import SaliencyError
from .explainer import Explainer
from .methods.base import Method


def from_torch(module: Any, example_input: Any, methods: Sequence[str | Method] | str = ("gradient",),
               layers: Sequence[str] | str | None = None, *, opset: int = 17, **explainer_kwargs
               ) -> Explainer:
    """Export `module` with `torch.onnx.export` (eval mode, dynamic batch) and return an
    Explainer over it. Layer names are the module's own (`layer4`, `features.29`, …): the
    exporter's node scopes carry them. The module's training flag is restored afterwards."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without torch
        raise SaliencyError("from_torch needs PyTorch: pip install 'onnx-saliency[torch]'.") from exc
    if not isinstance(module, torch.nn.Module):
        raise SaliencyError(f"from_torch needs a torch.nn.Module, not {type(module).__name__}.")
    x = example_input if isinstance(example_input, torch.Tensor) else torch.as_tensor(example_input)
    if x.dim() != 4:
        raise SaliencyError(f"example_input must be one [N,C,H,W] batch, got shape {tuple(x.shape)}.")
    was_training = module.training
    module.eval()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    finally:
        module.train(was_training)
    return Explainer(buffer.getvalue(), methods=methods, layers=layers, **explainer_kwargs)
