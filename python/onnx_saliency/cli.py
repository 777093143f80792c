"""The `onnx-saliency` command: `demo`, `layers MODEL`, `explain MODEL IMAGES...`, `export MODEL`,
`bench MODEL` (also `python -m onnx_saliency`).

Exit codes (EXIT_CODES): 0 success; 2 usage error (bad flags, unknown method/layer/target/output,
unreadable paths, mismatched --mean/--std/--channels), checked before the model is loaded where
possible; 1 failure while working (and `explain` skipped an unreadable image); 128 + the signal's number when
SIGTERM or SIGINT (Ctrl-C) stops a run. Every error is one line, no traceback; Python warnings are
one line too (`onnx-saliency: warning: ...`).

Preprocessing for `explain`: --mean/--std/--size flags, else the model's metadata
(`onnx_saliency.mean`, `onnx_saliency.std` as JSON lists, `onnx_saliency.size` as [H, W]), else the
--preset (default imagenet); how photos are fitted to that size: --resize, else the metadata's
`onnx_saliency.resize`, else crop (viz.py). Class labels (for --target LABEL and the captions):
--labels FILE (one per line) or --labels imagenet (the 1,000 built-in names), else the metadata key
`onnx_saliency.labels` (a JSON list). Overlays are drawn at each photo's resolution, captioned;
--report HTML also writes a self-contained page of the run (report.py). What is explained: one
target flag (TARGET_FORMS_HELP; TargetForm turns it into an onnx_saliency.targets object per
batch, boxes and masks fitted from photo pixels as the photo is).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from importlib import resources
from pathlib import Path

import numpy as np
import onnx

from . import Explainer, default_layers, targets, viz
from .cli_targets import TARGET_FORMS_HELP, TargetForm, anchor_arg, box_arg, detection_arg
from .combine import COMBINATIONS
from .errors import LayerNotFoundError, SaliencyError
from .methods import REGISTRY
from .openvino_runtime import RUNTIMES
from .output_folder import (INDEX, OUT_FOLDER_HELP, SIGNALS, CommandError, Interrupted, PooledRun,
                            Run, UsageError, atomic, earlier_maps, output_stems, run_folder)
from .pipeline import Prefetch, default_jobs

PRESETS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
           "paddle": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
DEMO_METHODS = ["gradient", "input_x_gradient", "guided_backprop", "gradcam"]
EXIT_CODES = ("exit status: 0 success; 2 usage error (bad flags, unknown method/layer/target/"
              "output, unreadable paths, mismatched --mean/--std/--channels); 1 failure while "
              "working (explain: also when an unreadable image was skipped); 128 + the signal's "
              "number when SIGTERM or Ctrl-C stops a run")
INPUT_METHODS = sorted(name for name, cls in REGISTRY.items() if not cls.layer_method)
LAYER_METHODS = sorted(name for name, cls in REGISTRY.items() if cls.layer_method)
METHOD_HELP = (f"method name, repeatable (default gradient): input methods "
               f"{', '.join(INPUT_METHODS)}; layer methods (tapped at --layer) {', '.join(LAYER_METHODS)}")


class UnreadableImage(Exception):
    """An image file Pillow cannot read: `explain` skips it."""


def _load_image(path: Path, size: tuple[int, int], channels: int = 3,
                resize: str = viz.DEFAULT_RESIZE, fill=(0, 0, 0)):
    """(the photo as RGB [h,w,3] at its own resolution, for the overlay; the model's
    [H,W,channels], RGB or "L" for 1 channel, fitted by `resize` (viz.fit_image); the Fit)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            photo = img.convert("RGB")
            fitted, fit = viz.fit_image(photo if channels == 3 else img.convert("L"), size,
                                        resize, fill)
            return np.asarray(photo), np.asarray(fitted).reshape(size[0], size[1], channels), fit
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(f"'{path}' ({' '.join(str(exc).split())})") from None   # one line


def _image_files(items: list[str]) -> list[Path]:
    files = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg"))
        elif p.is_file():
            files.append(p)
        else:
            raise UsageError(f"no such image file or folder: '{item}'")
    if not files:
        raise UsageError("no PNG or JPEG images found")
    return files


