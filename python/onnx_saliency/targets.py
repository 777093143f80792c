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
    Detection(k, anchor, box)  s = one candidate's score on a raw single-stage detector output
                         (YOLOv5 [N, A, 5+K]: obj·p_k; YOLOv8 [N, 4+K, A]: p_k): the given anchor,
                         the best match of a box (IoU · score), or the top-scoring candidate;
                         `candidates` lists a model's detections after NMS to pick from

Graph inputs (N: the batch): Class `target` int64 [N] (−1: the image's top-1; another value
outside [0, K) fails the run, or gives NaN maps where the runtime does not check Gather);
Region `target` int64 [N] and, with a mask, `target_mask` bool [N, H, W]; Embedding
`target_reference` float32 [N, D]; Cotangent `target_cotangent` float32 [N, *output dims];
Detection `target` int64 [N] (−1: the candidate's best class) and `target_anchor` int64 [N] or
`target_box` float32 [N, 4].
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
    model predicts k (argmax over K, computed in the graph from the logits it returns; for a
    one-channel output, K = 1, the pixels above 0.5 where it is a Sigmoid's, else above 0)."""

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
        elif _static(_shape(index, output)[1]) == 1:    # one channel: a probability or a logit
            producer = index.producer.get(output)
            half = 0.5 if producer is not None and producer.op_type == "Sigmoid" else 0.0
            where = b.op("Greater", shown, b.const(np.float32(half)))            # [N, 1, H, W]
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


LAYOUTS = ("auto", "yolov5", "yolov8")
ANCHOR = "target_anchor"
BOX = "target_box"


def detection_layout(shape, layout: str = "auto", output: str = "the output") -> str:
    """"yolov5" ([N, A, 5+K]: cx, cy, w, h, objectness, K class scores per candidate) or
    "yolov8" ([N, 4+K, A]: cx, cy, w, h, K class scores); "auto": yolov8 when dims[1] < dims[2]
    (exporters write A in the thousands, 4+K below it), else yolov5; where one of the two is
    known statically only, it is the row size 4+K or 5+K (A follows the input's size)."""
    if layout not in LAYOUTS:
        raise InputError(f"Detection layout must be one of {', '.join(LAYOUTS)}, not {layout!r}.")
    if shape is None or len(shape) != 3:
        raise ModelError(f"Detection explains a single-stage detector's raw output [N, A, 5+K] "
                         f"(YOLOv5) or [N, 4+K, A] (YOLOv8), but {output} has shape "
                         f"{'unknown' if shape is None else _dims_text(shape)}.")
    c1, c2 = _static(shape[1]), _static(shape[2])
    if layout == "auto" and (c1 is None) != (c2 is None):   # the row size is the static one
        layout = "yolov8" if c2 is None else "yolov5"
    if layout == "auto":
        if c1 is None or c2 is None:
            raise ModelError(f"Detection cannot tell the layout of {output} "
                             f"{_dims_text(shape)}: pass layout='yolov5' or 'yolov8'.")
        layout = "yolov8" if c1 < c2 else "yolov5"
    rows = c2 if layout == "yolov5" else c1
    first = 5 if layout == "yolov5" else 4
    if rows is not None and rows <= first:
        raise ModelError(f"{output} {_dims_text(shape)} has {rows} values per candidate: too "
                         f"few for the {layout} layout ({first} + K class scores).")
    return layout


@dataclass(frozen=True)
class Candidate:
    """One detection candidate of one image: its anchor (index along the candidate axis), class,
    score (YOLOv5: objectness × class score; YOLOv8: class score) and box (x1, y1, x2, y2) in
    model-input pixels."""

    anchor: int
    class_: int
    score: float
    box: tuple

    def target(self) -> "Detection":
        """The Detection target explaining this candidate's class score."""
        return Detection(class_=self.class_, anchor=self.anchor)


def _split(out: np.ndarray, layout: str):
    """(boxes xyxy [A, 4], scores [A, K]) of one image's raw output."""
    rows = out if layout == "yolov5" else out.T                  # [A, 4(+1)+K]
    cx, cy, w, h = (rows[:, i].astype(np.float64) for i in range(4))
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    scores = rows[:, 5:] * rows[:, 4:5] if layout == "yolov5" else rows[:, 4:]
    return boxes, scores.astype(np.float64)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a [..., 4] with b [..., 4] (x1, y1, x2, y2), broadcast; 0 for empty unions."""
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area = lambda x: np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def candidates(output, layout: str = "auto", score_threshold: float = 0.25,
               iou_threshold: float = 0.45, max_candidates: int = 100) -> list[list[Candidate]]:
    """The detections of raw single-stage outputs [N, A, 5+K] / [N, 4+K, A] after per-class
    non-maximum suppression, best first, one list per image: candidates scoring at least
    `score_threshold` in their best class, each dropped when it overlaps a better one of its
    class by IoU > `iou_threshold`. Pick one and pass `candidate.target()` to explain it."""
    out = np.asarray(output)
    layout = detection_layout(out.shape, layout, "the output")
    result = []
    for row in out:
        boxes, scores = _split(row, layout)
        cls = scores.argmax(1)
        best = scores[np.arange(len(cls)), cls]
        keep = np.flatnonzero(best >= score_threshold)
        keep = keep[np.argsort(-best[keep], kind="stable")]
        chosen: list[int] = []
        for a in keep:
            same = [c for c in chosen if cls[c] == cls[a]]
            if same and (box_iou(boxes[same], boxes[a]) > iou_threshold).any():
                continue
            chosen.append(int(a))
            if len(chosen) == max_candidates:
                break
        result.append([Candidate(a, int(cls[a]), float(best[a]), tuple(float(v) for v in boxes[a]))
                       for a in chosen])
    return result


class Detection(Target):
    """The score of one candidate of a single-stage detector's raw output (before NMS):
    YOLOv5 [N, A, 5+K] s = obj_a · p_{a,k}; YOLOv8 [N, 4+K, A] s = p_{a,k} (scores as the
    exporters write them, after their sigmoids). k: `class_`, or None: the candidate's best class.
    The candidate: `anchor` (its index along A); else the one that best matches `box`
    (x1, y1, x2, y2 in model-input pixels): a* = argmax_a IoU(b_a, box) · s_a (D-RISE's
    similarity), explained as IoU(b_a*, box) · s_a*, the IoU held constant (the gradient flows
    through the score only); else the top-scoring candidate. The seed is ∂s/∂output at a*'s
    class (and, YOLOv5, objectness) entries, zero elsewhere."""

    kind = "detection"
    reads_output = True

    def __init__(self, class_: int | None = None, anchor: int | None = None, box=None,
                 layout: str = "auto"):
        for name, value in (("class_", class_), ("anchor", anchor)):
            if value is not None and (isinstance(value, (bool, np.bool_))
                                      or not isinstance(value, (int, np.integer)) or value < 0):
                raise InputError(f"Detection's {name} must be a non-negative int or None, "
                                 f"not {value!r}.")
        if anchor is not None and box is not None:
            raise InputError("Detection takes an anchor or a box, not both.")
        if layout not in LAYOUTS:
            raise InputError(f"Detection layout must be one of {', '.join(LAYOUTS)}, not "
                             f"{layout!r}.")
        if box is not None:
            box = _float_array(box, "Detection's box")
            if box.shape != (4,) or not (box[2] > box[0] and box[3] > box[1]):
                raise InputError(f"Detection's box must be (x1, y1, x2, y2) with x2 > x1 and "
                                 f"y2 > y1, got {box.tolist()}.")
        self.class_ = None if class_ is None else int(class_)
        self.anchor = None if anchor is None else int(anchor)
        self.box = box
        self.layout = layout

    @property
    def mode(self) -> str:
        return "anchor" if self.anchor is not None else "box" if self.box is not None else "top"

    def __repr__(self) -> str:
        where = {"anchor": f"anchor={self.anchor}", "top": "top-scoring",
                 "box": f"box={[round(float(v), 1) for v in self.box] if self.box is not None else None}"}
        return f"Detection(class_={self.class_}, {where[self.mode]}, layout={self.layout!r})"

    @property
    def key(self):
        return (self.kind, self.mode, self.layout)

    def inputs(self, index, output):
        detection_layout(_shape(index, output), self.layout, f"output '{output}'")
        specs = [InputSpec(CLASS, TensorProto.INT64, (), "class index per image; -1: the "
                           "candidate's best class")]
        if self.mode == "anchor":
            specs.append(InputSpec(ANCHOR, TensorProto.INT64, (), "candidate index along A"))
        if self.mode == "box":
            specs.append(InputSpec(BOX, TensorProto.FLOAT, (4,), "reference box x1, y1, x2, y2 "
                                   "in input pixels: the candidate maximising IoU x score"))
        return specs

    def describe(self, index, output):
        out = super().describe(index, output)
        out.update(mode=self.mode,
                   layout=detection_layout(_shape(index, output), self.layout, output))
        return out

    def seeds(self, b, index, output, shown):
        layout = detection_layout(_shape(index, output), self.layout, f"output '{output}'")
        v5 = layout == "yolov5"
        first = 5 if v5 else 4
        rows = lambda t: b.op("Transpose", t, perm=[0, 2, 1]) if v5 else t      # [N, C, A]
        big = b.ints([2**62])
        sel, val = rows(shown), rows(output)
        part = lambda t, lo, hi: b.op("Slice", t, b.ints([lo]), hi if isinstance(hi, str) else
                                      b.ints([hi]), b.ints([1]))
        cls = part(sel, first, big)                                              # [N, K, A]
        best = b.op("ArgMax", cls, axis=1, keepdims=1)                           # [N, 1, A]
        asked = b.unsqueeze(CLASS, [1, 2])                                       # [N, 1, 1]
        k_a = b.op("Where", b.op("Equal", asked, b.const(-1, np.int64)), best,
                   b.op("Expand", asked, b.op("Shape", best)))                   # [N, 1, A]
        score = b.op("GatherElements", cls, k_a, axis=1)
        if v5:
            score = b.op("Mul", score, part(sel, 4, 5))
        iou = None
        if self.mode == "anchor":
            a_star = b.unsqueeze(ANCHOR, [1, 2])                                 # [N, 1, 1]
        else:
            weight = score
            if self.mode == "box":
                iou = self._iou(b, part(sel, 0, 4), b.unsqueeze(BOX, [2]))       # [N, 1, A]
                weight = b.op("Mul", iou, score)
            a_star = b.op("ArgMax", weight, axis=2, keepdims=1)
        k_star = b.op("GatherElements", k_a, a_star, axis=2)                     # [N, 1, 1]
        depth_c, depth_a = b.shape(val, 1, 2), b.shape(val, 2, 3)
        on_a = b.op("OneHot", b.squeeze(a_star, [2]), depth_a, b.const([0.0, 1.0]), axis=-1)
        on_k = b.op("OneHot", b.op("Add", b.squeeze(k_star, [2]), b.const(first, np.int64)),
                    depth_c, b.const([0.0, 1.0]), axis=1)                        # [N, C, 1]
        if v5:   # ∂(obj·p)/∂p = obj, ∂(obj·p)/∂obj = p at the chosen candidate
            at = lambda t: b.op("GatherElements", t, a_star, axis=2)             # [N, 1, 1]
            p_val = b.op("GatherElements", part(val, first, big),
                         b.op("Expand", k_star, b.op("Shape", part(val, 4, 5))), axis=1)
            on_obj = b.op("OneHot", b.const([[4]], np.int64), depth_c, b.const([0.0, 1.0]), axis=1)
            on_k = b.op("Add", b.op("Mul", on_k, at(part(val, 4, 5))),
                        b.op("Mul", on_obj, at(p_val)))
        if iou is not None:
            on_k = b.op("Mul", on_k, b.op("GatherElements", iou, a_star, axis=2))
        return {output: rows(b.op("Mul", on_k, on_a))}

    @staticmethod
    def _iou(b, xywh: str, ref: str) -> str:
        """IoU [N, 1, A] of the candidates' boxes (cx, cy, w, h) [N, 4, A] with `ref` [N, 4, 1]
        (x1, y1, x2, y2)."""
        one = lambda t, i: b.op("Slice", t, b.ints([i]), b.ints([i + 1]), b.ints([1]))
        half = lambda i: b.op("Mul", one(xywh, i), b.const(np.float32(0.5)))
        x1, x2 = b.op("Sub", one(xywh, 0), half(2)), b.op("Add", one(xywh, 0), half(2))
        y1, y2 = b.op("Sub", one(xywh, 1), half(3)), b.op("Add", one(xywh, 1), half(3))
        zero = b.const(np.float32(0))
        side = lambda lo, hi, rlo, rhi: b.op("Max", b.op(
            "Sub", b.op("Min", hi, one(ref, rhi)), b.op("Max", lo, one(ref, rlo))), zero)
        inter = b.op("Mul", side(x1, x2, 0, 2), side(y1, y2, 1, 3))
        area = lambda w, h: b.op("Mul", b.op("Max", w, zero), b.op("Max", h, zero))
        union = b.op("Sub", b.op("Add", area(one(xywh, 2), one(xywh, 3)), area(
            b.op("Sub", one(ref, 2), one(ref, 0)), b.op("Sub", one(ref, 3), one(ref, 1)))), inter)
        return b.op("Div", inter, b.op("Max", union, b.const(np.float32(1e-12))))

    def _sizes(self, shape):
        layout = detection_layout(shape, self.layout)
        a_dim, c_dim = (shape[1], shape[2]) if layout == "yolov5" else (shape[2], shape[1])
        c = _static(c_dim)
        return layout, _static(a_dim), (c - (5 if layout == "yolov5" else 4)) if c else None

    def feeds(self, n, shape):
        layout, a, k = self._sizes(shape)
        if self.class_ is not None and k is not None and self.class_ >= k:
            raise InputError(f"Detection class {self.class_} is outside [0, {k}) for this "
                             f"{layout} output ({k} classes).")
        if self.anchor is not None and a is not None and self.anchor >= a:
            raise InputError(f"Detection anchor {self.anchor} is outside [0, {a}): the output "
                             f"has {a} candidates.")
        out = {CLASS: np.full(n, -1 if self.class_ is None else self.class_, np.int64)}
        if self.mode == "anchor":
            out[ANCHOR] = np.full(n, self.anchor, np.int64)
        if self.mode == "box":
            out[BOX] = np.ascontiguousarray(np.broadcast_to(self.box, (n, 4)), np.float32)
        return out

    def chosen(self, output) -> list[Candidate]:
        """The candidate each image's score is taken from (the graph's rule, in NumPy on the
        returned output), with its class and score; for a box, `score` is IoU · score."""
        out = np.asarray(output)
        layout = detection_layout(out.shape, self.layout, "the output")
        picked = []
        for row in out:
            boxes, scores = _split(row, layout)
            k = scores.argmax(1) if self.class_ is None else np.full(len(scores), self.class_)
            s = scores[np.arange(len(k)), k]
            if self.mode == "anchor":
                a, w = self.anchor, s[self.anchor]
            else:
                w_all = s * box_iou(boxes, self.box.astype(np.float64)) if self.mode == "box" else s
                a = int(np.argmax(w_all))
                w = w_all[a]
            picked.append(Candidate(int(a), int(k[a]), float(w),
                                    tuple(float(v) for v in boxes[a])))
        return picked


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
