"""What `onnx-saliency explain` explains: its target flags (TARGET_FORMS_HELP) parsed into
onnx_saliency.targets objects, one per batch (TargetForm), with boxes and masks given in the
photo's pixels and fitted as the photo is (viz.Fit); and what maps.json and the captions say of
each kind."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from . import targets, viz
from .errors import InputError, ModelError
from .output_folder import UsageError


def class_target(target: str, labels: list[str] | None):
    if target == "top1":
        return None
    if target.lstrip("-").isdigit():
        return int(target)
    if labels and target in labels:
        return labels.index(target)
    known = "; known labels include " + ", ".join(labels[:5]) if labels else " (no labels known: pass --labels FILE)"
    raise UsageError(f"--target must be 'top1', a class index or a class label, not '{target}'{known}")



TARGET_FORMS_HELP = (
    "What is explained (one of these flags; default --target top1): --target top1|K|LABEL|class:K "
    "a class logit; --region K|LABEL [--region-mask PNG] a class's logits summed over a mask "
    "(default: the pixels predicted as that class) of a dense output [N, K, H, W]; --box "
    "x1,y1,x2,y2[:CLASS], --anchor I[:CLASS] or --detection top[:CLASS] one candidate of a "
    "single-stage detector's raw output (YOLOv5 [N, A, 5+K], YOLOv8 [N, 4+K, A]); --reference "
    "EMB.npy the cosine of an embedding with a reference; --cotangent A.npy <A, output>. Boxes "
    "and masks are given in the photo's pixels and fitted with it (--resize); the explained box "
    "is drawn on the overlays.")


def _with_class(text: str, head, needs: str):
    """'HEAD[:CLASS]' -> (head(HEAD), CLASS or None); argparse's one-line error, saying what the
    flag `needs`, when head refuses HEAD (ValueError) or CLASS is empty."""
    first, sep, cls = text.partition(":")
    try:
        value = head(first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' {needs}") from None
    if sep and not cls:
        raise argparse.ArgumentTypeError(f"'{text}' has no class after ':' (an index or a label)")
    return value, cls or None


def _four_numbers(text: str) -> tuple[float, ...]:
    box = tuple(float(v) for v in text.split(","))
    if len(box) != 4 or not np.isfinite(box).all():
        raise ValueError(text)
    return box


def box_arg(text: str):
    """--box x1,y1,x2,y2[:CLASS] -> ((x1, y1, x2, y2) in photo pixels, CLASS or None)."""
    box, cls = _with_class(text, _four_numbers, "needs four numbers x1,y1,x2,y2 (the box's "
                           "corners in the photo's pixels), optionally followed by :CLASS")
    if not (box[0] < box[2] and box[1] < box[3]):
        raise argparse.ArgumentTypeError(f"'{text}' needs x1 < x2 and y1 < y2 (left, top, right, "
                                         "bottom)")
    return box, cls


def _index_number(text: str) -> int:
    if not text.isdigit():
        raise ValueError(text)
    return int(text)


def anchor_arg(text: str):
    """--anchor I[:CLASS] -> (candidate index I, CLASS or None)."""
    return _with_class(text, _index_number, "needs a candidate index I >= 0 (a position on the "
                       "output's candidate axis), optionally followed by :CLASS")


def _top(text: str) -> str:
    if text != "top":
        raise ValueError(text)
    return text


def detection_arg(text: str):
    """--detection top[:CLASS] -> ("top", CLASS or None)."""
    return _with_class(text, _top, "must be 'top' (the top-scoring candidate) or 'top:CLASS'")


def _class_text(text: str) -> str:
    """--target/--region CLASS: 'class:X' is X."""
    return text[len("class:"):] if text.startswith("class:") else text


def _read_mask(path: str) -> np.ndarray:
    """--region-mask: bool [h, w], the image's pixels that are not black (any channel nonzero;
    an alpha channel is ignored)."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            img.load()
            a = np.asarray(img if img.mode in ("1", "L", "I", "I;16", "F") else img.convert("RGB"))
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise UsageError(f"--region-mask '{path}' is not a readable image "
                         f"({' '.join(str(exc).split())})") from None
    return (a != 0).any(axis=2) if a.ndim == 3 else a != 0


def _read_array(path: str, flag: str) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise UsageError(f"cannot read {flag} '{path}': {exc.strerror or exc}") from None
    except (ValueError, EOFError):
        raise UsageError(f"{flag} '{path}' is not a .npy file (numpy.save writes one)") from None
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
        raise UsageError(f"{flag} '{path}' must hold one array of real numbers (a .npy file)")
    return a