def _metadata(proto) -> dict:
    """The model's metadata_props whose keys start with onnx_saliency. (JSON values)."""
    out = {}
    for prop in proto.metadata_props:
        if prop.key.startswith("onnx_saliency."):
            try:
                out[prop.key.split(".", 1)[1]] = json.loads(prop.value)
            except json.JSONDecodeError:
                out[prop.key.split(".", 1)[1]] = prop.value
    return out


def _input_dims(proto) -> tuple[str, list]:
    """The model's image input: its name and dims (an int, or None when symbolic)."""
    inits = {i.name for i in proto.graph.initializer}
    inp = next((i for i in proto.graph.input if i.name not in inits), None)
    if inp is None:
        return "", []
    return inp.name, [d.dim_value if d.HasField("dim_value") else None
                      for d in inp.type.tensor_type.shape.dim]


def _symbolic_size(proto, layout: str, size) -> tuple[int, int] | None:
    """For a model whose image height or width is symbolic: the (H, W) it is explained at
    (--size, else the metadata's size, else 224 for each symbolic side); else None."""
    _, dims = _input_dims(proto)
    if len(dims) != 4:
        return None
    hw = dims[2:] if layout == "NCHW" else dims[1:3]
    if all(isinstance(d, int) and d > 0 for d in hw):
        return None
    return tuple(int(v) for v in size) if size else tuple(d or 224 for d in hw)


def _check_layout(proto, layout: str) -> None:
    """A usage error when the model's input is plainly in the other layout than --layout."""
    name, dims = _input_dims(proto)
    if len(dims) != 4:
        return
    first, last = dims[1] in (1, 3), dims[3] in (1, 3)
    if first != last and (layout == "NHWC") == first:
        shown = "×".join("N" if i == 0 else str(d or "?") for i, d in enumerate(dims))
        fix = "first (NCHW): drop --layout NHWC" if first else "last (NHWC): pass --layout NHWC"
        raise UsageError(f"--layout {layout}, but the model's input '{name}' is {shown}, channels "
                         f"{fix}")


def _norm(values, default, channels: int, flag: str) -> np.ndarray:
    """--mean/--std as [C,1,1]: one value for every channel, or one per channel; a 3-value preset
    averaged for a 1-channel model."""
    if values is None:
        values = default
        if channels == 1 and len(values) == 3:
            values = [float(np.mean(values))]
    if len(values) not in (1, channels):
        many = f"1 or {channels} numbers" if channels > 1 else "1 number"
        raise UsageError(f"{flag} takes {many} for this {channels}-channel model, "
                         f"not {len(values)}")
    return np.asarray(values, np.float32)[:, None, None]


