"""Throughput of `onnx-saliency explain` on a folder of photos, end to end (decode, fit, explain,
write the .npy maps and the captioned overlay PNGs, maps.json), against the model's own ONNX
Runtime forward pass on the same preprocessed arrays, as a markdown table.

    python benchmarks/bench_folder.py                                   # bundled, mobilenet_v2, resnet18
    python benchmarks/bench_folder.py --models resnet18 --jobs 0 default --small 250

The photos: --count JPEGs (quality 90, 500×375 or 375×500) cut from scikit-image's bundled
photographs (random crops of 50-100% of the side, flips, brightness jitter; seeded), written once
into --folder, so decoding costs what real photos cost. Models: `bundled` (the package's text
direction classifier, 48×192) and torchvision classifiers with random weights exported at 224
with a dynamic batch axis.

Each row: one `explain --method gradient --batch-size 16` run in a fresh process (model load and
explainer build included), timed by the wall clock, with its CPU time (user + system, all its
threads) and peak RSS from wait4; right before it, in this process, the forward pass over the
same images (16 per batch, preprocessed as the CLI does, normalisation included, not timed) on
the explainer's own forward session. ratio = explain images/s ÷ forward images/s; cores = CPU
time ÷ wall time; CPU ms per image of the whole explain run (build included) and of the forward
pass (on a loaded machine the CPU a run gets, not its work, moves the rates; the CPU per image
moves less). `--jobs` picks the variants: `default` (the CLI's default), a number (passed
as --jobs N; 0 runs every step in turn in one thread), or `src=DIR` (the CLI from another
checkout's python/ folder, e.g. the code before a change; its compiled modules are copied in
from this install). `--small N` repeats the last variant on the first N photos: peak RSS should
not grow with the number of images.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png",
          "hubble_deep_field.jpg", "ihc.png", "retina.jpg")
BATCH = 16

EXPORT = """
import sys, torch, torchvision
torch.manual_seed(0)
torch.set_num_threads(1)
net = getattr(torchvision.models, sys.argv[1])(weights=None).eval()
x = torch.randn(1, 3, 224, 224)
torch.onnx.export(net, (x,), sys.argv[2], input_names=["x"], output_names=["logits"],
                  opset_version=17, dynamo=False, dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}})
"""

FROM_SOURCE = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "ScikitBuild" not in type(f).__name__]
sys.path.insert(0, sys.argv.pop(1))
from onnx_saliency.cli import main
sys.exit(main(sys.argv[1:]))
"""   # the CLI of another checkout (src=DIR), past an editable install's import hook


