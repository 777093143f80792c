"""from_torch, the CLI's export subcommand, and the pointing-game and deletion/insertion metrics
against hand-computed cases."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnx_saliency as osal
from onnx_saliency.cli import main
from onnx_saliency.metrics import box_mask, deletion_insertion, pointing_game

from conftest import export_torchvision


def test_importing_the_package_does_not_import_torch():
    code = "import sys, onnx_saliency; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_from_torch_gives_the_maps_of_a_hand_export(tmp_path):
    import torch
    path = tmp_path / "r18.onnx"
    model = export_torchvision("resnet18", path, 48)
    x = np.random.default_rng(0).standard_normal((2, 3, 48, 48)).astype(np.float32)
    by_hand = osal.Explainer(path, methods=["gradient", "gradcam"], layers=["layer3"]).explain(x, 4)
    ex = osal.from_torch(model, torch.zeros(1, 3, 48, 48), methods=["gradient", "gradcam"],
                         layers=["layer3"])
    ours = ex.explain(x, 4)
    assert set(ours) == {"gradient", "gradcam@layer3"}
    for key in ours:
        np.testing.assert_allclose(ours[key], by_hand[key], rtol=1e-5, atol=1e-7)
    assert not model.training
    with pytest.raises(osal.SaliencyError, match="nn.Module"):
        osal.from_torch(object(), torch.zeros(1, 3, 8, 8))


def test_cli_export_writes_a_runnable_graph(tmp_path, capsys):
    path = tmp_path / "r18.onnx"
    export_torchvision("resnet18", path, 32)
    out = tmp_path / "explainer.onnx"
    assert main(["export", str(path), "-o", str(out), "--method", "tsgb", "--method", "normgrad",
                 "--portable"]) == 0
    model = onnx.load(out)
    assert not any(n.domain for n in model.graph.node)       # portable: standard ops only
    names = [o.name for o in model.graph.output][1:]
    assert names[0] == "tsgb" and names[1].startswith("normgrad@") and names[2:] == ["finite"]
    assert main(["export", str(path), "-o", str(out)]) == 0               # portable by default
    assert not any(n.domain for n in onnx.load(out).graph.node)
    assert main(["export", str(path), "-o", str(out), "--method", "tsgb", "--fused"]) == 0
    assert any(n.domain == "ai.onnx_saliency" for n in onnx.load(out).graph.node)
    assert main(["export", str(tmp_path / "missing.onnx"), "-o", str(out)]) == 2   # a usage error
    assert "error" in capsys.readouterr().err
    # combination and meta from the command line give the Python API's maps
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    feed = {"input": x, "target": np.array([1, 2], np.int64)}
    for flags, kwargs in [(["--layer", "stages", "--combine", "product", "--weights", "1,2,3,4"],
                           {"layers": "stages", "combine": "product", "weights": [1, 2, 3, 4]}),
                          (["--meta", "--meta-lr", "0.01"], {"meta": True, "meta_lr": 0.01})]:
        assert main(["export", str(path), "-o", str(out), "--method", "normgrad_selective",
                     *flags]) == 0
        ours = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feed)
        ref = osal.Explainer(path, methods=["normgrad_selective"], **kwargs).explain(x, [1, 2])
        assert [o.name for o in onnx.load(out).graph.output][1:] == [*ref, "finite"]
        np.testing.assert_allclose(ours[1], next(iter(ref.values())), rtol=1e-5, atol=1e-7)
    assert main(["export", str(path), "-o", str(out), "--combine", "sum", "--weights", "1,x"]) == 2


def test_pointing_game_hand_cases():
    maps = np.zeros((3, 40, 40))
    maps[0, 5, 5] = 1        # 21.2 px from the box corner (20, 20)
    maps[1, 25, 25] = 1      # inside
    maps[2, 10, 20] = 1      # 10 px above the box
    masks = np.stack([box_mask((40, 40), (20, 20, 30, 30))] * 3)
    result = pointing_game(maps, masks, labels=[0, 0, 1])
    np.testing.assert_array_equal(result.hits, [False, True, True])
    assert result.accuracy == pytest.approx(2 / 3)
    assert result.per_class == {0: 0.5, 1: 1.0} and result.class_mean == pytest.approx(0.75)
    assert pointing_game(maps, masks, tolerance=25).hits.all()
    with pytest.raises(osal.MethodError, match="empty"):
        pointing_game(maps, np.zeros_like(masks))


def _sum_model(path):
    """logits = [Σ x, 0]: the class-0 probability is sigmoid(Σ x)."""
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=0),
             helper.make_node("Unsqueeze", ["s", "one"], ["s1"]),
             helper.make_node("Mul", ["s1", "zero"], ["z1"]),
             helper.make_node("Concat", ["s1", "z1"], ["logits"], axis=1)]
    graph = helper.make_graph(nodes, "sum", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 2, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
                               helper.make_tensor("one", TensorProto.INT64, [1], [1]),
                               helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_deletion_and_insertion_auc_hand_case(tmp_path):
    path = tmp_path / "sum.onnx"
    _sum_model(path)
    ex = osal.Explainer(path, methods=["gradient"])
    image = np.array([[[[3.0, -1.0], [2.0, 0.5]]]], np.float32)
    saliency = np.array([[[4.0, 1.0], [3.0, 2.0]]])            # order: 3.0, 2.0, 0.5, -1.0
    sig = lambda v: 1 / (1 + np.exp(-v))
    # deletion (baseline 0), 4 steps: sums 4.5, 1.5, -0.5, -1.0, 0
    dele = sig(np.array([4.5, 1.5, -0.5, -1.0, 0.0]))
    ins = sig(np.array([0.0, 3.0, 5.0, 5.5, 4.5]))
    auc = lambda c: np.sum((c[1:] + c[:-1]) / 2) / 4
    np.testing.assert_allclose(deletion_insertion(ex, image, saliency, 0, "deletion", steps=4),
                               [auc(dele)], rtol=1e-6)
    np.testing.assert_allclose(deletion_insertion(ex, image, saliency, 0, "insertion", steps=4),
                               [auc(ins)], rtol=1e-6)
    with pytest.raises(osal.MethodError, match="mode"):
        deletion_insertion(ex, image, saliency, 0, "sideways")


def test_overlays_and_grid_are_pictures_of_the_right_size(tmp_path):
    from PIL import Image

    from onnx_saliency import viz
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    maps = {"gradient": rng.standard_normal((30, 40)), "gradcam@layer4": np.zeros((30, 40))}
    viz.save_overlay(tmp_path / "o.png", image, maps["gradient"], colorbar=True)
    with Image.open(tmp_path / "o.png") as im:
        assert im.format == "PNG" and im.size == (40 + viz.BAR_AREA, 30)   # the bar, its ticks
    picture = viz.grid(image, maps, columns=2)
    assert picture.size == (2 * 40 + viz.BAR_AREA, 2 * (30 + viz.LABEL_H))
    plain = np.asarray(viz.overlay(image, maps["gradient"], alpha=0.0))
    np.testing.assert_array_equal(plain, image)          # alpha 0 leaves the image untouched


def test_cli_demo_explain_and_usage_errors(tmp_path, capsys):
    import json

    from PIL import Image

    from onnx_saliency import viz
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    index = json.loads((tmp_path / "demo" / "maps.json").read_text())
    assert len(index["maps"]) == 4
    for entry in index["maps"]:
        assert np.load(tmp_path / "demo" / entry["npy"]).shape == (48, 192)
        with Image.open(tmp_path / "demo" / entry["png"]) as im:
            # the photo's resolution, enlarged 3x (long side >= viz.MIN_LONG_SIDE), bar, caption
            assert im.format == "PNG" and im.size == (3 * 192 + viz.BAR_AREA, 3 * 48 + viz.CAPTION_H)
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0    # again: replaces its own maps
    again = json.loads((tmp_path / "demo" / "maps.json").read_text())
    assert [e["npy"] for e in again["maps"]] == [e["npy"] for e in index["maps"]]
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == sorted(
        [f for e in again["maps"] for f in (e["npy"], e["png"])] + ["maps.json"])
    assert main(["explain", str(tmp_path / "nope.onnx"), str(tmp_path / "nothing.png")]) == 2
    assert "no such image" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["explain", "--bogus-flag"])
    assert exc.value.code == 2
    from importlib import resources
    bundled = str(resources.files("onnx_saliency") / "data" / "text_direction_cls.onnx")
    picture = str(tmp_path / "demo" / index["maps"][0]["png"])
    assert main(["explain", bundled, picture, "--target", "cat", "--out", str(tmp_path / "o")]) == 2
    assert "class label" in capsys.readouterr().err
    labels = tmp_path / "labels.txt"
    labels.write_text("upright\nupside down\n")
    assert main(["explain", bundled, picture, "--target", "upside down", "--labels", str(labels),
                 "--preset", "paddle", "--size", "48", "192", "--out", str(tmp_path / "o")]) == 0
    entry = json.loads((tmp_path / "o" / "maps.json").read_text())["maps"][0]
    assert entry["target"] == 1 and entry["label"] == "upside down" and entry["method"] == "gradient"
    assert main(["layers", bundled]) == 0
    printed = capsys.readouterr().out
    assert "default layers:" in printed and "\tN×" in printed


def test_folder_runs_stream_in_bounded_memory(tmp_path):
    """Peak Python-side memory of a 240-image folder run is about that of a 48-image run: images
    are read, explained and written one batch at a time."""
    import tracemalloc

    from PIL import Image
    from importlib import resources
    bundled = str(resources.files("onnx_saliency") / "data" / "text_direction_cls.onnx")
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(240):
        Image.fromarray(rng.integers(0, 255, (48, 192, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")

    def peak(count):
        sub = tmp_path / f"subset{count}"
        sub.mkdir()
        for f in sorted(folder.iterdir())[:count]:
            (sub / f.name).write_bytes(f.read_bytes())
        tracemalloc.start()
        assert main(["explain", bundled, str(sub), "--preset", "paddle", "--size", "48", "192",
                     "--batch-size", "16", "--out", str(tmp_path / f"out{count}")]) == 0
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(48), peak(240)
    assert large < 1.5 * small, (small, large)


def test_randomization_check_maps_drift_from_the_original(tmp_path):
    from onnx_saliency.metrics import randomization_check
    path = tmp_path / "r18.onnx"
    export_torchvision("resnet18", path, 32)
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    steps = randomization_check(path, x, "gradient", target=[1, 2])
    assert len(steps) == 21                       # 20 convs + the classifier, top down
    assert steps[0].layer.startswith("/fc")
    assert all(-1 <= s.similarity <= 1 for s in steps)
    assert steps[-1].similarity < 0.5             # fully random: the gradient map is another one


def test_dask_recipe_maps_the_saved_graph_over_batches(tmp_path):
    import pickle

    import dask.bag

    from onnx_saliency.distributed import BatchExplainer
    path = tmp_path / "r18.onnx"
    export_torchvision("resnet18", path, 32)
    ex = osal.Explainer(path, methods=["gradient", "tsgb"])
    graph_path = tmp_path / "explainer.onnx"
    ex.save(graph_path)
    rng = np.random.default_rng(3)
    batches = [{"image": rng.standard_normal((4, 3, 32, 32)).astype(np.float32),
                "target": rng.integers(0, 1000, 4)} for _ in range(6)]
    payload = BatchExplainer(graph_path.read_bytes())
    payload(batches[0])                                   # a used payload still pickles small
    assert len(pickle.dumps(payload)) < graph_path.stat().st_size + 10_000
    results = dask.bag.from_sequence(batches, npartitions=3).map(payload).compute(scheduler="threads")
    assert len(results) == 6
    for batch, result in zip(batches, results):
        expected = ex.explain(batch["image"], batch["target"])
        for key in expected:
            np.testing.assert_allclose(result[key], expected[key], rtol=1e-5, atol=1e-7)


def test_cli_bench_prints_the_ratio_table(capsys):
    from importlib import resources
    bundled = str(resources.files("onnx_saliency") / "data" / "text_direction_cls.onnx")
    assert main(["bench", bundled, "--method", "gradient", "--batches", "1", "--repeat", "1",
                 "--size", "48", "192"]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| gradient")]
    assert len(lines) == 1 and lines[0].count("|") == 5


def test_paired_ratio_pairs_each_round_and_takes_more_rounds_for_short_calls(monkeypatch):
    """bench.paired_ratio: the median of per-round ratios (each round: the reference, then fn),
    `repeat` rounds, more where they would take under `min_seconds` (on a fake clock that
    advances 1 ms a reading: the warm-up reads 1 ms, so 0.05 s asks for 50 rounds)."""
    from onnx_saliency import bench
    calls = []
    ratio, ref = bench.paired_ratio(lambda: calls.append("fn"), lambda: calls.append("ref"), 3)
    assert calls == ["fn", "ref"] + ["ref", "fn"] * 3 and ratio > 0 and ref > 0
    clock = iter(range(10**6))
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock) * 1e-3)
    calls.clear()
    bench.paired_ratio(lambda: calls.append("fn"), lambda: None, 3, min_seconds=0.05)
    assert len(calls) == 1 + 50


def test_channels_last_models_are_explained_in_nchw(tmp_path):
    import torch

    class NHWC(torch.nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            return self.body(x.permute(0, 3, 1, 2))

    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, 3)).eval()
    paths = {}
    for name, module, shape in [("nchw", body, (1, 3, 8, 8)), ("nhwc", NHWC(body), (1, 8, 8, 3))]:
        paths[name] = tmp_path / f"{name}.onnx"
        torch.onnx.export(module, (torch.randn(*shape),), str(paths[name]), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    a = osal.Explainer(paths["nchw"], methods=["gradient", "tsgb"]).explain(x, 1)
    b = osal.Explainer(paths["nhwc"], methods=["gradient", "tsgb"], layout="NHWC").explain(x, 1)
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-7)
    with pytest.raises(osal.ModelLoadError, match="layout"):
        osal.Explainer(paths["nchw"], layout="CHW")