def _explain(model, files, methods, layers, target, out: Path, size, preset, batch_size,
             providers=None, mean=None, std=None, labels=None, layout="NCHW", options=None,
             overwrite=False, channels=None, resize=None, report=None, jobs=None) -> int:
    from .canonical import load_model

    started = time.perf_counter()
    earlier_maps(out, overwrite)    # refuse before building the model (checked again when locked)
    proto = load_model(model)        # read once: metadata here, the graph for the Explainer
    _check_layout(proto, layout)
    meta = _metadata(proto)
    labels = labels or meta.get("labels")
    form = target if isinstance(target, TargetForm) else \
        TargetForm("class", None if target == "top1" else target)
    form.resolve_class(labels, len(files))
    size = size or meta.get("size")
    ex = _layer_errors(lambda: Explainer(proto, methods=methods, layers=layers or None,
                                         providers=providers, layout=layout,
                                         input_size=_symbolic_size(proto, layout, size),
                                         **(options or {})),
                       model)
    if form.kind == "class":
        form.check(ex, files, None, None)
    model_c = ex.input_shape[1] if isinstance(ex.input_shape[1], int) else None
    if channels and model_c and channels != model_c:
        raise UsageError(f"--channels {channels}, but the model takes {model_c}-channel images")
    channels = channels or (1 if model_c == 1 else 3)
    mean = _norm(mean, meta.get("mean") or PRESETS[preset][0], channels, "--mean")
    std = _norm(std, meta.get("std") or PRESETS[preset][1], channels, "--std")
    h, w = size if size else [d if isinstance(d, int) else 224 for d in ex.input_shape[2:]]
    resize = resize or meta.get("resize") or viz.DEFAULT_RESIZE
    if resize not in viz.RESIZE_MODES:
        raise UsageError(f"the model's metadata onnx_saliency.resize is '{resize}'; pass --resize "
                         f"{'|'.join(viz.RESIZE_MODES)}")
    fill = tuple(int(round(255 * float(v))) for v in np.broadcast_to(mean.ravel(), (3,)))
    if form.kind != "class":
        form.check(ex, files, (h, w), resize)
    stems = output_stems(files)
    position = {stem: i for i, stem in enumerate(stems)}   # distinct: the file's index
    timing = {"load_s": time.perf_counter() - started, "explain_s": 0.0}
    jobs = default_jobs() if jobs is None else jobs
    chunks = [list(zip(files[start:start + batch_size], stems[start:start + batch_size]))
              for start in range(0, len(files), batch_size)]
    with run_folder(out, str(model), overwrite) as run:
        progress = _progress(len(files))
        # a reader thread decodes the next batches, writer threads write the last one's maps
        # (pipeline.py: at most AHEAD + 3 batches in memory); --jobs 0: each step in turn
        decoded = (_readable(chunk, (h, w), channels, resize, fill) for chunk in chunks)
        with Prefetch(decoded, threaded=jobs > 0) as reader, \
                (PooledRun(run, jobs) if jobs else nullcontext(run)) as writer:
            for chunk, (batch, skipped) in zip(chunks, reader):
                for f, reason in skipped:
                    run.skip(f, reason)
                if batch:
                    _write_batch(writer, ex, batch, form, labels, (mean, std), timing, position)
                progress.update(len(chunk))
        progress.close()
        if not run.maps:
            raise CommandError(f"none of the {len(files)} image(s) could be read")
    timing["total_s"] = time.perf_counter() - started
    if report:
        from .report import write_report
        write_report(Path(report), out, run, {
            "model": str(model), "methods": list(methods),
            "layers": list(layers) if layers else "the default per method", "maps": list(ex.map_names),
            "input": f"{h}×{w}, --resize {resize}", "images": len(files) - len(run.skipped),
            "batch_size": batch_size, **timing})
    skipped = f"; skipped {len(run.skipped)} unreadable (listed in {INDEX})" if run.skipped else ""
    also = f" and the report {report}" if report else ""
    print(f"wrote {len(run.maps)} maps for {len(files) - len(run.skipped)} image(s) to {out}"
          f"{also}{skipped}")
    return 1 if run.skipped else 0


def _layer_errors(build, model):
    """build(), a LayerNotFoundError a usage error pointing to `onnx-saliency layers MODEL`."""
    try:
        return build()
    except LayerNotFoundError as exc:
        hint = f"`onnx-saliency layers {model}`"
        raise UsageError(str(exc).replace("onnx_saliency.list_layers(model)", hint)
                         .replace("onnx_saliency.list_layers", hint)) from None


def _readable(chunk, size: tuple[int, int], channels: int = 3, resize: str = viz.DEFAULT_RESIZE,
              fill=(0, 0, 0)):
    """([(file, stem, RGB photo, model array, Fit) for each image of `chunk` that can be read],
    [(file, why) for the others, to skip])."""
    batch, skipped = [], []
    for f, stem in chunk:
        try:
            batch.append((f, stem, *_load_image(f, size, channels, resize, fill)))
        except UnreadableImage as exc:
            skipped.append((f, str(exc)))
    return batch, skipped