def _photo_size(path: Path) -> tuple[int, int] | None:
    """(h, w) from the image's header; None when it cannot be read (`explain` skips it)."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return None


def _fit_of(photo: tuple[int, int], size, resize: str) -> viz.Fit:
    """The Fit `viz.fit_image` gives a photo of (h, w) pixels (on a 1-bit stand-in: cheap)."""
    from PIL import Image
    return viz.fit_image(Image.new("1", (photo[1], photo[0])), size, resize)[1]


def _box_to_model(box, fit: viz.Fit) -> tuple[float, ...] | None:
    """A box (x1, y1, x2, y2) in photo pixels in the model input's pixels, through the Fit,
    clipped to the region the photo fills there; None when nothing of it is left (cropped off)."""
    (pl, pt, pr, pb), (ml, mt, mr, mb) = fit.photo_box, fit.model_box
    sx, sy = (mr - ml) / (pr - pl), (mb - mt) / (pb - pt)
    x1, x2 = (min(max(ml + (x - pl) * sx, ml), mr) for x in (box[0], box[2]))
    y1, y2 = (min(max(mt + (y - pt) * sy, mt), mb) for y in (box[1], box[3]))
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def _box_to_photo(box, fit: viz.Fit) -> list[float]:
    """A box (x1, y1, x2, y2) in the model input's pixels back in the photo's (not clipped)."""
    (pl, pt, pr, pb), (ml, mt, mr, mb) = fit.photo_box, fit.model_box
    sx, sy = (pr - pl) / (mr - ml), (pb - pt) / (mb - mt)
    return [pl + (box[0] - ml) * sx, pt + (box[1] - mt) * sy,
            pl + (box[2] - ml) * sx, pt + (box[3] - mt) * sy]


def _mask_to_output(mask: np.ndarray, fit: viz.Fit, hw: tuple[int, int]) -> np.ndarray:
    """A bool mask in photo pixels at the output's resolution (H, W): each output pixel's centre,
    the output spread evenly over the model input, taken back through the Fit to the photo pixel
    holding it (nearest); output pixels outside the fitted photo (padding) are False."""
    (pl, pt, pr, pb), (ml, mt, mr, mb) = fit.photo_box, fit.model_box
    (mh, mw), (h, w) = fit.model_size, hw

    def axis(n_out, n_model, lo, hi, plo, phi, n_photo):
        u = (np.arange(n_out) + 0.5) * n_model / n_out               # model-input coordinate
        p = plo + (u - lo) * (phi - plo) / (hi - lo)                 # photo coordinate
        return np.clip(np.floor(p).astype(int), 0, n_photo - 1), (u >= lo) & (u < hi)

    rows, in_rows = axis(h, mh, mt, mb, pt, pb, mask.shape[0])
    cols, in_cols = axis(w, mw, ml, mr, pl, pr, mask.shape[1])
    return mask[np.ix_(rows, cols)] & in_rows[:, None] & in_cols[None, :]


class TargetForm:
    """What `explain` explains, from its target flags (TARGET_FORMS_HELP):

        class      --target top1|K|LABEL|class:K|class:LABEL   targets.Class (top1: k None)
        region     --region K|LABEL [--region-mask PNG]         targets.Region
        detection  --box x1,y1,x2,y2[:C] | --anchor I[:C] | --detection top[:C]   targets.Detection
        embedding  --reference EMB.npy ([D], or [F, D]: one row per image file)   targets.Embedding
        cotangent  --cotangent A.npy (one image's output shape, or [F, ...])        targets.Cotangent

    --box and --region-mask are in the photo's pixels and go through the image's viz.Fit
    (--resize) as the photo does: the box's corners are mapped into the model input's pixels
    (clipped to the fitted photo); the mask, which must have the photo's size, is sampled at the
    output pixels' centres through the Fit (_mask_to_output). The explained detection's box comes
    back into photo pixels through the same Fit (maps.json, the overlay's rectangle)."""

    def __init__(self, kind: str, cls: str | None = None, *, box=None, anchor=None, mask=None,
                 mask_path=None, array=None, array_path=None, layout: str = "auto"):
        self.kind, self.cls = kind, cls
        self.box, self.anchor, self.layout = box, anchor, layout
        self.mask, self.mask_path = mask, mask_path
        self.array, self.array_path = array, array_path
        self.k: int | None = None           # the resolved class; None: top-1 / the best class
        self.labels: list[str] | None = None
        self.n_files = 0

    @classmethod
    def from_args(cls, args) -> "TargetForm":
        """From the parsed flags, before the model is loaded (files read, forms checked)."""
        if args.region_mask is not None and args.region is None:
            raise UsageError("--region-mask needs --region CLASS (the class whose logits the "
                             "mask sums)")
        detection = args.box is not None or args.anchor is not None or args.detection is not None
        if args.detector_layout is not None and not detection:
            raise UsageError("--detector-layout needs --box, --anchor or --detection")
        layout = args.detector_layout or "auto"
        if args.region is not None:
            mask = _read_mask(args.region_mask) if args.region_mask is not None else None
            return cls("region", _class_text(args.region), mask=mask, mask_path=args.region_mask)
        if args.box is not None:
            return cls("detection", args.box[1], box=args.box[0], layout=layout)
        if args.anchor is not None:
            return cls("detection", args.anchor[1], anchor=args.anchor[0], layout=layout)
        if args.detection is not None:
            return cls("detection", args.detection[1], layout=layout)
        if args.reference is not None:
            return cls("embedding", array=_read_array(args.reference, "--reference"),
                       array_path=args.reference)
        if args.cotangent is not None:
            return cls("cotangent", array=_read_array(args.cotangent, "--cotangent"),
                       array_path=args.cotangent)
        target = args.target or "top1"
        return cls("class", None if target == "top1" else _class_text(target))

    @property
    def flag(self) -> str:
        if self.kind == "detection":
            return ("--box" if self.box is not None else
                    "--anchor" if self.anchor is not None else "--detection")
        return {"class": "--target", "region": "--region", "embedding": "--reference",
                "cotangent": "--cotangent"}[self.kind]

    def resolve_class(self, labels, n_files: int) -> None:
        """The class (index or label), before the explainer is built."""
        self.labels, self.n_files = labels, n_files
        if self.kind == "class":
            self.k = class_target(self.cls or "top1", labels)
        elif self.cls is not None:
            self.k = self._class_index(self.cls, labels)

    def check(self, ex, files: list[Path], size, resize: str) -> None:
        """The target against the model's output and the photos (their sizes from their
        headers): a bad one is a usage error before the output folder exists."""
        if self.kind == "class":
            k = ex.num_classes
            if self.k is not None and k is not None and not 0 <= self.k < k:
                raise UsageError(f"--target {self.k} is not a class of this model (0 to {k - 1})")
            return
        if self.mask is not None or self.box is not None:
            for f in files:
                photo = _photo_size(f)
                if photo is not None:
                    self._check_photo(f, photo, size, resize)
        shape, stand_in = ex.output_shape, viz.Fit.squash(tuple(size), tuple(size))
        self._usage(lambda: self._build([(0, stand_in)], shape).feeds(1, shape),
                    (InputError, ModelError))   # a form this output cannot take: usage too

    def _class_index(self, text: str, labels) -> int:
        if text.isdigit():
            return int(text)
        if labels and text in labels:
            return labels.index(text)
        known = ("; known labels include " + ", ".join(labels[:5]) if labels
                 else " (no labels known: pass --labels FILE)")
        raise UsageError(f"{self.flag} takes a class index or a class label, not '{text}'{known}")

    def _check_photo(self, f: Path, photo: tuple[int, int], size, resize: str) -> None:
        h, w = photo
        if self.mask is not None and self.mask.shape != (h, w):
            raise UsageError(f"--region-mask '{self.mask_path}' is {self.mask.shape[1]}×"
                             f"{self.mask.shape[0]} pixels but the photo '{f}' is {w}×{h}: give "
                             "the mask in the photo's pixels")
        if self.box is not None:
            x1, y1, x2, y2 = self.box
            shown = ",".join(f"{v:g}" for v in self.box)
            if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
                raise UsageError(f"--box {shown} is not inside the photo '{f}' (0,0,{w},{h})")
            if _box_to_model(self.box, _fit_of(photo, size, resize)) is None:
                raise UsageError(f"--box {shown} lies in the part of the photo '{f}' that "
                                 f"--resize {resize} cuts off")

    def _usage(self, build, errors=InputError):
        """build(), the target's InputError (`errors`) a usage error naming the flag."""
        try:
            return build()
        except errors as exc:
            raise UsageError(f"{self.flag}: {exc}") from None

    def target(self, batch, out_shape):
        """The target object for a batch of (file index, Fit) pairs."""
        return self._usage(lambda: self._build(batch, out_shape))

    def _build(self, batch, out_shape):
        if self.kind == "class":
            return targets.Class(self.k)
        rows = [i for i, _ in batch]           # the images' indices among the files
        if self.kind == "region":
            hw = tuple(out_shape[2:]) if out_shape is not None and len(out_shape) == 4 else None
            if self.mask is None or hw is None:
                return targets.Region(self.k)      # not a dense output: Region says so
            if not all(isinstance(d, int) for d in hw):
                raise InputError(f"the output's H×W {list(hw)} is not known before the run, so "
                                 "the mask cannot be fitted to it.")
            return targets.Region(self.k, np.stack([_mask_to_output(self.mask, fit, hw)
                                                    for _, fit in batch]))
        if self.kind == "detection":
            if self.box is None:
                return targets.Detection(class_=self.k, anchor=self.anchor, layout=self.layout)
            return targets.PerImage([targets.Detection(class_=self.k, layout=self.layout,
                                                       box=_box_to_model(self.box, fit))
                                     for _, fit in batch])
        a = self.array
        if self.kind == "embedding":
            if a.ndim == 2 and a.shape[0] not in (1, self.n_files):
                raise InputError(f"the reference has {a.shape[0]} rows for {self.n_files} "
                                 "image(s); give one [D] vector or one row per image, in the "
                                 "images' order.")
            return targets.Embedding(a[rows] if a.ndim == 2 and a.shape[0] > 1 else a)
        per_image = out_shape is not None and a.ndim == len(out_shape)
        if per_image and a.shape[0] != self.n_files:
            raise InputError(f"the cotangent has {a.shape[0]} rows for {self.n_files} image(s); "
                             "give one image's cotangent or one per image, in the images' order.")
        return targets.Cotangent(a[rows] if per_image else a)

    def describe(self, target, i: int, out: np.ndarray, fit: viz.Fit):
        """(maps.json fields, caption, box to draw in photo pixels or None) for image i of the
        batch explained with `target`, whose explained output is `out` (its row of the returned
        logits)."""
        labels, box = self.labels, None
        name = lambda k: labels[k] if labels and 0 <= k < len(labels) else None
        quoted = lambda k: f' "{name(k)}"' if name(k) is not None else ""
        if self.kind == "region":
            k = self.k
            mask = target.mask[i] if target.mask is not None else out.argmax(0) == k
            where = self.mask_path or "predicted"
            fields = {"target": {"kind": "region", "class": k, "mask": where,
                                 "pixels": int(mask.sum())},
                      "score": float(out[k].astype(np.float64)[mask].sum())}
            caption = (f"region class {k}{quoted(k)} ({Path(where).name} mask, "
                       f"{int(mask.sum())} px)")
        elif self.kind == "detection":
            t = target.items[i] if isinstance(target, targets.PerImage) else target
            c = t.chosen(out[None])[0]
            box = _box_to_photo(c.box, fit)
            layout = targets.detection_layout(out[None].shape, self.layout)
            fields = {"target": {"kind": "detection", "mode": t.mode, "layout": layout,
                                 "asked_class": self.k, "anchor": c.anchor, "class": c.class_,
                                 "score": c.score, "box": box, "input_box": list(c.box)},
                      "score": c.score}
            if self.box is not None:
                fields["target"]["asked_box"] = list(self.box)
            if self.anchor is not None:
                fields["target"]["asked_anchor"] = self.anchor
            caption = (f"{'' if t.mode == 'anchor' else t.mode + ': '}anchor {c.anchor} class "
                       f"{c.class_}{quoted(c.class_)} "
                       f"{'IoU·score' if t.mode == 'box' else 'score'} {c.score:.3f}")
        elif self.kind == "embedding":
            e = out.reshape(-1).astype(np.float64)
            ref = target.reference
            r = (ref if ref.ndim == 1 else ref[i]).astype(np.float64)
            cos = float(e @ r / (np.linalg.norm(e) * np.linalg.norm(r)))
            fields = {"target": {"kind": "embedding", "reference": self.array_path},
                      "score": cos}
            caption = f"embedding cos {cos:.3f}"
        else:
            a = target.array if target.array.ndim == out.ndim else target.array[i]
            score = float((a.astype(np.float64) * out).sum())
            fields = {"target": {"kind": "cotangent", "cotangent": self.array_path},
                      "score": score}
            caption = f"cotangent <a, output> {score:.4g}"
        k = fields["target"].get("class")
        if k is not None and name(k) is not None:
            fields["label"] = name(k)
        return fields, caption, box
