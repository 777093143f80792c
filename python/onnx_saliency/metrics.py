"""Evaluation metrics of saliency maps: class sensitivity, pointing game, deletion/insertion.

class_sensitivity (docs/methods.md §3): p = softmax(f(x)); c_max = argmax p, c_min = argmin p;
ρ = Spearman rank correlation over all pixels between S_{c_max} + 1e-6 and S_{c_min} + 1e-6
(signed maps at input resolution). Reported per image and as mean ± std over the set, NaN
(e.g. a constant map) ignored. Lower = more class-sensitive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import softmax
from scipy.stats import spearmanr

from .errors import MethodError

OFFSET = 1e-6


def class_scores(logits: np.ndarray) -> np.ndarray:
    """[N, K] class scores: the logits, summed over space for fully-convolutional outputs (the
    same reduction the explainer's seed uses)."""
    return logits.reshape(len(logits), logits.shape[1], -1).sum(-1) if logits.ndim > 2 else logits


@dataclass(frozen=True)
class ClassSensitivity:
    per_image: np.ndarray   # ρ per image (NaN where undefined)
    mean: float
    std: float


def class_sensitivity(explainer, images: np.ndarray, key: str | None = None,
                      batch_size: int = 16) -> ClassSensitivity:
    """Spearman ρ between the maps of each image's most and least likely classes.

    `key`: which map of the explainer (default: its only map)."""
    names = explainer.map_names
    if key is None:
        if len(names) != 1:
            raise MethodError(f"The explainer makes several maps {names}; pass key=.")
        key = names[0]
    elif key not in names:
        raise MethodError(f"No map named {key!r}; the explainer makes {names}.")
    rhos = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        scores = class_scores(explainer.run(x, None)["logits"])
        hi = explainer.explain(x, scores.argmax(1))[key]
        lo = explainer.explain(x, scores.argmin(1))[key]
        for a, b in zip(hi, lo):
            rhos.append(spearmanr(a.ravel() + OFFSET, b.ravel() + OFFSET).statistic)
    rho = np.asarray(rhos, np.float64)
    return ClassSensitivity(rho, float(np.nanmean(rho)), float(np.nanstd(rho)))


# -- pointing game -----------------------------------------------------------------------------

@dataclass(frozen=True)
class PointingGame:
    hits: np.ndarray                 # bool per image
    accuracy: float                  # mean over images
    per_class: dict[int, float]      # accuracy per class (when labels are given)
    class_mean: float                # mean of the per-class accuracies (TorchRay's "mean acc")


def box_mask(shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """A bool [H, W] mask of the box (x0, y0, x1, y1), ends exclusive."""
    mask = np.zeros(shape, bool)
    x0, y0, x1, y1 = box
    mask[max(y0, 0):y1, max(x0, 0):x1] = True
    return mask


def pointing_game(maps: np.ndarray, masks: np.ndarray, labels=None, tolerance: float = 15
                  ) -> PointingGame:
    """Hit when a map's maximum (first one in row-major order) lies within `tolerance` pixels
    (Euclidean) of the object's mask. maps, masks: [N, H, W]; labels: class per image (optional).
    """
    from scipy.ndimage import distance_transform_edt

    maps, masks = np.asarray(maps), np.asarray(masks, bool)
    if maps.shape != masks.shape or maps.ndim != 3:
        raise MethodError(f"maps and masks must both be [N,H,W]; got {maps.shape} and {masks.shape}.")
    hits = np.zeros(len(maps), bool)
    for i, (m, mask) in enumerate(zip(maps, masks)):
        if not mask.any():
            raise MethodError(f"mask {i} is empty.")
        y, x = np.unravel_index(np.argmax(m), m.shape)
        hits[i] = distance_transform_edt(~mask)[y, x] <= tolerance
    per_class: dict[int, float] = {}
    if labels is not None:
        labels = np.asarray(labels)
        for c in np.unique(labels):
            per_class[int(c)] = float(hits[labels == c].mean())
    class_mean = float(np.mean(list(per_class.values()))) if per_class else float(hits.mean())
    return PointingGame(hits, float(hits.mean()), per_class, class_mean)


# -- deletion / insertion ----------------------------------------------------------------------

def deletion_insertion(explainer, images: np.ndarray, maps: np.ndarray, target,
                       mode: str = "deletion", steps: int = 32, baseline: np.ndarray | float = 0.0,
                       batch_size: int = 16) -> np.ndarray:
    """Area under the target's softmax-probability curve as pixels are removed (`deletion`:
    replaced by `baseline`, most salient first) or inserted (`insertion`: starting from the
    baseline, most salient first), at `steps` + 1 evenly spaced fractions 0..1 of the pixels;
    AUC by the trapezoid rule on [0, 1]. The curve runs through ONNX Runtime in batches of the
    model's own forward pass. Returns one AUC per image."""
    from .runtime import check_targets

    if mode not in ("deletion", "insertion"):
        raise MethodError(f"mode must be 'deletion' or 'insertion', not {mode!r}.")
    images, maps = np.asarray(images, np.float32), np.asarray(maps)
    n, c, h, w = images.shape
    if maps.shape != (n, h, w):
        raise MethodError(f"maps must be [N,H,W] = {(n, h, w)}; got {maps.shape}.")
    targets = check_targets(target, n, explainer.num_classes)
    if (targets < 0).any():
        raise MethodError("deletion/insertion needs explicit target classes.")
    session = explainer.forward_session()
    name = explainer.input_name
    base = np.broadcast_to(np.asarray(baseline, np.float32), images.shape)
    counts = np.round(np.linspace(0, h * w, steps + 1)).astype(int)
    aucs = np.zeros(n)
    for i in range(n):
        order = np.argsort(-maps[i].ravel(), kind="stable")
        frames = []
        for k in counts:
            chosen = np.zeros(h * w, bool)
            chosen[order[:k]] = True
            chosen = chosen.reshape(h, w)
            start, other = (images[i], base[i]) if mode == "deletion" else (base[i], images[i])
            frames.append(np.where(chosen, other, start))
        frames = np.stack(frames).astype(np.float32)
        probs = []
        for s in range(0, len(frames), batch_size):
            scores = class_scores(session.run(None, {name: frames[s:s + batch_size]})[0])
            probs.append(softmax(scores, axis=1)[:, targets[i]])
        curve = np.concatenate(probs)
        aucs[i] = float(np.sum((curve[1:] + curve[:-1]) / 2) / steps)
    return aucs


# -- model-randomisation sanity check (Adebayo et al. 2018) -------------------------------------

@dataclass(frozen=True)
class RandomizationStep:
    layer: str             # the last layer (node name) re-initialised so far, top down
    similarity: float      # mean over images of the Spearman ρ with the original maps
    per_image: np.ndarray


def randomization_check(model, images: np.ndarray, method="gradient", target=None,
                        seed: int = 0, absolute: bool = True, **explainer_kwargs
                        ) -> list[RandomizationStep]:
    """Cascading randomisation: re-initialise the parameterised layers (Conv, Gemm, MatMul with a
    constant weight) from the output down, one more at each step, with Gaussian weights of the
    layer's own standard deviation (biases zeroed); after each step, the Spearman ρ between the
    method's maps and the original model's (|maps| when `absolute`, as in the paper). A method
    that depends on the model shows ρ falling well below 1; one that does not stays near 1."""
    import onnx
    from onnx import numpy_helper

    from .canonical import load_model
    from .explainer import Explainer
    from .graph import GraphIndex

    base = load_model(model)
    reference = Explainer(base, methods=[method], **explainer_kwargs)
    key = reference.map_names[0]
    first = reference.run(images, target)          # target None: each image's top-1, in-graph
    original = first[key]
    targets = class_scores(first["logits"]).argmax(1) if target is None else target
    index = GraphIndex(base)
    layers = [n for n in index.nodes if n.op_type in ("Conv", "Gemm", "MatMul")
              and len(n.input) > 1 and n.input[1] in index.initializers]
    rng = np.random.default_rng(seed)
    randomized = onnx.ModelProto()
    randomized.CopyFrom(base)
    inits = {t.name: t for t in randomized.graph.initializer}
    steps = []
    for node in reversed(layers):
        for slot, name in enumerate(node.input[1:3], start=1):
            if name not in inits:
                continue
            w = numpy_helper.to_array(inits[name])
            new = (rng.standard_normal(w.shape) * (w.std() or 1.0) if slot == 1
                   else np.zeros_like(w)).astype(w.dtype)
            inits[name].CopyFrom(numpy_helper.from_array(new, name))
        maps = Explainer(randomized, methods=[method], **explainer_kwargs).explain(images, targets)[key]
        rhos = []
        for a, b in zip(original, maps):
            a, b = (np.abs(a), np.abs(b)) if absolute else (a, b)
            rhos.append(spearmanr(a.ravel(), b.ravel()).statistic)
        rho = np.asarray(rhos)
        steps.append(RandomizationStep(node.name, float(np.nanmean(rho)), rho))
    return steps