def _probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax of each row of logits; rows that already are probabilities (>= 0, summing to 1)
    as they are."""
    z = np.asarray(logits, np.float64).reshape(len(logits), -1)
    if (z >= 0).all() and np.allclose(z.sum(1), 1, atol=1e-4):
        return z
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _write_batch(run: Run, ex, batch, form: "TargetForm", labels, norm, timing=None,
                 position=None) -> None:
    """Explain one batch and write its maps (overlays at each photo's resolution, captioned with
    the class, its name and softmax probability, or with what else was explained), then
    maps.json; SIGTERM waits for the writes. `run`: the Run, or a PooledRun that writes them on
    threads while the next batch is explained. `position`: each stem's index among the files."""
    mean, std = norm
    x = np.stack([(img.transpose(2, 0, 1) / 255.0 - mean) / std for _, _, _, img, _ in batch])
    if form.kind == "class":
        target = form.k                   # today's ints (None: each image's top-1)
    else:
        target = form.target([((position or {}).get(stem, 0), fit)
                              for _, stem, _, _, fit in batch], ex.output_shape)
    began = time.perf_counter()
    result = ex.run(x.astype(np.float32), target)
    if timing is not None:
        timing["explain_s"] += time.perf_counter() - began
    logits = result.pop("logits")
    if form.kind != "class":
        _write_explained(run, batch, form, target, logits, result)
        return
    cls_target = form.k
    probs = _probabilities(logits)
    with SIGNALS.critical():
        for i, (f, stem, rgb, _, fit) in enumerate(batch):
            cls = int(logits[i].argmax()) if cls_target is None else cls_target
            label = labels[cls] if labels and cls < len(labels) else None
            for key, maps in result.items():
                entry = {"image": str(f), "method": key.split("@")[0],
                         "layer": key.split("@")[1] if "@" in key else None, "map": key,
                         "target": cls, "score": float(logits[i, cls]),
                         "probability": float(probs[i, cls]),
                         "photo_box": list(fit.photo_box), "model_box": list(fit.model_box)}
                if label is not None:
                    entry["label"] = label
                run.add(stem, entry, rgb, maps[i], fit,
                        viz.caption_for(cls, entry["probability"], label, key))
        run.flush()


def _write_explained(run: Run, batch, form: "TargetForm", target, logits, result) -> None:
    """_write_batch's maps for a target other than a class: entries and captions from
    TargetForm.describe; a detection's box drawn on its overlays."""
    with SIGNALS.critical():
        for i, (f, stem, rgb, _, fit) in enumerate(batch):
            fields, caption, box = form.describe(target, i, logits[i], fit)
            for key, maps in result.items():
                entry = {"image": str(f), "method": key.split("@")[0],
                         "layer": key.split("@")[1] if "@" in key else None, "map": key,
                         **fields, "photo_box": list(fit.photo_box),
                         "model_box": list(fit.model_box)}
                run.add(stem, entry, rgb, maps[i], fit, f"{caption} · {key}", box=box)
        run.flush()


def _add_explainer_options(parser) -> None:
    """--model-output, --combine/--weights (multi-layer maps) and --meta/--meta-lr, as in
    Explainer(...)."""
    parser.add_argument("--model-output", default=None, metavar="NAME",
                        help="the model output to explain (default: the logits; needed when the "
                             "model has several outputs)")
    parser.add_argument("--combine", choices=COMBINATIONS, default=None,
                        help="one map per layer method: the layers' min-max maps combined")
    parser.add_argument("--weights", default="uniform",
                        help="layer weights for --combine: uniform, linear or a list such as 1,2,4")
    parser.add_argument("--meta", action="store_true",
                        help="meta-saliency: the maps after one SGD step towards each target")
    parser.add_argument("--meta-lr", type=float, default=2.5e-3, help="the step size (2.5e-3)")


def _explainer_options(args) -> dict:
    weights = args.weights
    if weights not in ("uniform", "linear"):
        try:
            weights = [float(w) for w in weights.split(",")]
        except ValueError:
            raise UsageError(f"--weights must be uniform, linear or numbers separated by commas, "
                             f"not '{args.weights}'") from None
    options = {"combine": args.combine, "weights": weights, "meta": args.meta,
               "meta_lr": args.meta_lr}
    if args.model_output is not None:           # Explainers without output= still work
        options["output"] = args.model_output
    return options


