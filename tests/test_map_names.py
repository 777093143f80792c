"""Every map is what its name says: any set and order of methods, layers, combination and fused
ops gives, under each key, the map of a one-method explainer of that key, through `explain`,
through the saved graph in a bare ONNX Runtime session (outputs by name), and through the CLI's
`.npy` files. Maps are compared to 1e-5 of their peak; the fixture gives every method a map
distinct from every other's by far more (checked first), so a swapped name cannot pass."""

from __future__ import annotations

import functools
import json
import warnings

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import onnx_saliency as osal
from onnx_saliency import cli
from onnx_saliency.methods import REGISTRY

from conftest import ROOT

MODEL = ROOT / "graphs" / "mini_cnn.onnx"
LAYERS = ["conv3_0", "conv8_0", "conv12_0"]     # the three convs (8x8, 4x4, 2x2)
TARGETS = np.array([1, 3])
CLI_TARGET = 3
FUSED = [False, True] if osal.fused.available() else [False]


def _pixels() -> np.ndarray:
    """Two 8x8 RGB images, saved as PNGs for the CLI; the explainer input is pixels / 255."""
    return np.random.default_rng(3).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)


X = (_pixels().transpose(0, 3, 1, 2) / 255.0).astype(np.float32)


@functools.lru_cache(maxsize=None)
def reference(name: str, layers: tuple | None, combine: str | None, fused: bool,
              cli_target: bool = False) -> dict[str, np.ndarray]:
    """The maps of a one-method explainer."""
    method = REGISTRY[name]()
    combine = combine if method.layer_method else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex = osal.Explainer(MODEL, methods=[name], layers=list(layers) if layers else None,
                            fused=fused, combine=combine)
    return ex.explain(X, CLI_TARGET if cli_target else TARGETS)


def _expected(names, layers, combine, fused, cli_target=False) -> dict[str, np.ndarray]:
    out = {}
    for name in names:
        out.update(reference(name, layers, combine, fused, cli_target))
    return out


def _assert_same(got: dict, want: dict, where: str) -> None:
    assert list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
    for key, value in want.items():
        peak = float(np.abs(value).max())
        np.testing.assert_allclose(got[key], value, rtol=0, atol=1e-5 * max(peak, 1e-12),
                                   err_msg=f"{where}: map {key}")


SAME_BY_DEFINITION = {frozenset({"input_x_gradient", "linear_approx"})}  # Σ_c x g at the image


def test_fixture_gives_every_method_a_distinct_map():
    maps = {}
    for fused in FUSED:
        for layers in (None, ("conv8_0",)):
            for name in REGISTRY:
                for key, value in reference(name, layers, None, fused).items():
                    maps[(fused, layers, key)] = value / max(float(np.abs(value).max()), 1e-30)
    keys = list(maps)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if a[:2] == b[:2] and frozenset({a[2], b[2]}) not in SAME_BY_DEFINITION:
                assert np.abs(maps[a] - maps[b]).max() > 1e-2, (a, b)


def _write_pngs(folder) -> list[str]:
    paths = []
    for i, img in enumerate(_pixels()):
        path = folder / f"img{i}.png"
        Image.fromarray(img).save(path)
        paths.append(str(path))
    return paths


@st.composite
def requests(draw):
    names = draw(st.lists(st.sampled_from(sorted(REGISTRY)), min_size=1, max_size=6, unique=True))
    layers = draw(st.sampled_from([None, ("conv8_0",), ("conv12_0", "conv3_0"), tuple(LAYERS)]))
    combine = None
    if layers and len(layers) > 1 and any(REGISTRY[n].layer_method for n in names):
        combine = draw(st.sampled_from([None, "sum", "product"]))
    return names, layers, combine, draw(st.sampled_from(FUSED))


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(request=requests())
def test_every_map_is_the_one_its_name_says(request, tmp_path_factory):
    names, layers, combine, fused = request
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex = osal.Explainer(MODEL, methods=names, layers=list(layers) if layers else None,
                            fused=fused, combine=combine)
    want = _expected(names, layers, combine, fused)
    assert ex.map_names == list(want)
    _assert_same(ex.explain(X, TARGETS), want, "explain")

    folder = tmp_path_factory.mktemp("names")
    path = folder / "explainer.onnx"
    ex.save(path, portable=True)        # standard ops only
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    assert outputs == ["logits", *want, "finite"]
    saved = dict(zip(outputs, session.run(None, {"x": X, "target": TARGETS})))
    assert saved["finite"].all()
    _assert_same({k: saved[k] for k in want}, want, "saved graph")

    out = folder / "cli"
    argv = ["explain", str(MODEL), *_write_pngs(folder), "--out", str(out), "--size", "8", "8",
            "--mean", "0", "0", "0", "--std", "1", "1", "1", "--target", str(CLI_TARGET)]
    argv += [a for n in names for a in ("--method", n)]
    argv += [a for layer in layers or () for a in ("--layer", layer)]
    argv += ["--combine", combine] if combine else []
    assert cli.main(argv) == 0
    index = json.loads((out / "maps.json").read_text())["maps"]
    got: dict[str, list] = {}
    for entry in index:
        got.setdefault(entry["map"], []).append(np.load(out / entry["npy"]))
    want_cli = _expected(names, layers, combine, fused, cli_target=True)
    # the CLI uses the fused ops when they are built, like the Python default
    if fused != osal.fused.available():
        want_cli = _expected(names, layers, combine, osal.fused.available(), cli_target=True)
    _assert_same({k: np.stack(v) for k, v in got.items()}, want_cli, "CLI .npy files")


@pytest.mark.parametrize("order", [["gradient", "guided_backprop", "gradcam"],
                                   ["gradcam", "gradient", "tsgb", "normgrad_selective"],
                                   ["tsgb", "gradient", "ebp", "gradcam"]])
def test_the_reported_orders(order):
    """The three orders that were mislabelled."""
    ex = osal.Explainer(MODEL, methods=order, fused=False)
    _assert_same(ex.explain(X, TARGETS), _expected(order, None, None, False), "explain")