def make_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` JPEGs cut from scikit-image's photographs (written once; reused when present)."""
    from PIL import Image
    import skimage

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"photo_{i:05d}.jpg" for i in range(count)]
    if all(p.exists() for p in paths):
        return paths
    data = Path(skimage.__file__).parent / "data"
    sources = [Image.open(data / name).convert("RGB") for name in PHOTOS]
    rng = np.random.default_rng(seed)
    for i, path in enumerate(paths):
        photo = sources[i % len(sources)]
        w, h = (500, 375) if rng.random() < 0.75 else (375, 500)
        scale = rng.uniform(0.5, 1.0) * min(photo.width / w, photo.height / h)
        cw, ch = w * scale, h * scale
        x0, y0 = rng.uniform(0, photo.width - cw), rng.uniform(0, photo.height - ch)
        img = photo.resize((w, h), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        a = np.asarray(img, np.float32) * rng.uniform(0.8, 1.2)
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path, quality=90)
    return paths


def model_path(name: str, folder: Path) -> Path:
    if name == "bundled":
        from importlib import resources
        return Path(str(resources.files("onnx_saliency") / "data" / "text_direction_cls.onnx"))
    path = folder / f"{name}_224.onnx"
    if not path.exists():
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-c", EXPORT, name, str(path)], check=True, env=env)
    return path


def forward_rate(model: Path, files: list[Path]) -> tuple[float, float]:
    """Images per second of the model's ORT forward pass (the explainer's forward session) over
    `files`, preprocessed as `explain` does (decode, fit, normalise) before the clock starts, and
    its CPU milliseconds per image."""
    from onnx_saliency import Explainer, cli
    from onnx_saliency.canonical import load_model

    proto = load_model(model)
    meta = cli._metadata(proto)
    ex = Explainer(proto, methods=["gradient"],
                   input_size=cli._symbolic_size(proto, "NCHW", meta.get("size")))
    h, w = meta.get("size") or ex.input_shape[2:]
    preset = "paddle" if meta.get("mean") == [0.5, 0.5, 0.5] else "imagenet"
    mean = cli._norm(meta.get("mean"), cli.PRESETS[preset][0], 3, "--mean")
    std = cli._norm(meta.get("std"), cli.PRESETS[preset][1], 3, "--std")
    resize = meta.get("resize") or "crop"
    fill = tuple(int(round(255 * float(v))) for v in mean.ravel())
    batches = []
    for start in range(0, len(files), BATCH):
        fitted = [cli._load_image(f, (h, w), 3, resize, fill)[1] for f in files[start:start + BATCH]]
        batches.append(np.stack([(a.transpose(2, 0, 1) / 255.0 - mean) / std
                                 for a in fitted]).astype(np.float32))
    session = ex.forward_session()
    session.run(None, {ex.input_name: batches[0]})       # warm-up
    began, cpu = time.perf_counter(), time.process_time()
    for x in batches:
        session.run(None, {ex.input_name: x})
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    return len(files) / wall, 1e3 * cpu / len(files)


def explain_run(model: Path, folder: Path, variant: str, scratch: Path) -> dict:
    """One `explain` run in a fresh process: images/s, CPU cores used, peak RSS (GiB)."""
    out = scratch / "out"
    flags, cli = [], ["-m", "onnx_saliency.cli"]
    if variant.startswith("src="):
        cli = ["-c", FROM_SOURCE, variant[4:]]
    elif variant != "default":
        flags = ["--jobs", variant]
    argv = [sys.executable, *cli, "explain", str(model), str(folder), "--out", str(out),
            "--overwrite", "--method", "gradient", "--batch-size", str(BATCH), *flags]
    began = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - began
    stdout, stderr = process.stdout.read().decode(), process.stderr.read().decode()
    process.stdout.close()
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"explain failed: {stderr.strip().splitlines()[-1:]}")
    images = int(stdout.split(" for ")[1].split()[0])
    cpu = usage.ru_utime + usage.ru_stime
    return {"rate": images / wall, "wall": wall, "cores": cpu / wall, "cpu_ms": 1e3 * cpu / images,
            "rss": usage.ru_maxrss / 2**20, "images": images}


def _checkout(src: str, scratch: Path) -> str:
    """A copy of the package at DIR (a checkout's python/ folder) with this install's compiled
    modules, for `src=DIR`."""
    import onnx_saliency
    here = Path(onnx_saliency.__file__).parent
    target = scratch / "src" / "onnx_saliency"
    shutil.copytree(Path(src) / "onnx_saliency", target, dirs_exist_ok=True)
    for so in [*here.glob("*.so"), *Path(sys.prefix).glob("lib/python*/site-packages/onnx_saliency/*.so")]:
        shutil.copy2(so, target / so.name)
    return f"src={target.parent}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bundled", "mobilenet_v2", "resnet18"])
    parser.add_argument("--jobs", nargs="+", default=["default"],
                        help="variants: default, a --jobs number, or src=DIR")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--small", type=int, default=0,
                        help="also run the last variant on the first N photos (peak RSS)")
    parser.add_argument("--folder", default="/tmp/bench_folder")
    args = parser.parse_args()
    folder = Path(args.folder)
    files = make_photos(folder / f"photos_{args.count}", args.count)
    print(f"{args.count} photos in {files[0].parent}; {os.cpu_count()} CPUs; load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}", file=sys.stderr)
    print("| model | variant | images | explain img/s | forward img/s | ratio | cores used | "
          "CPU ms/img explain / forward | peak RSS |\n|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        variants = [_checkout(v[4:], scratch) if v.startswith("src=") else v for v in args.jobs]
        for name in args.models:
            model = model_path(name, folder)
            runs = [(v, files) for v in variants]
            if args.small:
                runs.append((variants[-1], files[:args.small]))
            for variant, subset in runs:
                photos = subset[0].parent
                if len(subset) != len(files):
                    photos = scratch / f"first_{len(subset)}"
                    photos.mkdir(exist_ok=True)
                    for f in subset:
                        if not (photos / f.name).exists():
                            os.link(f, photos / f.name)
                forward, forward_cpu = forward_rate(model, subset)
                row = explain_run(model, photos, variant, scratch)
                shown = "before (src)" if variant.startswith("src=") else (
                    variant if variant == "default" else f"--jobs {variant}")
                print(f"| {name} | {shown} | {row['images']} | {row['rate']:.1f} | {forward:.1f} | "
                      f"{row['rate'] / forward:.2f} | {row['cores']:.2f} | "
                      f"{row['cpu_ms']:.0f} / {forward_cpu:.0f} | {row['rss']:.2f} GiB |",
                      flush=True)


if __name__ == "__main__":
    main()