def _progress(total: int):
    """A tqdm progress bar on stderr for runs of more than one batch-sized handful."""
    from tqdm import tqdm
    return tqdm(total=total, unit="img", disable=total < 32, file=sys.stderr)


def _layers(model, output: str | None = None) -> None:
    from .canonical import canonicalize
    from .graph import GraphIndex
    from .layers import LayerNames, stage_layers
    canon = canonicalize(model, output=output)    # once: default_layers takes it as it is
    index = GraphIndex(canon.model)
    names = LayerNames(index, canon.input_name, canon.folded)
    for name in names.names():   # token and channels-last layers with their grid
        tensor = names.resolve(name)
        shape = names.layouts.shapes.get(tensor) or index.shapes.get(tensor)
        dims = "×".join("N" if i == 0 else str(d) for i, d in enumerate(shape)) if shape else "?"
        view = names.view(tensor)
        grid = view.describe() if view is not None else ""
        print(f"{name}\t{dims}" + (f"\t{grid}" if grid else ""))
    print("\ndefault layers: " + ", ".join(
        f"{method} -> {layer}" for method, layer in default_layers(canon).items()))
    try:
        print('stages (--layer stages): ' + ", ".join(stage_layers(names)))
    except LayerNotFoundError:
        pass


def _export(args) -> None:
    out = Path(args.output)
    if out.is_dir():
        raise UsageError(f"-o '{out}' is a folder; give the path of the .onnx file to write")
    if not out.parent.is_dir():
        raise UsageError(f"-o '{out}': no such folder '{out.parent}'")
    options = _explainer_options(args)
    size = None
    try:   # the input's dims and metadata only (a bad file is the Explainer's to report)
        header = onnx.load(args.model, load_external_data=False)
        size = _symbolic_size(header, "NCHW", args.size or _metadata(header).get("size"))
    except Exception:
        pass
    ex = _layer_errors(lambda: Explainer(args.model, methods=args.method or ["gradient"],
                                         layers=args.layer, fused=True if args.fused else None,
                                         input_size=size, **options), args.model)
    data = out.with_name(out.stem + ".data")   # external data, for models over 2 GB
    existed = data.exists()
    try:
        with atomic(out) as part:
            ex.save(part, portable=not args.fused, data_name=data.name)
    except BaseException:
        if data.exists() and not existed:
            data.unlink()
        raise
    print(f"wrote {out}{' and ' + str(data) if data.exists() and not existed else ''}: "
          f"maps {', '.join(ex.map_names)}")


def imagenet_labels() -> list[str]:
    """The 1,000 ImageNet-1k class names in class-index order (data/imagenet_labels.txt)."""
    text = (resources.files("onnx_saliency") / "data" / "imagenet_labels.txt").read_text("utf-8")
    return text.splitlines()


def _check_report_path(report: str | None) -> None:
    if report is None:
        return
    path = Path(report)
    if path.is_dir():
        raise UsageError(f"--report '{report}' is a folder; give the path of the .html file to write")
    if not path.parent.is_dir():
        raise UsageError(f"--report '{report}': no such folder '{path.parent}'")


def _explain_command(args) -> None:
    labels = None
    if args.labels == "imagenet" and not Path(args.labels).is_file():
        labels = imagenet_labels()
    elif args.labels:
        try:
            labels = [line.strip() for line in Path(args.labels).read_text().splitlines()]
        except OSError as exc:
            raise UsageError(f"cannot read labels file '{args.labels}': {exc}") from None
    _check_report_path(args.report)
    if args.batch_size < 1 or (args.size and min(args.size) < 1):
        raise UsageError("--batch-size and --size must be positive")
    if args.jobs is not None and args.jobs < 0:
        raise UsageError(f"--jobs must be 0 or more, not {args.jobs}")
    if any(v and len(v) not in (1, 3) for v in (args.mean, args.std)) or 0 in (args.std or []):
        raise UsageError("--mean and --std take 1 or 3 numbers (one for every channel, or one per "
                         "channel); --std none that is 0")
    out = Path(args.out)
    if any(Path(i).is_dir() and Path(i).resolve() == out.resolve() for i in args.images):
        raise UsageError(f"--out '{out}' is an input folder: the maps would be read as images by "
                         "the next run; choose another --out")
    files = _image_files(args.images)
    form = TargetForm.from_args(args)
    _check_model_path(args.model)
    return _explain(args.model, files, args.method or ["gradient"],
                    args.layer, form, out, args.size, args.preset,
                    args.batch_size, args.providers, args.mean, args.std, labels, args.layout,
                    {**_explainer_options(args), "runtime": args.runtime}, args.overwrite,
                    args.channels, args.resize,
                    args.report, args.jobs)


