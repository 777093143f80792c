"""`onnx-saliency explain --report report.html`: one self-contained HTML page (every picture inline
as a base64 PNG, no script, no outside resource) showing, per image, the prediction (class, name,
softmax probability) and a grid of its maps (methods and layers), and a table of the run (model,
methods, layers, timings, onnx-saliency version). Written atomically, after the maps."""

from __future__ import annotations

import base64
import html
import io
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from .output_folder import atomic
from .viz import MIN_LONG_SIDE

THUMBNAIL = (640, 640)     # the largest a picture is shown on the page (pixels, aspect kept)

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table#run { border-collapse: collapse; margin-bottom: 1.5em; }
table#run th, table#run td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left;
  vertical-align: top; }
figure.image { margin: 0 0 2em 0; padding: 0.8em; border: 1px solid #ddd; }
figure.image > figcaption { font-size: 1.05em; margin-bottom: 0.6em; }
div.maps { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr));
  gap: 0.8em; }
div.map { text-align: center; font-size: 0.85em; }
div.map img { max-width: 100%; height: auto; display: block; margin: 0 auto 0.2em auto; }
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("onnx-saliency")
    except PackageNotFoundError:
        return "unknown"


def _png_data(image: Image.Image) -> str:
    """A data: URI of the image as PNG, shrunk to THUMBNAIL."""
    image = image.convert("RGB")
    image.thumbnail(THUMBNAIL, Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _tile(name: str, image: Image.Image, kind: str) -> str:
    e = html.escape(name, quote=True)
    return (f'<div class="map" data-map="{e}" data-kind="{kind}"><img alt="{e}" '
            f'src="{_png_data(image)}"><div>{html.escape(name)}</div></div>')


def _prediction(entry: dict) -> str:
    name = f' &ldquo;{html.escape(str(entry["label"]))}&rdquo;' if "label" in entry else ""
    target = entry["target"]
    if isinstance(target, dict):   # another target kind (cli_targets.TargetForm.describe)
        shown = ", ".join(f"{k} {v}" for k, v in target.items()
                          if k in ("mode", "anchor", "class", "mask", "pixels") and v is not None)
        return (f'{html.escape(str(target["kind"]))}{name}: {html.escape(shown)} '
                f'(score {entry["score"]:.3f})')
    p = entry.get("probability")
    prob = f", probability {p:.3f}" if p is not None else ""
    return f'class {target}{name}{prob} (logit {entry["score"]:.3f})'


def _figure(image: str, entries: list[dict], folder: Path) -> str:
    tiles = []
    try:
        with Image.open(image) as photo:      # enlarged as its overlays are (viz.MIN_LONG_SIDE)
            k = max(1, -(-MIN_LONG_SIDE // max(photo.size)))
            tiles.append(_tile("image", photo.convert("RGB").resize(
                (photo.width * k, photo.height * k), Image.BILINEAR), "image"))
    except (OSError, ValueError):
        pass                      # moved or unreadable since: its overlays still show it
    for entry in entries:
        with Image.open(folder / entry["png"]) as overlay:
            tiles.append(_tile(entry["map"], overlay, "overlay"))
    return (f'<figure class="image" data-image="{html.escape(image, quote=True)}">'
            f'<figcaption><strong>{html.escape(Path(image).name)}</strong>: '
            f'{_prediction(entries[0])}</figcaption><div class="maps">{"".join(tiles)}</div>'
            f'</figure>')


def _run_table(info: dict) -> str:
    n = max(1, info.get("images", 0))
    rows = [("model", info.get("model")), ("methods", ", ".join(info.get("methods", []))),
            ("layers", info["layers"] if isinstance(info.get("layers"), str)
             else ", ".join(info.get("layers") or [])),
            ("maps", ", ".join(info.get("maps", []))),
            ("input", info.get("input")), ("images", info.get("images")),
            ("skipped", info.get("skipped", 0)), ("batch size", info.get("batch_size")),
            ("model load and graph build", f'{info.get("load_s", 0):.2f} s'),
            ("explain (ONNX Runtime)", f'{info.get("explain_s", 0):.2f} s '
             f'({1000 * info.get("explain_s", 0) / n:.1f} ms per image)'),
            ("total", f'{info.get("total_s", 0):.2f} s'),
            ("onnx-saliency", _version())]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in rows)
    return f'<table id="run"><caption>The run</caption>{body}</table>'


def render(folder: Path, maps: list[dict], skipped: list[dict], info: dict) -> str:
    """The page: the run table, one <figure class="image"> per image (its prediction, the image
    and one tile per map), and the skipped images."""
    by_image: OrderedDict[str, list[dict]] = OrderedDict()
    for entry in maps:
        by_image.setdefault(entry["image"], []).append(entry)
    figures = "".join(_figure(image, entries, folder) for image, entries in by_image.items())
    gone = "".join(f"<li>{html.escape(s['image'])}: {html.escape(s['error'])}</li>"
                   for s in skipped)
    gone = f'<section id="skipped"><h2>Skipped</h2><ul>{gone}</ul></section>' if skipped else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<title>onnx-saliency report: {html.escape(Path(str(info.get("model"))).name)}</title>'
            f'<style>{STYLE}</style></head><body><h1>onnx-saliency report</h1>'
            f'{_run_table({**info, "skipped": len(skipped)})}'
            f'<section id="images">{figures}</section>{gone}</body></html>\n')


def write_report(path: Path, folder: Path, run, info: dict) -> None:
    """Write the page for the run `run` (output_folder.Run) whose maps are in `folder`."""
    page = render(folder, run.maps, run.skipped, info)
    with atomic(path) as part:
        part.write_text(page, encoding="utf-8")
