"""The package's exception types: each carries one sentence a user can act on."""


class SaliencyError(Exception):
    """Base class of every error onnx-saliency raises on purpose."""


class ModelLoadError(SaliencyError, ValueError):
    """The model could not be read: not a file, not ONNX, truncated, or an unsupported opset."""


class UnsupportedOpError(SaliencyError, NotImplementedError):
    """A node on the backward path has no rule for the requested method."""


class LayerNotFoundError(SaliencyError, KeyError):
    """A layer name matches neither a module path nor a tensor of the model."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InputError(SaliencyError, ValueError):
    """Images or targets passed to `explain` are malformed."""


class MethodError(SaliencyError, ValueError):
    """An unknown method name or an option a method does not accept."""


class ModelError(SaliencyError, ValueError):
    """A fact about the model stands in the way of what was asked: a name the explainer needs is
    taken, no signal reaches a layer, no classifier to contrast, a batch that cannot be stepped."""


class NumericError(SaliencyError, ArithmeticError):
    """The explainer graph produced NaN or Inf (float32 overflow inside the model)."""
