"""Peak memory of an Explainer (build + one explain) against the model's own ONNX Runtime
forward (load + one run), each in a fresh process (peak RSS from getrusage), as a markdown table.

    python benchmarks/bench_memory.py                       # resnet50
    python benchmarks/bench_memory.py resnet50 regnet_y_128gf --size 64 --folder /tmp/bench_memory

torchvision models with random weights, batch 1, exported once into --folder (with external
data: regnet_y_128gf holds 2.6 GB of float32). Run it alone: peaks are per process, but a
machine short of memory swaps or kills.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

EXPORT = """
import sys, torch, torchvision
torch.manual_seed(0)
net = getattr(torchvision.models, sys.argv[1])(weights=None).eval()
params = sum(p.numel() for p in net.parameters())
x = torch.randn(1, 3, int(sys.argv[2]), int(sys.argv[2]))
torch.onnx.export(net, (x,), sys.argv[3], input_names=["x"], output_names=["logits"],
                  opset_version=17, dynamo=False, external_data=True)
print(params)
"""

FORWARD = """
import resource, sys, time, numpy as np, onnxruntime as ort
start = time.perf_counter()
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal((1, 3, int(sys.argv[2]), int(sys.argv[2])), np.float32)
session.run(None, {session.get_inputs()[0].name: x})
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - start)
"""

EXPLAIN = """
import resource, sys, time, numpy as np, onnx_saliency as osal
start = time.perf_counter()
ex = osal.Explainer(sys.argv[1], methods=["gradient"], fused=False)
built = time.perf_counter() - start
x = np.random.default_rng(0).standard_normal((1, 3, int(sys.argv[2]), int(sys.argv[2])), np.float32)
ex.explain(x)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, built)
"""


def _run(code: str, *args: str) -> list[str]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         env=env)
    if out.returncode:
        raise SystemExit(f"failed ({out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
    return out.stdout.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["resnet50"])
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--folder", default="/tmp/bench_memory")
    args = parser.parse_args()
    rows = []
    for name in args.models:
        folder = Path(args.folder) / f"{name}_{args.size}"
        folder.mkdir(parents=True, exist_ok=True)
        path, info = folder / "model.onnx", folder / "params.json"
        if not path.exists() or not info.exists():
            params = int(_run(EXPORT, name, str(args.size), str(path))[-1])
            info.write_text(json.dumps(params))
        params = json.loads(info.read_text())
        forward_kib, _ = _run(FORWARD, str(path), str(args.size))
        explain_kib, built = _run(EXPLAIN, str(path), str(args.size))
        fwd, exp = int(forward_kib) / 2**20, int(explain_kib) / 2**20
        rows.append(f"| {name} | {params / 1e6:.1f}M | {fwd:.2f} GiB | {exp:.2f} GiB | "
                    f"{exp / fwd:.1f}x | {float(built):.1f} s |")
    print(f"Peak RSS, batch 1, {args.size} px, gradient, CPU (fresh process each):\n")
    print("| model | params | ORT forward peak RSS | Explainer build+explain peak RSS | ratio "
          "| build time |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
