"""What a method is: the backward walk it needs plus an extraction head at a tapped tensor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..backward.context import RuleContext
from ..backward.rules import GRADIENT
from ..backward.walk import TableWalk, Walk

if TYPE_CHECKING:
    from ..layers import LayerNames


@dataclass(frozen=True)
class Method:
    """Base of every method. Subclasses set `name`, implement `head` and, unless their signal
    is the true gradient, `walk`.

    `layer_method` methods are tapped at layers (`Explainer(layers=…)`, or their own `layer`
    option); the others read the signal at the image input.
    """

    name: ClassVar[str] = ""
    layer_method: ClassVar[bool] = False
    default_at_input: ClassVar[bool] = True  # for layer methods: default tap is the input
    runtime_weights: ClassVar[bool] = True   # its rules work on runtime weights (meta=True)

    def walk(self, layers: LayerNames) -> Walk:
        """The backward walk from the seeds to the taps, on the model whose layers are `layers`
        (methods with equal walks share one): by default the true gradient."""
        return TableWalk(GRADIENT)

    def head(self, ctx: RuleContext, x: str, g: str) -> str:  # pragma: no cover - abstract
        """The map [N, h, w] from the activation x and the signal g at a tap; `ctx` is the
        context of the walk that made g (ctx.b emits)."""
        raise NotImplementedError

    def default_tap(self, index, image: str) -> str | None:
        """The tensor a layer method taps when no layer is given (None: the general default)."""
        return None

    @property
    def layer(self) -> str | None:
        return getattr(self, "at", None)
