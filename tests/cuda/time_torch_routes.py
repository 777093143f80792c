"""PyTorch's route for the math of each CUDA kernel, timed beside the kernel's own time.

`check_cuda_kernels --timing FILE` writes one JSON line per real layer with the kernel's time;
this script builds the same inputs on the same device, times PyTorch's ops for the same output
(cuDNN convolutions where the math is one, ATen's max-pool backward) with CUDA events (median of
--repeat runs after three warm-ups), and writes a Markdown table:

    python tests/cuda/time_torch_routes.py build-cuda/out/timing.jsonl --out table.md

The routes (each checked against the CPU kernels by tests/test_cuda_check.py):
- NormGrad conv: sqrt(Σ_k g²) · sqrt(conv2d(Σ_c a², ones_{kh×kw})); identity: sqrt(Σ g²)·sqrt(Σ a²);
  selective: sqrt(Σ max(a·g, 0)²).
- RectifiedConvTranspose: D = conv2d(Σ_{c∈j} |a|, ones, groups=G), S = Σ_{k∈j} g·z,
  out = sign(a) · conv2d_input(S / (D + ε), ones, groups=G) (torch.nn.grad.conv2d_input: the
  transposed convolution cuDNN runs for a conv's data gradient).
- MaxPoolGradient: max_pool2d_with_indices_backward with the indices saved by the forward (what
  autograd runs), and with the forward that finds them (the kernel finds the maxima itself).
- MaxPoolRelevance: the forward's indices, the backward of sign(p) · s, times x, summed over
  the channels.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def _padded(x: torch.Tensor, pads) -> tuple[torch.Tensor, tuple[int, int]]:
    """x and the symmetric padding conv2d takes, or x zero-padded by ONNX's pads
    (top, left, bottom, right) and no padding when they are not symmetric."""
    top, left, bottom, right = pads
    if top == bottom and left == right:
        return x, (top, left)
    return F.pad(x, (left, right, top, bottom)), (0, 0)


def normgrad_mode(row: dict) -> str:
    """"conv" of the row's kernel "NormGrad(conv)", and so on."""
    return row["kernel"][len("NormGrad("):-1]