def _check_model_path(model: str) -> None:
    path = Path(model)
    if not path.is_file():
        raise UsageError(f"no such model file: '{model}'")
    try:
        path.open("rb").close()
    except OSError as exc:
        raise UsageError(f"cannot read the model '{model}': {exc.strerror}") from None


def _check_methods(args) -> None:
    """Unknown method names are usage errors (before the model is loaded); --layer with input
    methods is a warning."""
    for name in getattr(args, "method", None) or []:
        if name not in REGISTRY:
            raise UsageError(f"unknown --method '{name}'; available: {', '.join(sorted(REGISTRY))}")
    inputs = [m for m in (getattr(args, "method", None) or ["gradient"]) if m in INPUT_METHODS]
    if getattr(args, "layer", None) and inputs:
        warnings.warn(f"input methods ignore --layer: {', '.join(dict.fromkeys(inputs))}",
                      stacklevel=2)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) and the exit codes in every --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("epilog", EXIT_CODES)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"onnx-saliency: error: {message} (see `{self.prog} --help`)\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("onnx-saliency")
    except PackageNotFoundError:
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="onnx-saliency", description=(
        "Saliency maps for ONNX image models: `demo` explains the bundled model, `layers MODEL` "
        "lists layer names, `explain MODEL IMAGES...` writes maps and overlays, `export MODEL` "
        "writes the explainer graph, `bench MODEL` times it. Methods: "
        + ", ".join(sorted(REGISTRY)) + "."))
    parser.add_argument("--version", action="version", version=f"onnx-saliency {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    overwrite = dict(action="store_true", help="replace the maps of an earlier run in --out (the "
                     "files its maps.json lists; nothing else is removed)")
    demo = sub.add_parser("demo", help="explain the bundled text-direction model on its sample "
                          "image (run again, it replaces its earlier maps in --out)")
    demo.add_argument("--out", default="saliency_out", help="output folder (default: saliency_out)")
    lay = sub.add_parser("layers", help="list the layer names a model accepts")
    lay.add_argument("model", help="the .onnx model")
    lay.add_argument("--model-output", default=None, metavar="NAME",
                     help="the model output whose layers to list (as for explain)")
    exp = sub.add_parser("explain", help="write saliency maps (.npy + overlay .png) for images",
                         description=OUT_FOLDER_HELP)
    exp.add_argument("model", help="the .onnx model")
    exp.add_argument("images", nargs="+", help="image files or folders (PNG/JPEG)")
    exp.add_argument("--method", action="append", default=None, help=METHOD_HELP)
    exp.add_argument("--layer", action="append", default=None,
                     help="layer for layer methods, repeatable ('stages': the stage set; "
                          "`onnx-saliency layers MODEL` lists the names)")
    forms = exp.add_argument_group("targets", TARGET_FORMS_HELP).add_mutually_exclusive_group()
    forms.add_argument("--target", default=None, metavar="top1|K|LABEL",
                       help="a class: 'top1' (each image's top-1, the default), a class index or "
                            "a class label, also written class:K or class:LABEL")
    forms.add_argument("--region", default=None, metavar="K|LABEL",
                       help="Σ of class K's logits over --region-mask, else over the pixels "
                            "predicted as K, of a dense output [N, K, H, W] (also class:K)")
    forms.add_argument("--box", type=box_arg, default=None, metavar="x1,y1,x2,y2[:CLASS]",
                       help="the detector candidate that best matches this box (photo pixels, "
                            "fitted as the photo is) by IoU × score, for CLASS or its best class")
    forms.add_argument("--anchor", type=anchor_arg, default=None, metavar="I[:CLASS]",
                       help="detector candidate I (its index on the output's candidate axis)")
    forms.add_argument("--detection", type=detection_arg, default=None, metavar="top[:CLASS]",
                       help="the detector's top-scoring candidate (for CLASS, or over all classes)")
    forms.add_argument("--reference", default=None, metavar="EMB.npy",
                       help="cos(embedding, reference) for an embedding output [N, D]: one [D] "
                            "vector, or one row per image in the images' order")
    forms.add_argument("--cotangent", default=None, metavar="A.npy",
                       help="<A, output>: A of one image's output shape, or one per image")
    exp.add_argument("--region-mask", default=None, metavar="PNG",
                     help="with --region: the mask, an image of the photo's size whose non-black "
                          "pixels are summed (fitted as the photo is, then sampled at the "
                          "output's resolution)")
    exp.add_argument("--detector-layout", choices=targets.LAYOUTS, default=None,
                     help="the detector output's layout for --box/--anchor/--detection: yolov5 "
                          "[N, A, 5+K], yolov8 [N, 4+K, A], or auto (the default: yolov8 when "
                          "dims[1] < dims[2])")
    exp.add_argument("--labels", default=None, metavar="FILE|imagenet",
                     help="class names for --target and the captions: a file (one per line), or "
                          "'imagenet' for the 1,000 built-in ImageNet-1k names (default: the "
                          "model's metadata onnx_saliency.labels, if any)")
    exp.add_argument("--layout", choices=["NCHW", "NHWC"], default="NCHW",
                     help="the model's input layout (images are given to it in that layout)")
    exp.add_argument("--channels", type=int, choices=[1, 3], default=None,
                     help="image channels given to the model: 1 (grayscale, Pillow's 'L') or 3 "
                          "(RGB); default: the model's input channels (overlays are always RGB)")
    exp.add_argument("--mean", type=float, nargs="+", default=None,
                     help="mean (0-1 scale): one value for every channel, or one per channel")
    exp.add_argument("--std", type=float, nargs="+", default=None,
                     help="std (0-1 scale): one value for every channel, or one per channel")
    exp.add_argument("--out", default="saliency_out", help="output folder (default: saliency_out)")
    exp.add_argument("--overwrite", **overwrite)
    exp.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                     help="the model's input size H W (default: the metadata's onnx_saliency.size, "
                          "else the model's static input dims, else 224 224)")
    exp.add_argument("--resize", choices=viz.RESIZE_MODES, default=None,
                     help="how photos are fitted to that size: crop (resize the short side, "
                          "centre-crop: torchvision's ImageNet convention without its 256/224 "
                          "margin), pad (fit inside, fill "
                          "with the mean colour) or squash (stretch); default: the metadata's "
                          "onnx_saliency.resize, else crop. Overlays are drawn at each photo's own "
                          "resolution with the map put back where the model saw it (small images "
                          f"enlarged to {viz.MIN_LONG_SIDE} px); the .npy maps stay at the model's "
                          "input size (maps.json gives each map's photo_box and model_box)")
    exp.add_argument("--report", default=None, metavar="HTML",
                     help="also write one self-contained HTML page: per image the prediction and "
                          "its maps, and a table of the run")
    exp.add_argument("--preset", choices=sorted(PRESETS), default="imagenet",
                     help="normalisation preset when neither --mean/--std nor metadata give it "
                          "(default imagenet; averaged for a 1-channel model)")
    exp.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    exp.add_argument("--jobs", type=int, default=None, metavar="N",
                     help="threads writing the maps and overlays while the next batch is "
                          "explained and the ones after it are decoded (default: the CPUs, at "
                          f"most 4: {default_jobs()} here); 0: no threads, each batch decoded, "
                          "explained and written in turn")
    exp.add_argument("--providers", nargs="+", default=None,
                     help="ONNX Runtime execution providers (default CPUExecutionProvider)")
    exp.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime",
                     help="run the explainer graph in ONNX Runtime (default) or OpenVINO (CPU, "
                          "the portable graph; pip install \"onnx-saliency[openvino]\")")
    _add_explainer_options(exp)
    bn = sub.add_parser("bench", help="explain/forward time ratios for the model on this machine")
    bn.add_argument("model", help="the .onnx model")
    bn.add_argument("--method", action="append", default=None,
                    help=METHOD_HELP.replace("default gradient", "default gradient and gradcam"))
    bn.add_argument("--batches", type=int, nargs="+", default=[1, 8],
                    help="batch sizes to time (default 1 8)")
    bn.add_argument("--repeat", type=int, default=3, help="timed runs per batch size (default 3)")
    bn.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                    help="input size (default: the model's, else 224 224)")
    bn.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime",
                    help="time the explainer and the forward pass in ONNX Runtime (default) or "
                         "OpenVINO")
    xp = sub.add_parser("export", help="write the explainer graph (image, target) -> (logits, maps)")
    xp.add_argument("model", help="the .onnx model")
    xp.add_argument("-o", "--output", required=True, help="the explainer .onnx to write")
    xp.add_argument("--method", action="append", default=None, help=METHOD_HELP)
    xp.add_argument("--layer", action="append", default=None,
                    help="layer for layer methods, repeatable ('stages': the stage set)")
    xp.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                    help="the input size H W for a model whose image size is symbolic (default: "
                         "the metadata's onnx_saliency.size, else 224 for each symbolic side)")
    _add_explainer_options(xp)
    kind = xp.add_mutually_exclusive_group()
    kind.add_argument("--portable", action="store_true",
                      help="standard ONNX ops only, runs in any ONNX runtime (the default)")
    kind.add_argument("--fused", action="store_true",
                      help="keep the fused custom ops (faster; the runtime must register "
                           "onnx_saliency's custom-op library)")
    return parser


