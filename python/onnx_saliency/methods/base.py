"""What a method is: a backward rule table (by name) plus an extraction head at a tapped tensor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..graph import GraphBuilder


@dataclass(frozen=True)
class Method:
    """Base of every method. Subclasses set `name`, `rule` and implement `head`.

    `layer_method` methods are tapped at layers (`Explainer(layers=…)`, or their own `layer`
    option); the others read the signal at the image input.
    """

    name: ClassVar[str] = ""
    rule: ClassVar[str] = "gradient"
    layer_method: ClassVar[bool] = False
    default_at_input: ClassVar[bool] = True  # for layer methods: default tap is the input
    runtime_weights: ClassVar[bool] = True   # its rules work on runtime weights (meta=True)

    def head(self, b: GraphBuilder, x: str, g: str) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def default_tap(self, index, image: str) -> str | None:
        """The tensor a layer method taps when no layer is given (None: the general default)."""
        return None

    def rule_options(self) -> dict:
        """Options of the backward rules (methods with equal rule and options share a walk)."""
        return {}

    @property
    def layer(self) -> str | None:
        return getattr(self, "at", None)
