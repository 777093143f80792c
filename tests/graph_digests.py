"""SHA-256 of the explainer graphs a fixed set of models and method sets produce: run it before
and after a refactor that must not change any graph, and compare the two listings.

    python tests/graph_digests.py > before.txt   # … change the code …
    python tests/graph_digests.py > after.txt && diff before.txt after.txt

Models: torchvision resnet18, vgg11 and mobilenet_v2 (seeded random weights, 32 px), the
bundled text-direction classifier, and the fixture mini_cnn. Each method alone, several method
sets sharing walks, multi-layer combination, meta-saliency, c-EBP at a named layer,
backward_graph at the input and at parameters; fused and portable.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import warnings
from importlib import resources
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "graphs"))

import onnx_saliency as osal  # noqa: E402
from onnx_saliency import methods  # noqa: E402

SETS = [
    {"methods": ["gradient", "guided_backprop", "deconvnet", "gradcam", "tsgb",
                 "normgrad_selective", "ebp"]},
    {"methods": ["tsgb", "normgrad", "normgrad_conv"]},
    {"methods": ["normgrad_selective"], "layers": "stages", "combine": "product",
     "weights": "linear"},
    {"methods": ["gradient", "normgrad"], "meta": True},
    {"methods": [methods.TSGB(gamma=0.8, fc="all", normalize=True),
                 methods.GradCAM(relu=False), methods.Extraction("identity3x3", "max_abs")]},
]


def _models(folder: Path) -> dict[str, Path]:
    from conftest import export_torchvision
    import make_graphs
    import onnx

    out = {}
    for name in ("resnet18", "vgg11", "mobilenet_v2"):
        out[name] = folder / f"{name}.onnx"
        export_torchvision(name, out[name], 32)
    out["text_direction"] = Path(str(resources.files("onnx_saliency") / "data" /
                                     "text_direction_cls.onnx"))
    out["mini_cnn"] = folder / "mini_cnn.onnx"
    onnx.save(make_graphs.build("mini_cnn"), str(out["mini_cnn"]))
    return out


def _digest(model) -> str:
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()[:16]


def _lines(name: str, path: Path):
    for method in methods.REGISTRY:
        yield from _one(name, path, f"{method}", {"methods": [method]})
    for i, kwargs in enumerate(SETS):
        yield from _one(name, path, f"set{i}", kwargs)
    yield from _one(name, path, "cebp@stage", {"methods": [methods.ContrastiveEBP()]})
    from onnx_saliency.canonical import canonicalize
    from onnx_saliency.graph import GraphIndex
    from onnx_saliency.meta import parameters

    canon = canonicalize(path)
    wrt = [canon.input_name, *osal.list_layers(path)[1:3], *parameters(GraphIndex(canon.model))[:2]]
    for rule in ("gradient", "tsgb"):
        graph = osal.backward_graph(path, wrt if rule == "gradient" else wrt[:3], rule=rule)
        yield f"{name} backward_graph {rule} {_digest(graph)}"


def _one(name, path, label, kwargs):
    for fused in (False, True):
        try:
            ex = osal.Explainer(path, fused=fused, **kwargs)
            yield f"{name} {label} fused={fused} {_digest(ex.model)}"
        except osal.SaliencyError as exc:
            yield f"{name} {label} fused={fused} refused: {type(exc).__name__}: {exc}"


def main() -> None:
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in _models(Path(tmp)).items():
            for line in _lines(name, path):
                print(line, flush=True)


if __name__ == "__main__":
    main()
