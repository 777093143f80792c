"""What a map explains: targets as data, one semantics for every method.

A target is the scalar score s per image whose input gradient the methods take apart; it builds
the seeds ∂s/∂output (cotangents at the explained output) inside the explainer graph, from graph
inputs it declares, so a saved graph takes the target's data as inputs (names, dtypes and shapes
in the model's metadata, key `onnx_saliency.target`) and any host can feed them. Walks and
methods see only the seeds.

    Class(k)             s = logit_k (summed over space for a dense output); k None: top-1
    Region(k, mask)      s = Σ_{(h,w) ∈ mask} out[k, h, w] on a dense output [N, K, H, W];
                         mask None: the pixels where the model predicts k (argmax over K)
    Embedding(r)         s = cos(e, r) for an embedding e [N, D] (or [N, D, 1, 1])
    Cotangent(a)         s = ⟨a, output⟩: the seed is `a` itself (the general vector-Jacobian product)

Graph inputs (N: the batch): Class `target` int64 [N] (−1: the image's top-1; another value
outside [0, K) fails the run, or gives NaN maps where the runtime does not check Gather);
Region `target` int64 [N] and, with a mask, `target_mask` bool [N, H, W]; Embedding
`target_reference` float32 [N, D]; Cotangent `target_cotangent` float32 [N, *output dims].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from .errors import InputError, ModelError
from .graph import GraphBuilder, GraphIndex

Seeds = dict   # forward tensor -> its cotangent (backward.walk.Seeds)

BATCH = "N"
CLASS = "target"
MASK = "target_mask"
REFERENCE = "target_reference"
COTANGENT = "target_cotangent"


@dataclass(frozen=True)
class InputSpec:
    """One graph input a target reads: name, ONNX element type, dims after the batch, meaning."""

    name: str
    elem: int
    dims: tuple                  # after the batch: ints, or None where not known statically
    meaning: str

    def value_info(self) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(self.name, self.elem, [BATCH, *self.dims])

    def describe(self) -> dict:
        return {"dtype": TensorProto.DataType.Name(self.elem).lower(),
                "shape": [BATCH, *self.dims], "meaning": self.meaning}


def _shape(index: GraphIndex, output: str) -> tuple | None:
    return index.shapes.get(output)


def _static(dim) -> int | None:
    return dim if isinstance(dim, int) else None


def _dims_text(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


class Target:
    """Base of the target objects. `key`: what decides the graph (its kind and variant); equal
    keys share one explainer graph. `inputs`, `seeds` build the graph; `feeds` checks the
    target against the explained output (`shape`: the output's dims, None where unknown) and
    returns the arrays for the graph's inputs, one row per image."""

    kind = "target"
    reads_output = False   # the seed depends on the output's values (meta: recomputed after the step)

    @property
    def key(self) -> tuple:
        return (self.kind,)

    def inputs(self, index: GraphIndex, output: str) -> list[InputSpec]:
        raise NotImplementedError

    def seeds(self, b: GraphBuilder, index: GraphIndex, output: str, shown: str) -> Seeds:
        raise NotImplementedError

    def feeds(self, n: int, shape: tuple | None) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def describe(self, index: GraphIndex, output: str) -> dict:
        """The metadata entry `onnx_saliency.target`: the kind and the graph inputs."""
        return {"kind": self.kind,
                "inputs": {s.name: s.describe() for s in self.inputs(index, output)}}


def _class_onehot(b: GraphBuilder, index: GraphIndex, logits: str, shown: str) -> str:
    """float [N, K]: the one-hot of the `target` input's class per image; −1: the image's top-1
    of `shown` (summed over space for a dense output). Any other value outside [0, K) is refused
    twice: mapped to K and passed through Gather(range(K), ·), an index out of bounds that ONNX
    Runtime's CPU provider raises as an error; and, for runtimes that do not check Gather's
    indices, that image's row is NaN (its maps NaN, its `finite` output false)."""
    rank = index.rank(logits) or 2
    scores = shown if rank == 2 else b.reduce("ReduceSum", shown, list(range(2, rank)), False)
    top1 = b.op("ArgMax", scores, axis=1, keepdims=0)
    classes = (index.shapes.get(logits) or (None, None))[1]
    depth = b.ints([classes]) if isinstance(classes, int) else b.shape(logits, 1, 2)
    k = b.op("Squeeze", depth, b.ints([0]))
    top1_asked = b.op("Equal", CLASS, b.const(-1, np.int64))
    in_range = b.op("And", b.op("GreaterOrEqual", CLASS, b.const(0, np.int64)),
                    b.op("Less", CLASS, k))
    valid = b.op("Or", top1_asked, in_range)
    chosen = b.op("Where", top1_asked, top1, b.op("Where", in_range, CLASS, k))   # invalid: K
    classes_range = b.op("Range", b.const(0, np.int64), k, b.const(1, np.int64))
    target = b.op("Gather", classes_range, chosen, axis=0)
    onehot = b.op("OneHot", target, depth, b.const([0.0, 1.0]), axis=-1)
    return b.op("Where", b.unsqueeze(valid, [1]), onehot, b.const(np.nan))


def _class_axis(index: GraphIndex, output: str, kind: str) -> None:
    rank = index.rank(output)
    if rank is not None and rank < 2:
        raise ModelError(f"{kind} needs a class axis, but output '{output}' has shape "
                         f"{_dims_text(index.shapes[output])}; explain it with "
                         "targets.Cotangent or targets.Embedding.")


def _class_feed(value, n: int, shape: tuple | None) -> np.ndarray:
    from .runtime import check_targets
    k = _static(shape[1]) if shape is not None and len(shape) >= 2 else None
    return check_targets(value, n, k)


class Class(Target):
    """s = the logit of class k (a dense output's class-k logits summed over space); k None:
    each image's top-1 (the graph's −1). k may also be one int per image (today's `target=`)."""

    kind = "class"

    def __init__(self, k: Any = None):
        self.k = k

    def __repr__(self) -> str:
        return f"Class({self.k!r})"

    def inputs(self, index, output):
        return [InputSpec(CLASS, TensorProto.INT64, (), "class index per image; -1: the image's "
                          "top-1; another value outside [0, K) fails the run or gives NaN maps")]

    def seeds(self, b, index, output, shown):
        _class_axis(index, output, "Class")
        onehot = _class_onehot(b, index, output, shown)
        rank = index.rank(output) or 2
        if rank == 2:
            return {output: onehot}
        over_space = b.unsqueeze(onehot, list(range(2, rank)))
        return {output: b.op("Expand", over_space, b.shape_of(output, output, 1))}

    def feeds(self, n, shape):
        return {CLASS: _class_feed(self.k, n, shape)}


class Region(Target):
    """s = Σ over the mask of class k's logits, for a dense output [N, K, H, W]
    (pytorch-grad-cam's SemanticSegmentationTarget): seed onehot(k) ⊗ mask. `mask`: bool
    [H, W] at the output's resolution (every image) or [N, H, W]; None: the pixels where the
    model predicts k (argmax over K, computed in the graph from the logits it returns)."""

    kind = "region"

    def __init__(self, class_: int, mask: np.ndarray | None = None):
        if isinstance(class_, (bool, np.bool_)) or not isinstance(class_, (int, np.integer)):
            raise InputError(f"Region's class_ must be an int class index, not {class_!r}.")
        self.class_ = int(class_)
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype != bool:
                raise InputError(f"Region's mask must be a bool array, not {mask.dtype}.")
            if mask.ndim not in (2, 3):
                raise InputError(f"Region's mask must be [H, W] or [N, H, W]; got shape "
                                 f"{list(mask.shape)}.")
        self.mask = mask

    def __repr__(self) -> str:
        return f"Region({self.class_}, mask={'None' if self.mask is None else list(self.mask.shape)})"

    @property
    def key(self):
        return (self.kind, self.mask is not None)

    def _check_output(self, index, output):
        shape = _shape(index, output)
        if shape is None or len(shape) != 4:
            raise ModelError(f"Region explains a dense output [N, K, H, W], but output "
                             f"'{output}' has shape "
                             f"{'unknown' if shape is None else _dims_text(shape)}.")
        return shape

    def inputs(self, index, output):
        shape = self._check_output(index, output)
        specs = [InputSpec(CLASS, TensorProto.INT64, (), "class index k per image (in [0, K))")]
        if self.mask is not None:
            specs.append(InputSpec(MASK, TensorProto.BOOL, (_static(shape[2]), _static(shape[3])),
                                   "the pixels of the output whose class-k logits are summed"))
        return specs

    def describe(self, index, output):
        out = super().describe(index, output)
        out["mask"] = "input" if self.mask is not None else "predicted"
        return out

    def seeds(self, b, index, output, shown):
        self._check_output(index, output)
        onehot = b.unsqueeze(_class_onehot(b, index, output, shown), [2, 3])   # [N, K, 1, 1]
        if self.mask is not None:
            where = b.unsqueeze(MASK, [1])                                       # [N, 1, H, W]
        else:
            predicted = b.op("ArgMax", shown, axis=1, keepdims=1)                # [N, 1, H, W]
            where = b.op("Equal", predicted, b.unsqueeze(CLASS, [1, 2, 3]))
        return {output: b.op("Mul", onehot, b.op("Cast", where, to=TensorProto.FLOAT))}

    def feeds(self, n, shape):
        if shape is None or len(shape) != 4:
            raise ModelError(f"Region explains a dense output [N, K, H, W], but the output has "
                             f"shape {'unknown' if shape is None else _dims_text(shape)}.")
        k = _static(shape[1])
        if self.class_ < 0 or (k is not None and self.class_ >= k):
            raise InputError(f"Region class {self.class_} is outside [0, {k if k else 'K'}) "
                             "for this output.")
        out = {CLASS: np.full(n, self.class_, np.int64)}
        if self.mask is not None:
            mask = self.mask
            hw = tuple(_static(d) for d in shape[2:])
            if any(w is not None and g != w for g, w in zip(mask.shape[-2:], hw)):
                raise InputError(f"Region's mask is {list(mask.shape[-2:])} (H, W), but the output "
                                 f"is {_dims_text(hw)}: give the mask at the output's resolution.")
            if mask.ndim == 3 and mask.shape[0] != n:
                raise InputError(f"Region's mask has {mask.shape[0]} images for {n} images; give "
                                 "one [H, W] mask or one per image.")
            out[MASK] = np.ascontiguousarray(np.broadcast_to(mask, (n, *mask.shape[-2:])))
        return out


def _float_array(value, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be an array of numbers, not {type(value).__name__}.") from None
    if not np.isfinite(arr).all():
        raise InputError(f"{what} contains NaN or Inf values.")
    return arr


class Embedding(Target):
    """s = cos(e, r) = ⟨e, r⟩ / (|e| |r|) for an embedding output e [N, D] (or [N, D, 1, 1])
    and a reference r [D] (every image) or [N, D]. Seed, in closed form:
    ∂s/∂e = (r/|r| − cos·e/|e|) / |e| (NaN for an all-zero embedding: `finite` false)."""

    kind = "embedding"
    reads_output = True

    def __init__(self, reference):
        ref = _float_array(reference, "Embedding's reference")
        if ref.ndim not in (1, 2) or ref.shape[-1] == 0:
            raise InputError(f"Embedding's reference must be [D] or [N, D]; got shape "
                             f"{list(ref.shape)}.")
        if (np.linalg.norm(ref.reshape(-1, ref.shape[-1]), axis=1) == 0).any():
            raise InputError("Embedding's reference is a zero vector: its cosine is undefined.")
        self.reference = ref

    def __repr__(self) -> str:
        return f"Embedding(reference of shape {list(self.reference.shape)})"

    @staticmethod
    def _dim(shape, output: str = "the output") -> int | None:
        if shape is None or not (len(shape) == 2 or (len(shape) == 4 and shape[2:] == (1, 1))):
            raise ModelError(f"Embedding explains an output [N, D] or [N, D, 1, 1], but "
                             f"{output} has shape "
                             f"{'unknown' if shape is None else _dims_text(shape)}.")
        return _static(shape[1])

    def inputs(self, index, output):
        d = self._dim(_shape(index, output), f"output '{output}'")
        return [InputSpec(REFERENCE, TensorProto.FLOAT, (d,), "reference vector r per image")]

    def seeds(self, b, index, output, shown):
        self._dim(_shape(index, output), f"output '{output}'")
        e = b.op("Flatten", output, axis=1)                                      # [N, D]
        r = REFERENCE
        e_norm = b.op("Sqrt", b.reduce("ReduceSum", b.op("Mul", e, e), [1]))    # [N, 1]
        r_norm = b.op("Sqrt", b.reduce("ReduceSum", b.op("Mul", r, r), [1]))
        cos = b.op("Div", b.reduce("ReduceSum", b.op("Mul", e, r), [1]),
                   b.op("Mul", e_norm, r_norm))
        seed = b.op("Div", b.op("Sub", b.op("Div", r, r_norm),
                                b.op("Mul", cos, b.op("Div", e, e_norm))), e_norm)
        if (index.rank(output) or 2) != 2:
            seed = b.op("Reshape", seed, b.shape(output))
        return {output: seed}

    def feeds(self, n, shape):
        d = self._dim(shape)
        ref = self.reference
        if d is not None and ref.shape[-1] != d:
            raise InputError(f"Embedding's reference has {ref.shape[-1]} entries, but the "
                             f"embedding has D = {d}.")
        if ref.ndim == 2 and ref.shape[0] != n:
            raise InputError(f"Embedding's reference has {ref.shape[0]} rows for {n} images; give "
                             "one [D] vector or one per image.")
        return {REFERENCE: np.ascontiguousarray(np.broadcast_to(ref, (n, ref.shape[-1])))}


class Cotangent(Target):
    """s = ⟨a, output⟩ per image: the seed is `a` itself, the general vector-Jacobian product
    (any weighting of any output). `array`: the output's shape for one image (every image) or
    with the batch [N, …]."""

    kind = "cotangent"

    def __init__(self, array):
        self.array = _float_array(array, "Cotangent's array")

    def __repr__(self) -> str:
        return f"Cotangent(array of shape {list(self.array.shape)})"

    def inputs(self, index, output):
        shape = _shape(index, output)
        if shape is None:
            raise ModelError(f"Cotangent needs the rank of output '{output}', which is unknown.")
        return [InputSpec(COTANGENT, TensorProto.FLOAT, tuple(_static(d) for d in shape[1:]),
                          "the cotangent (weighting) of the output per image")]

    def seeds(self, b, index, output, shown):
        self.inputs(index, output)
        return {output: COTANGENT}

    def feeds(self, n, shape):
        if shape is None:
            raise ModelError("Cotangent needs the rank of the explained output, which is unknown.")
        a, per = self.array, tuple(shape[1:])
        if a.ndim == len(per):
            a = np.broadcast_to(a, (n, *a.shape))
        elif a.ndim != len(per) + 1 or a.shape[0] != n:
            raise InputError(f"Cotangent's array has shape {list(self.array.shape)}; the output "
                             f"is {_dims_text((n, *per))}: give one image's or the whole batch's.")
        if any(w is not None and g != w for g, w in zip(a.shape[1:], per)):
            raise InputError(f"Cotangent's array has shape {list(self.array.shape)}, but the "
                             f"output is {_dims_text((n, *per))}.")
        return {COTANGENT: np.ascontiguousarray(a, dtype=np.float32)}


class PerImage(Target):
    """One target per image, all of one kind and variant (a list passed as `target=`)."""

    def __init__(self, items: Sequence[Target]):
        items = list(items)
        keys = {t.key for t in items}
        if len(keys) != 1:
            raise InputError("A list of targets must hold one kind (and, for Region, masks given "
                             "for all or none); got " + ", ".join(sorted({repr(t) for t in items})[:3])
                             + ".")
        self.items = items
        self.kind = items[0].kind

    @property
    def key(self):
        return self.items[0].key

    def inputs(self, index, output):
        return self.items[0].inputs(index, output)

    def describe(self, index, output):
        return self.items[0].describe(index, output)

    @property
    def reads_output(self):
        return self.items[0].reads_output

    def seeds(self, b, index, output, shown):
        return self.items[0].seeds(b, index, output, shown)

    def feeds(self, n, shape):
        if len(self.items) != n:
            raise InputError(f"target has {len(self.items)} entries for {n} images; give one "
                             "target or one per image.")
        parts = [t.feeds(1, shape) for t in self.items]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def resolve(target) -> Target:
    """A Target for `explain`'s `target=`: a target object; a list of them (one per image);
    else an int, per-image ints or None: Class (today's semantics)."""
    if isinstance(target, Target):
        return target
    if isinstance(target, (list, tuple)) and target and any(isinstance(t, Target) for t in target):
        if not all(isinstance(t, Target) for t in target):
            raise InputError("A list of targets must hold target objects only, not a mix with "
                             "ints.")
        return PerImage(target)
    return Class(target)