def _command(args) -> int:
    """Run the command; its exit status (0, or 1 when `explain` skipped an image)."""
    _check_methods(args)
    if args.command == "demo":
        data = resources.files("onnx_saliency") / "data"
        return _explain(data / "text_direction_cls.onnx", [Path(str(data / "sample_text.png"))],
                 DEMO_METHODS, None, "top1", Path(args.out), (48, 192), "paddle", 1,
                 overwrite=True)   # its own earlier maps: the files maps.json lists, nothing else
    if args.command != "explain":         # explain checks its images first, then the model
        _check_model_path(args.model)
    if args.command == "layers":
        _layers(args.model, args.model_output)
    elif args.command == "bench":
        from .bench import ratio_table
        engine = "OpenVINO" if args.runtime == "openvino" else "ORT"
        print(f"| method | batch | explain / {engine} forward | forward (ms) |\n|---|---|---|---|")
        for row in ratio_table(args.model, args.method or ["gradient", "gradcam"],
                               args.batches, args.repeat, size=args.size, runtime=args.runtime):
            print(f"| {row['method']} | {row['batch']} | {row['ratio']:.2f}× | "
                  f"{row['forward_ms']:.1f} |")
    elif args.command == "export":
        _export(args)
    else:
        return _explain_command(args)
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"onnx-saliency: warning: {' '.join(str(message).split())}", file=sys.stderr)


@contextmanager
def _one_line_warnings():
    """Python warnings as one line each, without the source line (inside main only)."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        yield


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with SIGNALS.installed(), _one_line_warnings():
            return _command(args)
    except UsageError as exc:
        print(f"onnx-saliency: error: {exc}", file=sys.stderr)
        return 2
    except (CommandError, SaliencyError, OSError) as exc:
        print(f"onnx-saliency: error: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(f"onnx-saliency: stopped by {exc}", file=sys.stderr)
        return 128 + exc.signum


if __name__ == "__main__":
    sys.exit(main())
