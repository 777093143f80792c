"""Detection targets (issue #18): targets.Detection on raw single-stage outputs, YOLOv8
[N, 4+K, A] and YOLOv5 [N, A, 5+K], against PyTorch autograd of the explained score; the NMS
helper against torchvision's batched_nms; the neck-output default layer; TSGB-FC on a 1×1 conv
head; saved graphs; bad detection targets. The real detectors (nudenet's YOLOv8, a yolov5
export) are in test_detectors_real.py.

The tiny detectors use SiLU and sigmoid only (no ReLU or max-pool near-ties to pin): autograd
and ONNX Runtime agree to float32 rounding, TOL below."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_saliency as osal
from onnx_saliency import targets as T
from onnx_saliency.errors import InputError, ModelError

from conftest import export_module, rel_err

TOL = 1e-5      # relative, max |a − ref| / max |ref|: float32 graphs, no near-ties
SIZE = 16
K = 3


def _tiny_detector(v5: bool):
    """Two levels (strides 2 and 4) of SiLU convs and 1×1 heads decoded like the exporters:
    YOLOv8 rows (cx, cy, w, h, K sigmoid scores) per cell; YOLOv5 two anchors per cell with
    sigmoid objectness and scores."""
    import torch
    from torch import nn

    class TinyDetector(nn.Module):
        def __init__(self, na=2):
            super().__init__()
            self.na = na
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.SiLU(),
                                      nn.Conv2d(8, 8, 3, 1, 1), nn.SiLU())
            self.down = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.SiLU())
            rows = (5 + K) * na if v5 else 4 + K
            self.h1, self.h2 = nn.Conv2d(8, rows, 1), nn.Conv2d(16, rows, 1)

        def forward(self, x):
            p3 = self.stem(x)
            p4 = self.down(p3)
            outs = []
            for p, head, stride in ((p3, self.h1, 2), (p4, self.h2, 4)):
                y = head(p)
                n, _, h, w = y.shape
                gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
                if v5:
                    y = y.view(n, self.na, 5 + K, h, w).permute(0, 1, 3, 4, 2).sigmoid()
                    xy = (y[..., :2] * 2 - 0.5 + torch.stack([gx, gy], -1)) * stride
                    wh = (y[..., 2:4] * 2) ** 2 * stride * 4
                    outs.append(torch.cat([xy, wh, y[..., 4:]], -1).reshape(n, -1, 5 + K))
                else:
                    box = y[:, :4].reshape(n, 4, -1)
                    centre = torch.stack([gx.reshape(-1), gy.reshape(-1)]).float() * stride
                    outs.append(torch.cat([box[:, :2] + centre + stride / 2,
                                           box[:, 2:4].exp() * stride,
                                           y[:, 4:].reshape(n, K, -1).sigmoid()], 1))
            return torch.cat(outs, 1 if v5 else 2)

    torch.manual_seed(0)
    return TinyDetector().eval()


@pytest.fixture(scope="module", params=["yolov8", "yolov5"])
def detector(request, tmp_path_factory):
    import torch
    v5 = request.param == "yolov5"
    net = _tiny_detector(v5)
    path = tmp_path_factory.mktemp("det") / f"tiny_{request.param}.onnx"
    export_module(net, path, torch.randn(1, 3, SIZE, SIZE), "images", "output0")
    x = np.random.default_rng(1).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    return request.param, path, net, x


def _autograd_score(net, x, layout, picked, box=None):
    """∂/∂x of Σ_images [IoU(b_a, box)] · s_a at the candidates `picked`: the score the graph
    explains, its IoU factor (box targets) a constant. Returns the input gradient [N, 3, H, W]."""
    import torch
    xt = torch.tensor(x, requires_grad=True)
    y = net(xt)
    total = 0
    for i, c in enumerate(picked):
        s = (y[i, c.anchor, 4] * y[i, c.anchor, 5 + c.class_] if layout == "yolov5"
             else y[i, 4 + c.class_, c.anchor])
        if box is not None:
            s = s * float(T.box_iou(np.array(c.box), np.asarray(box, np.float64)))
        total = total + s
    total.backward()
    return xt.grad.numpy()


TARGETS = [dict(), dict(class_=1), dict(anchor=5), dict(anchor=70, class_=2),
           dict(box=(2.0, 2.0, 9.0, 9.0)), dict(box=(4.0, 3.0, 13.0, 12.0), class_=0)]


@pytest.mark.parametrize("kw", TARGETS, ids=[",".join(map(str, k)) or "top" for k in TARGETS])
def test_detection_gradient_matches_autograd(detector, kw):
    layout, path, net, x = detector
    target = T.Detection(**kw)
    ex = osal.Explainer(path, methods=["gradient", "input_x_gradient"])
    out = ex.run(x, target)
    picked = target.chosen(out["logits"])
    if "anchor" in kw:
        assert [c.anchor for c in picked] == [kw["anchor"]] * len(x)
    if "class_" in kw:
        assert {c.class_ for c in picked} == {kw["class_"]}
    g = _autograd_score(net, x, layout, picked, kw.get("box"))
    assert rel_err(out["gradient"], np.abs(g).max(1)) < TOL
    assert rel_err(out["input_x_gradient"], (g * x).sum(1)) < TOL
    # the raw gradient entry point, the same score
    raw = osal.gradient(path, x, target=target)
    assert raw.shape == x.shape and rel_err(raw, g) < TOL


def test_detection_per_image_targets_and_the_chosen_candidate(detector):
    """A list gives each image its own candidate; `chosen` names the candidate the graph
    explains: the top-scoring one is the first of `candidates` with no threshold."""
    layout, path, net, x = detector
    ex = osal.Explainer(path, methods=["gradient"])
    logits = ex.run(x, T.Detection())["logits"]
    top = T.candidates(logits, score_threshold=0.0, max_candidates=1)
    assert [c[0].anchor for c in top] == [c.anchor for c in T.Detection().chosen(logits)]
    both = [T.Detection(anchor=7, class_=0), T.Detection(anchor=40, class_=2)]
    out = ex.run(x, both)
    picked = [T.Candidate(7, 0, 0.0, ()), T.Candidate(40, 2, 0.0, ())]
    assert rel_err(out["gradient"], np.abs(_autograd_score(net, x, layout, picked)).max(1)) < TOL


def test_candidates_match_torchvision_nms(detector):
    """The NMS helper against torchvision.ops.batched_nms on the same boxes and scores (each
    candidate's best class, score threshold, per-class IoU threshold)."""
    import torch
    from torchvision.ops import batched_nms
    layout, path, net, x = detector
    ex = osal.Explainer(path, methods=["gradient"])
    logits = ex.run(x, T.Detection())["logits"]
    for threshold, iou in ((0.0, 0.45), (0.3, 0.3), (0.5, 0.7)):
        ours = T.candidates(logits, layout, threshold, iou, max_candidates=1000)
        for i, row in enumerate(logits):
            rows = row if layout == "yolov5" else row.T
            cx, cy, w, h = (rows[:, j].astype(np.float64) for j in range(4))
            boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
            scores = (rows[:, 5:] * rows[:, 4:5] if layout == "yolov5" else rows[:, 4:])
            cls, best = scores.argmax(1), scores.max(1).astype(np.float64)
            keep = np.flatnonzero(best >= threshold)
            ref = batched_nms(torch.tensor(boxes[keep]), torch.tensor(best[keep]),
                              torch.tensor(cls[keep]), iou).numpy()
            assert [c.anchor for c in ours[i]] == keep[ref].tolist()
            assert all(c.class_ == cls[c.anchor] for c in ours[i])


def test_default_layer_is_the_neck_output_at_the_candidates_level(detector):
    """Grad-CAM with no layer: `gradcam@neck`, the map at the neck output feeding the level of
    the explained candidate (equal to Grad-CAM asked at that tensor), zero from other levels."""
    layout, path, net, x = detector
    defaults = osal.default_layers(path)
    assert defaults["gradcam"].startswith("neck (")
    ex = osal.Explainer(path, methods=["gradcam", "normgrad"])
    assert ex.map_names == ["gradcam@neck", "normgrad@neck"]
    levels = ex._levels
    assert [lv.grid for lv in levels] == [(8, 8), (4, 4)]
    names = [ex.layer_names.friendly(lv.tensor) for lv in levels]
    per_level = osal.Explainer(path, methods=["gradcam", "normgrad"], layers=names)
    for level, name in zip(levels, names):
        for anchor in (level.start, level.stop - 1):
            target = T.Detection(anchor=anchor)
            got, want = ex.run(x, target), per_level.run(x, target)
            assert np.abs(want[f"normgrad@{name}"]).max() > 0
            for method in ("gradcam", "normgrad"):
                ref = want[f"{method}@{name}"]
                np.testing.assert_allclose(got[f"{method}@neck"], ref, rtol=1e-6,
                                           atol=1e-7 * np.abs(ref).max())


def _bare_run(saved, x, target, shape) -> dict:
    model = onnx.load(str(saved))
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    spec = meta["onnx_saliency.target"]
    assert spec["kind"] == "detection" and spec["mode"] == target.mode
    session = ort.InferenceSession(str(saved), providers=["CPUExecutionProvider"])
    arrays = target.feeds(len(x), shape)
    feeds = {meta["onnx_saliency.input"]: x, **{n: arrays[n] for n in spec["inputs"]}}
    assert set(feeds) == {i.name for i in session.get_inputs()}
    for name, info in spec["inputs"].items():
        assert np.dtype(feeds[name].dtype) == np.dtype({"int64": np.int64, "float": np.float32}[
            info["dtype"]])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


@pytest.mark.parametrize("kw", [dict(), dict(anchor=9, class_=1), dict(box=(1, 1, 8, 9))],
                         ids=["top", "anchor", "box"])
def test_detection_runs_in_a_saved_graph(detector, kw, tmp_path):
    layout, path, net, x = detector
    target = T.Detection(**kw)
    ex = osal.Explainer(path, methods=["gradient", "gradcam", "tsgb"])
    saved = tmp_path / "explainer.onnx"
    ex.save(saved, target=target)
    got = _bare_run(saved, x, target, ex.output_shape)
    want = ex.explain(x, target)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6 * np.abs(value).max())