def normgrad(row: dict, g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    mode = normgrad_mode(row)
    if mode == "selective":
        return (a * g).clamp_min(0).square().sum(1, keepdim=True).sqrt()
    g_norm = g.square().sum(1, keepdim=True).sqrt()
    if mode == "identity":
        return g_norm * a.square().sum(1, keepdim=True).sqrt()
    asq, padding = _padded(a.square().sum(1, keepdim=True), row["pads"])
    ones = torch.ones((1, 1, *row["kernel_shape"]), device=a.device, dtype=a.dtype)
    patch = F.conv2d(asq, ones, stride=row["strides"], padding=padding,
                     dilation=row["dilations"])
    return g_norm * patch.sqrt()


def rectified_conv_transpose(row: dict, g: torch.Tensor, z: torch.Tensor,
                             a: torch.Tensor) -> torch.Tensor:
    N, C, H, W = a.shape
    G, K = row["group"], g.shape[1]
    top, left, bottom, right = row["pads"]
    ones = torch.ones((G, 1, *row["kernel_shape"]), device=a.device, dtype=a.dtype)
    conv = dict(stride=row["strides"], dilation=row["dilations"], groups=G)
    abs_sum, padding = _padded(a.abs().view(N, G, C // G, H, W).sum(2), row["pads"])
    den = F.conv2d(abs_sum, ones, padding=padding, **conv)
    rel = (g * z).view(N, G, K // G, *g.shape[2:]).sum(2)
    ratio = rel / (den + row["epsilon"])
    if (top, left) == (bottom, right):   # symmetric: the transpose crops the padding itself
        spread = torch.nn.grad.conv2d_input((N, G, H, W), ones, ratio, padding=padding, **conv)
    else:                                # spread over the padded input, then crop
        spread = torch.nn.grad.conv2d_input((N, G, H + top + bottom, W + left + right), ones,
                                            ratio, **conv)[:, :, top:top + H, left:left + W]
    return (a.sign().view(N, G, C // G, H, W) * spread.unsqueeze(2)).view(N, C, H, W)


def _pool_args(row: dict, x: torch.Tensor, out_hw) -> dict:
    """max_pool2d's arguments for the row's geometry; ceil mode where the output grid is the
    larger one (the pads must be symmetric and at most half the kernel, as PyTorch requires)."""
    top, left, bottom, right = row["pads"]
    if (top, left) != (bottom, right):
        raise ValueError("PyTorch's max_pool2d takes symmetric pads only")
    floor_hw = [(x.shape[2 + i] + 2 * row["pads"][i] - row["dilations"][i] *
                 (row["kernel_shape"][i] - 1) - 1) // row["strides"][i] + 1 for i in range(2)]
    return dict(kernel_size=row["kernel_shape"], stride=row["strides"], padding=(top, left),
                dilation=row["dilations"], ceil_mode=list(out_hw) != floor_hw)


def _pool_backward(g: torch.Tensor, x: torch.Tensor, args: dict,
                   indices: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.max_pool2d_with_indices_backward(
        g, x, args["kernel_size"], args["stride"], args["padding"], args["dilation"],
        args["ceil_mode"], indices)


def max_pool_gradient(row: dict, x: torch.Tensor, g: torch.Tensor,
                      indices: torch.Tensor | None = None) -> torch.Tensor:
    args = _pool_args(row, x, g.shape[2:])
    if indices is None:
        _, indices = F.max_pool2d(x, return_indices=True, **args)
    return _pool_backward(g, x, args, indices)


def max_pool_relevance(row: dict, x: torch.Tensor, s: torch.Tensor,
                       pooled: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    args = _pool_args(row, x, s.shape[2:])
    p, indices = pooled if pooled is not None else F.max_pool2d(x, return_indices=True, **args)
    routed = _pool_backward(p.sign() * s, x, args, indices)
    return (routed * x).sum(1, keepdim=True)


def input_shapes(row: dict) -> list[list[int]]:
    """The kernel's input shapes in its order (RectifiedConvTranspose: g, z, a)."""
    if row["kernel"] == "RectifiedConvTranspose":
        return [row["in0"], row["in0"], row["in1"]]
    return [row["in0"], row["in1"]]


def inputs(row: dict, device: str) -> list[torch.Tensor]:
    """Random inputs in the kernel's order (the values do not change the timings)."""
    gen = torch.Generator(device=device).manual_seed(0)
    return [torch.rand(s, generator=gen, device=device) * 4 - 2 for s in input_shapes(row)]


def routes(row: dict, device: str) -> dict[str, callable]:
    """The timed routes for the row: name -> a function of no arguments."""
    t = inputs(row, device)
    kernel = row["kernel"]
    if kernel.startswith("NormGrad"):
        return {"PyTorch": lambda: normgrad(row, *t)}
    if kernel == "RectifiedConvTranspose":
        return {"PyTorch": lambda: rectified_conv_transpose(row, *t)}
    x, g = t
    args = _pool_args(row, x, g.shape[2:])
    pooled = F.max_pool2d(x, return_indices=True, **args)
    if kernel == "MaxPoolGradient":
        return {"PyTorch": lambda: max_pool_gradient(row, x, g, pooled[1]),
                "PyTorch with forward": lambda: max_pool_gradient(row, x, g)}
    return {"PyTorch": lambda: max_pool_relevance(row, x, g, pooled),
            "PyTorch with forward": lambda: max_pool_relevance(row, x, g)}


def median_ms(fn, repeat: int, device: str) -> float:
    """Median milliseconds of `repeat` calls after three warm-ups (CUDA events on a GPU)."""
    times = []
    for i in range(repeat + 3):
        if device == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            ms = start.elapsed_time(stop)
        else:
            t0 = time.perf_counter()
            fn()
            ms = (time.perf_counter() - t0) * 1e3
        if i >= 3:
            times.append(ms)
    return statistics.median(times)


def table(rows: list[dict], device: str, repeat: int) -> str:
    if device == "cuda":
        where = (f"{torch.cuda.get_device_name()}, PyTorch {torch.__version__}, "
                 f"cuDNN {torch.backends.cudnn.version()} (float32, TF32 off)")
    else:
        where = f"CPU (a dry run: host emulation), PyTorch {torch.__version__}"
    lines = [f"{datetime.date.today().isoformat()}, {where}; median of {repeat} runs, ms.",
             "",
             "| kernel | layer | inputs | this kernel | PyTorch | ratio | PyTorch with forward |",
             "|---|---|---|---:|---:|---:|---:|"]
    for row in rows:
        times = {name: median_ms(fn, repeat, device) for name, fn in routes(row, device).items()}
        ours, theirs = row["cuda_ms"], times["PyTorch"]
        fwd = times.get("PyTorch with forward")
        shapes = " ".join("×".join(map(str, s)) for s in (row["in0"], row["in1"]))
        lines.append(f"| {row['kernel']} | {row['layer']} | {shapes} | {ours:.3f} | "
                     f"{theirs:.3f} | {theirs / ours:.2f} | "
                     f"{'' if fwd is None else f'{fwd:.3f}'} |")
    lines += ["", "ratio: PyTorch's time over ours (above 1: the kernel is faster)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("timing", type=Path, help="check_cuda_kernels --timing output")
    parser.add_argument("--out", type=Path, help="where to write the table (default: stdout)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--device", choices=("cuda", "cpu"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    # plain float32 like the kernels: no TF32 in cuDNN's convolutions or in matrix products
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = [json.loads(line) for line in args.timing.read_text().splitlines() if line.strip()]
    if not rows:
        print(f"{args.timing}: no timed rows", file=sys.stderr)
        return 2
    with torch.no_grad():
        text = table(rows, args.device, args.repeat)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
