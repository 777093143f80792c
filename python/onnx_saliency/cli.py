"""The `onnx-saliency` command: `demo`, `layers MODEL`, `explain MODEL IMAGES...`, `export MODEL`,
`bench MODEL`.

Exit codes: 0 success, 2 usage error (bad flags or paths), 1 failure (one clear line, no traceback);
128 + the signal's number when SIGTERM or SIGINT (Ctrl-C) stops a run.

Preprocessing for `explain`: --mean/--std/--size flags, else the model's metadata
(`onnx_saliency.mean`, `onnx_saliency.std` as JSON lists, `onnx_saliency.size` as [H, W]), else the
--preset (default imagenet). Class labels for --target LABEL: --labels FILE (one per line), else
the metadata key `onnx_saliency.labels` (a JSON list).
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path

import numpy as np

from . import Explainer, default_layers
from .combine import COMBINATIONS
from .errors import LayerNotFoundError, SaliencyError
from .output_folder import (INDEX, OUT_FOLDER_HELP, SIGNALS, CommandError, Interrupted, Run,
                            UsageError, atomic, earlier_maps, output_stems, run_folder)

PRESETS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
           "paddle": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
DEMO_METHODS = ["gradient", "input_x_gradient", "guided_backprop", "gradcam"]
class UnreadableImage(Exception):
    """An image file Pillow cannot read: `explain` skips it."""


def _load_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB").resize((size[1], size[0]), Image.BILINEAR))
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


def _target(target: str, labels: list[str] | None):
    if target == "top1":
        return None
    if target.lstrip("-").isdigit():
        return int(target)
    if labels and target in labels:
        return labels.index(target)
    known = "; known labels include " + ", ".join(labels[:5]) if labels else " (no labels known: pass --labels FILE)"
    raise UsageError(f"--target must be 'top1', a class index or a class label, not '{target}'{known}")


def _explain(model, files, methods, layers, target, out: Path, size, preset, batch_size,
             providers=None, mean=None, std=None, labels=None, layout="NCHW", options=None,
             overwrite=False):
    from .canonical import load_model

    earlier_maps(out, overwrite)    # refuse before building the model (checked again when locked)
    proto = load_model(model)        # read once: metadata here, the graph for the Explainer
    meta = _metadata(proto)
    mean = mean or meta.get("mean") or PRESETS[preset][0]
    std = std or meta.get("std") or PRESETS[preset][1]
    mean, std = (np.asarray(v, np.float32)[:, None, None] for v in (mean, std))
    labels = labels or meta.get("labels")
    cls_target = _target(target, labels)
    ex = Explainer(proto, methods=methods, layers=layers or None, providers=providers,
                   layout=layout, **(options or {}))
    size = size or meta.get("size")
    h, w = size if size else [d if isinstance(d, int) else 224 for d in ex.input_shape[2:]]
    stems = output_stems(files)
    with run_folder(out, str(model), overwrite) as run:
        progress = _progress(len(files))
        for start in range(0, len(files), batch_size):     # one batch in memory at a time
            chunk = list(zip(files[start:start + batch_size], stems[start:start + batch_size]))
            batch = _readable(run, chunk, (h, w))
            if batch:
                _write_batch(run, ex, batch, cls_target, labels, (mean, std))
            progress.update(len(chunk))
        progress.close()
        if not run.maps:
            raise CommandError(f"none of the {len(files)} image(s) could be read")
    skipped = f"; skipped {len(run.skipped)} unreadable (listed in {INDEX})" if run.skipped else ""
    print(f"wrote {len(run.maps)} maps for {len(files) - len(run.skipped)} image(s) to {out}{skipped}")


def _readable(run: Run, chunk, size: tuple[int, int]) -> list[tuple[Path, str, np.ndarray]]:
    """(file, stem, RGB array) for each image of `chunk` that can be read; the others are skipped."""
    batch = []
    for f, stem in chunk:
        try:
            batch.append((f, stem, _load_image(f, size)))
        except UnreadableImage as exc:
            run.skip(f, str(exc))
    return batch


def _write_batch(run: Run, ex, batch, cls_target, labels, norm) -> None:
    """Explain one batch and write its maps, then maps.json; SIGTERM waits for the writes."""
    mean, std = norm
    x = np.stack([(rgb.transpose(2, 0, 1) / 255.0 - mean) / std for _, _, rgb in batch])
    result = ex.run(x.astype(np.float32), cls_target)
    logits = result.pop("logits")
    with SIGNALS.critical():
        for i, (f, stem, rgb) in enumerate(batch):
            cls = int(logits[i].argmax()) if cls_target is None else cls_target
            for key, maps in result.items():
                entry = {"image": str(f), "method": key.split("@")[0],
                         "layer": key.split("@")[1] if "@" in key else None, "map": key,
                         "target": cls, "score": float(logits[i, cls])}
                if labels and cls < len(labels):
                    entry["label"] = labels[cls]
                run.add(stem, entry, rgb, maps[i])
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
    names = LayerNames(index, canon.input_name)
    for name in names.names():
        shape = index.shapes.get(names.resolve(name))
        dims = "×".join("N" if i == 0 else str(d) for i, d in enumerate(shape)) if shape else "?"
        print(f"{name}\t{dims}")
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
    ex = Explainer(args.model, methods=args.method or ["gradient"], layers=args.layer,
                   fused=True if args.fused else None, **_explainer_options(args))
    with atomic(out) as part:
        ex.save(part, portable=not args.fused)
    print(f"wrote {out}: maps {', '.join(ex.map_names)}")


def _explain_command(args) -> None:
    labels = None
    if args.labels:
        try:
            labels = [line.strip() for line in Path(args.labels).read_text().splitlines()]
        except OSError as exc:
            raise UsageError(f"cannot read labels file '{args.labels}': {exc}") from None
    if args.batch_size < 1 or (args.size and min(args.size) < 1):
        raise UsageError("--batch-size and --size must be positive")
    if any(v and len(v) not in (1, 3) for v in (args.mean, args.std)) or 0 in (args.std or []):
        raise UsageError("--mean and --std take 1 or 3 numbers (R G B); --std none that is 0")
    out = Path(args.out)
    if any(Path(i).is_dir() and Path(i).resolve() == out.resolve() for i in args.images):
        raise UsageError(f"--out '{out}' is an input folder: the maps would be read as images by "
                         "the next run; choose another --out")
    _explain(args.model, _image_files(args.images), args.method or ["gradient"],
             args.layer, args.target, out, args.size, args.preset,
             args.batch_size, args.providers, args.mean, args.std, labels, args.layout,
             _explainer_options(args), args.overwrite)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnx-saliency", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    overwrite = dict(action="store_true", help="replace the maps of an earlier run in --out (the "
                     "files its maps.json lists; nothing else is removed)")
    demo = sub.add_parser("demo", help="explain the bundled text-direction model on its sample image")
    demo.add_argument("--out", default="saliency_out", help="output folder (default: saliency_out)")
    demo.add_argument("--overwrite", **overwrite)
    lay = sub.add_parser("layers", help="list the layer names a model accepts")
    lay.add_argument("model")
    lay.add_argument("--model-output", default=None, metavar="NAME",
                     help="the model output whose layers to list (as for explain)")
    exp = sub.add_parser("explain", help="write saliency maps (.npy + overlay .png) for images",
                         description=OUT_FOLDER_HELP)
    exp.add_argument("model")
    exp.add_argument("images", nargs="+", help="image files or folders (PNG/JPEG)")
    exp.add_argument("--method", action="append", default=None, help="method name (repeatable)")
    exp.add_argument("--layer", action="append", default=None, help="layer for layer methods")
    exp.add_argument("--target", default="top1", help="'top1', a class index or a class label")
    exp.add_argument("--labels", default=None, help="class labels file, one per line")
    exp.add_argument("--layout", choices=["NCHW", "NHWC"], default="NCHW",
                     help="the model's input layout (images are given to it in that layout)")
    exp.add_argument("--mean", type=float, nargs="+", default=None, help="per-channel mean (0-1 scale)")
    exp.add_argument("--std", type=float, nargs="+", default=None, help="per-channel std (0-1 scale)")
    exp.add_argument("--out", default="saliency_out", help="output folder (default: saliency_out)")
    exp.add_argument("--overwrite", **overwrite)
    exp.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None)
    exp.add_argument("--preset", choices=sorted(PRESETS), default="imagenet",
                     help="normalisation preset (default imagenet)")
    exp.add_argument("--batch-size", type=int, default=16)
    exp.add_argument("--providers", nargs="+", default=None,
                     help="ONNX Runtime execution providers (default CPUExecutionProvider)")
    _add_explainer_options(exp)
    bn = sub.add_parser("bench", help="explain/forward time ratios for the model on this machine")
    bn.add_argument("model")
    bn.add_argument("--method", action="append", default=None, help="method name (repeatable)")
    bn.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    bn.add_argument("--repeat", type=int, default=3)
    bn.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None)
    xp = sub.add_parser("export", help="write the explainer graph (image, target) -> (logits, maps)")
    xp.add_argument("model")
    xp.add_argument("-o", "--output", required=True, help="the explainer .onnx to write")
    xp.add_argument("--method", action="append", default=None, help="method name (repeatable)")
    xp.add_argument("--layer", action="append", default=None, help="layer for layer methods")
    _add_explainer_options(xp)
    kind = xp.add_mutually_exclusive_group()
    kind.add_argument("--portable", action="store_true",
                      help="standard ONNX ops only, runs in any ONNX runtime (the default)")
    kind.add_argument("--fused", action="store_true",
                      help="keep the fused custom ops (faster; the runtime must register "
                           "onnx_saliency's custom-op library)")
    return parser


def _command(args) -> None:
    if args.command == "demo":
        data = resources.files("onnx_saliency") / "data"
        _explain(data / "text_direction_cls.onnx", [Path(str(data / "sample_text.png"))],
                 DEMO_METHODS, None, "top1", Path(args.out), (48, 192), "paddle", 1,
                 overwrite=args.overwrite)
    elif args.command == "layers":
        _layers(args.model, args.model_output)
    elif args.command == "bench":
        from .bench import ratio_table
        print("| method | batch | explain / ORT forward | forward (ms) |\n|---|---|---|---|")
        for row in ratio_table(args.model, args.method or ["gradient", "gradcam"],
                               args.batches, args.repeat, size=args.size):
            print(f"| {row['method']} | {row['batch']} | {row['ratio']:.2f}× | "
                  f"{row['forward_ms']:.1f} |")
    elif args.command == "export":
        _export(args)
    else:
        _explain_command(args)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with SIGNALS.installed():
            _command(args)
    except UsageError as exc:
        print(f"onnx-saliency: error: {exc}", file=sys.stderr)
        return 2
    except (CommandError, SaliencyError, OSError) as exc:
        print(f"onnx-saliency: error: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(f"onnx-saliency: stopped by {exc}", file=sys.stderr)
        return 128 + exc.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