def test_tsgb_fc_rule_on_a_1x1_conv_head_equals_the_gemm_rule(tmp_path):
    """TSGB(conv_head=True) on a model scoring classes with a 1×1 conv (no FC node) applies
    TSGB-FC at that conv, location by location: with the conv after the global pool it is the
    Gemm it replaces, and TSGB's maps of the two models are equal; by default (METHODS.md)
    TSGB-Conv applies there, and the map differs."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    feats = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
    fc = nn.Linear(16, 5)
    conv = nn.Conv2d(16, 5, 1)
    conv.weight.data = fc.weight.data[:, :, None, None].clone()
    conv.bias.data = fc.bias.data.clone()
    gemm_net = nn.Sequential(feats, nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc).eval()
    conv_net = nn.Sequential(feats, nn.AdaptiveAvgPool2d(1), conv, nn.Flatten()).eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(np.float32)
    maps = {}
    for name, net in (("gemm", gemm_net), ("conv", conv_net)):
        path = tmp_path / f"{name}.onnx"
        torch.onnx.export(net, torch.tensor(x), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}})
        tsgb = osal.methods.TSGB(gamma=0.8, conv_head=True)
        maps[name] = osal.Explainer(path, methods=[tsgb]).explain(x, 2)["tsgb"]
    assert rel_err(maps["conv"], maps["gemm"]) < 1e-5
    default = osal.Explainer(tmp_path / "conv.onnx", methods=[osal.methods.TSGB(gamma=0.8)])
    assert rel_err(default.explain(x, 2)["tsgb"], maps["gemm"]) > 1e-2
    from onnx_saliency.backward import classifier
    from onnx_saliency.graph import GraphIndex
    index = GraphIndex(osal.Explainer(tmp_path / "conv.onnx").canonical.model)
    assert len(classifier.scoring_convs(index)) == 1


def test_bad_detection_targets_get_one_sentence_each(detector, tmp_path):
    layout, path, net, x = detector
    ex = osal.Explainer(path, methods=["gradient"])
    a = 160 if layout == "yolov5" else 80
    cases = [(lambda: ex.run(x, T.Detection(class_=K)), f"outside [0, {K})"),
             (lambda: ex.run(x, T.Detection(anchor=a)), f"outside [0, {a})"),
             (lambda: T.Detection(anchor=1, box=(0, 0, 2, 2)), "an anchor or a box"),
             (lambda: T.Detection(box=(5, 5, 2, 9)), "x2 > x1"),
             (lambda: T.Detection(box=(0, 0, 1)), "x2 > x1"),
             (lambda: T.Detection(box=(0, np.nan, 1, 1)), "NaN"),
             (lambda: T.Detection(anchor=-1), "non-negative int"),
             (lambda: T.Detection(class_=1.5), "non-negative int"),
             (lambda: T.Detection(layout="ssd"), "layout must be"),
             (lambda: ex.run(x, [T.Detection(anchor=1), T.Detection(box=(0, 0, 4, 4))]),
              "one kind")]
    for call, words in cases:
        with pytest.raises((InputError, ModelError)) as info:
            call()
        message = str(info.value)
        assert words in message and "\n" not in message, message
    # a classifier's output is not a detector's
    from conftest import tiny_cnn
    cnn = tiny_cnn(tmp_path / "cnn.onnx", (16, 16))
    with pytest.raises(ModelError, match="single-stage detector"):
        osal.Explainer(cnn).run(np.zeros((1, 3, 16, 16), np.float32), T.Detection())


def test_the_distributed_payload_feeds_a_detection_graphs_inputs(detector, tmp_path):
    """distributed.BatchExplainer feeds every input the saved graph declares from the batch
    (`target_box` here), and names a missing one."""
    from onnx_saliency.distributed import BatchExplainer
    layout, path, net, x = detector
    target = T.Detection(box=(1, 1, 8, 9), class_=1)
    ex = osal.Explainer(path, methods=["gradient", "gradcam"])
    saved = tmp_path / "explainer.onnx"
    ex.save(saved, target=target)
    payload = BatchExplainer(saved.read_bytes())
    got = payload({"image": x, "target": np.full(len(x), 1), "target_box": np.tile(
        np.float32([1, 1, 8, 9]), (len(x), 1))})
    for key, value in ex.explain(x, target).items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6 * np.abs(value).max())
    with pytest.raises(InputError, match="takes 'target_box'"):
        payload({"image": x})
