"""Targets as data (issue #18): Region on torchvision segmenters, Embedding and Cotangent on a
backbone without its classifier, each against PyTorch autograd pinned to ONNX Runtime's
decisions; every kind through a saved graph in a bare onnxruntime session; bad targets."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnx_saliency as osal
from onnx_saliency import targets as T
from onnx_saliency.errors import InputError, ModelError
from onnx_saliency.runtime import make_session

from conftest import export_module, pinned_decisions, prepare_for_pinning, rel_err

SIZE = 64
K = 5            # segmentation classes
TOL = 1e-4       # relative, max |a − ref| / max |ref|: float32 backward vs float32 autograd


def _segmenter(name: str, folder):
    """A torchvision segmenter (random weights, no pretrained backbone, aux_loss off) exported
    with its 'out' logits [N, K, H, W] as the only output."""
    import torch
    import torchvision

    class Out(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)["out"]

    torch.manual_seed(0)
    model = getattr(torchvision.models.segmentation, name)(
        weights=None, weights_backbone=None, num_classes=K, aux_loss=False).eval()
    prepare_for_pinning(model)
    net = Out(model).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    path = folder / f"{name}.onnx"
    export_module(net, path, x, "input", "out")
    return path, net, x.numpy()


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    """resnet18 with fc = Identity: a 512-d embedding [N, 512], no class axis."""
    import torch
    import torchvision
    torch.manual_seed(1)
    model = torchvision.models.resnet18(weights=None).eval()
    model.fc = torch.nn.Identity()
    prepare_for_pinning(model)
    x = torch.randn(2, 3, SIZE, SIZE)
    path = tmp_path_factory.mktemp("targets") / "resnet18_embedding.onnx"
    export_module(model, path, x, "input", "embedding")
    return path, model, x.numpy()


@pytest.fixture(scope="module")
def lraspp(tmp_path_factory):
    return _segmenter("lraspp_mobilenet_v3_large", tmp_path_factory.mktemp("targets"))


def _baked(graph: onnx.ModelProto, feeds: dict) -> onnx.ModelProto:
    """`graph` with its target inputs as initializers (Decisions.from_ort feeds only the image
    and `target`)."""
    out = onnx.ModelProto()
    out.CopyFrom(graph)
    for name, value in feeds.items():
        out.graph.initializer.append(onnx.numpy_helper.from_array(value, name))
    return out


def _check_against_autograd(path, net, x, target, score):
    """osal.gradient(target) against autograd of score(output) (a torch scalar), the reference
    pinned to the decisions of the same backward graph (backward_graph with this target)."""
    import torch
    got = osal.gradient(path, x, target)
    assert got.shape == x.shape and got.dtype == np.float32
    graph = osal.backward_graph(path, "input", target=target)
    feeds = target.feeds(len(x), _output_shape(path, x))
    xt = torch.from_numpy(x).requires_grad_()
    with pinned_decisions(path, net, x, graph=_baked(graph, feeds)) as pin:
        out = net(xt)
    score(out).backward()
    ref = xt.grad.numpy()
    assert np.abs(ref).max() > 0
    err = rel_err(got, ref)
    assert err <= TOL, (err, pin.flips)
    return got


def _output_shape(path, x) -> tuple:
    """The explained output's shape for these images (from ONNX Runtime's forward pass)."""
    model = onnx.load(str(path))
    return make_session(model).run(None, {"input": x})[0].shape


# -- Region on the three torchvision segmenters -----------------------------------------------

SEGMENTERS = [pytest.param("lraspp_mobilenet_v3_large"), pytest.param("deeplabv3_mobilenet_v3_large"),
              pytest.param("fcn_resnet50", marks=pytest.mark.slow)]   # fcn_resnet50: ~35 s


HEAD_INPUT = {   # the tensor feeding each segmenter's head: its default Grad-CAM layer
    "fcn_resnet50": "/model/backbone/layer4/layer4.2/Add_output_0",                 # layer4
    "deeplabv3_mobilenet_v3_large": "/model/classifier/classifier.0/Concat_output_0",  # ASPP
    "lraspp_mobilenet_v3_large":                                         # the low features
        "/model/backbone/backbone.4/block/block.3/block.3.0/Conv_output_0",
}


@pytest.mark.parametrize("name", SEGMENTERS)
def test_region_matches_autograd_of_the_masked_sum(name, tmp_path):
    """Region(k, mask) and Region(k) (the pixels ORT predicts as k) against autograd of
    Σ_{mask} out[:, k] on the same random-weight segmenter, ReLU/Clip/MaxPool decisions pinned
    to ONNX Runtime's; relative error ≤ 1e-4 (measured ~1e-6: float32 summation order). The
    default layer is the feature map feeding the head."""
    import torch
    path, net, x = _segmenter(name, tmp_path)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[10:30, 20:50] = True
    _check_against_autograd(path, net, x, T.Region(2, mask),
                            lambda out: (out[:, 2] * torch.from_numpy(mask)).sum())
    # the layer methods' default: the feature map feeding the head (layers.dense_head_input)
    tap = osal.Explainer(path, methods=["gradcam"]).requests[0].tensor
    assert tap == HEAD_INPUT[name], tap
    logits = make_session(onnx.load(str(path))).run(None, {"input": x})[0]
    predicted = logits.argmax(1)
    k = int(np.bincount(predicted.ravel(), minlength=K).argmax())   # a class that is predicted
    where = torch.from_numpy(predicted == k)                        # ORT's argmax (pinned)
    _check_against_autograd(path, net, x, T.Region(k),
                            lambda out: (out[:, k] * where).sum())


def test_region_per_image_masks_and_every_method(lraspp):
    """A [N, H, W] mask and a list of Regions give each image its own seed: equal (≤ 1e-6,
    the same graph) to each image explained alone; every method runs on a Region target and
    the gradient_sum map is the channel sum of osal.gradient's (≤ 1e-5)."""
    path, net, x = lraspp
    rng = np.random.default_rng(0)
    masks = rng.random((2, SIZE, SIZE)) < 0.3
    ex = osal.Explainer(path, methods=["gradient_sum", "gradcam", "guided_backprop", "tsgb"],
                        fused=False)
    both = ex.explain(x, T.Region(1, masks))
    listed = ex.explain(x, [T.Region(1, masks[0]), T.Region(3, masks[1])])
    for i, k in enumerate((1, 3)):
        alone = ex.explain(x[i:i + 1], T.Region(k, masks[i]))
        for key in ex.map_names:
            assert rel_err(listed[key][i], alone[key][0]) <= 1e-6, key
        if k == 1:
            for key in ex.map_names:
                assert rel_err(both[key][i], alone[key][0]) <= 1e-6, key
    grad = osal.gradient(path, x, T.Region(1, masks))
    assert rel_err(both["gradient_sum"], grad.sum(1)) <= 1e-5
    for key in ex.map_names:
        assert np.isfinite(both[key]).all() and np.abs(both[key]).max() > 0, key


# -- Embedding and Cotangent on a backbone without its classifier ------------------------------

def test_embedding_matches_autograd_of_the_cosine(embedder):
    """Embedding(r) with r [D] and [N, D] against autograd of cos(e, r) (torch's
    cosine_similarity, eps far below |e| |r|), pinned; relative error ≤ 1e-4."""
    import torch
    path, net, x = embedder
    rng = np.random.default_rng(2)
    ref = rng.standard_normal(512).astype(np.float32)
    _check_against_autograd(path, net, x, T.Embedding(ref), lambda e: torch.nn.functional.cosine_similarity(
        e, torch.from_numpy(ref)[None], dim=1).sum())
    refs = rng.standard_normal((2, 512)).astype(np.float32)
    _check_against_autograd(path, net, x, T.Embedding(refs), lambda e: torch.nn.functional.cosine_similarity(
        e, torch.from_numpy(refs), dim=1).sum())


def test_cotangent_is_the_vector_jacobian_product(embedder):
    """Cotangent(a), a per image [D] and per batch [N, D], against autograd of ⟨a, e⟩; pinned;
    relative error ≤ 1e-4. On a dense output too: Cotangent(onehot_k ⊗ mask) = Region(k, mask)
    (≤ 1e-6: the same seed values)."""
    import torch
    path, net, x = embedder
    rng = np.random.default_rng(3)
    a = rng.standard_normal(512).astype(np.float32)
    _check_against_autograd(path, net, x, T.Cotangent(a),
                            lambda e: (e * torch.from_numpy(a)).sum())
    batch = rng.standard_normal((2, 512)).astype(np.float32)
    _check_against_autograd(path, net, x, T.Cotangent(batch),
                            lambda e: (e * torch.from_numpy(batch)).sum())


def test_cotangent_on_a_dense_output_is_a_region(lraspp):
    path, net, x = lraspp
    mask = np.zeros((SIZE, SIZE), bool)
    mask[5:40, 8:33] = True
    weights = np.zeros((K, SIZE, SIZE), np.float32)
    weights[4] = mask
    assert rel_err(osal.gradient(path, x, T.Cotangent(weights)),
                   osal.gradient(path, x, T.Region(4, mask))) <= 1e-6


def test_class_objects_are_todays_ints(embedder):
    """Class(k), a list of Class, ints, per-image ints and None give identical maps (the same
    graph and inputs); an embedding net (no class axis) is explainable with Class too."""
    path, _, x = embedder
    ex = osal.Explainer(path, methods=["gradient"], fused=False)
    assert ex.num_classes == 512 and ex.output_shape[1:] == (512,)
    for plain, obj in ((7, T.Class(7)), ([3, 9], [T.Class(3), T.Class(9)]), (None, T.Class())):
        np.testing.assert_array_equal(ex.explain(x, plain)["gradient"], ex.explain(x, obj)["gradient"])


# -- saved graphs in a bare session ------------------------------------------------------------

def _bare_run(path, x, target, saved) -> dict:
    """Run the saved graph in a plain InferenceSession, feeding the inputs named in its
    metadata (`onnx_saliency.target`) with the target's arrays."""
    model = onnx.load(str(saved))
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    spec = meta["onnx_saliency.target"]
    assert spec["kind"] == target.kind
    session = ort.InferenceSession(str(saved), providers=["CPUExecutionProvider"])
    declared = {i.name: i for i in session.get_inputs()}
    feeds = {meta["onnx_saliency.input"]: x}
    arrays = target.feeds(len(x), _output_shape(path, x))
    for name, info in spec["inputs"].items():
        assert name in declared and info["shape"][0] == "N"
        value = arrays[name]
        assert value.dtype == np.dtype(info["dtype"] if info["dtype"] != "float" else "float32")
        feeds[name] = value
    assert set(feeds) == set(declared)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


@pytest.mark.parametrize("kind", ["class", "region_mask", "region_predicted", "embedding",
                                  "cotangent"])
def test_every_target_kind_runs_in_a_saved_graph(kind, lraspp, embedder, tmp_path):
    """ex.save(path, target=T) takes T's data as inputs named and typed in the metadata; a bare
    onnxruntime session fed by those names returns the maps ex.explain gives (≤ 1e-6: the same
    graph; different sessions)."""
    rng = np.random.default_rng(4)
    if kind.startswith("region") or kind == "class":
        path, _, x = lraspp
        mask = rng.random((SIZE, SIZE)) < 0.5
        logits = make_session(onnx.load(str(path))).run(None, {"input": x})[0]
        k = int(np.bincount(logits.argmax(1).ravel(), minlength=K).argmax())   # predicted
        target = {"class": T.Class([1, 4]), "region_mask": T.Region(2, mask),
                  "region_predicted": T.Region(k)}[kind]
    else:
        path, _, x = embedder
        target = (T.Embedding(rng.standard_normal(512)) if kind == "embedding"
                  else T.Cotangent(rng.standard_normal((2, 512))))
    ex = osal.Explainer(path, methods=["gradient", "gradcam"], fused=False)
    want = ex.run(x, target)
    saved = tmp_path / "explainer.onnx"
    ex.save(saved, target=target)
    got = _bare_run(path, x, target, saved)
    assert got["finite"].all()
    assert rel_err(got[ex.logits_output], want["logits"]) <= 1e-6
    for key in ex.map_names:
        assert rel_err(got[key], want[key]) <= 1e-6, key
    assert np.abs(want["gradient"]).max() > 0   # (Grad-CAM's ReLU may leave a random net's 0)


# -- bad targets -------------------------------------------------------------------------------

def test_bad_targets_get_one_sentence_each(lraspp, embedder):
    seg_path, _, x = lraspp
    emb_path, _, _ = embedder
    seg = osal.Explainer(seg_path, methods=["gradient"], fused=False)
    emb = osal.Explainer(emb_path, methods=["gradient"], fused=False)
    mask = np.ones((SIZE, SIZE), bool)
    cases = [
        (seg, T.Region(K, mask), InputError, r"Region class 5 is outside \[0, 5\) for this output\."),
        (seg, T.Region(-1), InputError, r"Region class -1 is outside"),
        (seg, T.Region(1, np.ones((32, 32), bool)), InputError,
         r"Region's mask is \[32, 32\] \(H, W\), but the output is \[64, 64\]"),
        (seg, T.Region(1, np.ones((3, SIZE, SIZE), bool)), InputError,
         r"Region's mask has 3 images for 2 images"),
        (emb, T.Region(1), ModelError, r"Region explains a dense output \[N, K, H, W\], but the "
                                       r"output has shape \[N, 512\]\."),
        (seg, T.Embedding(np.ones(K)), ModelError, r"Embedding explains an output \[N, D\] or"),
        (emb, T.Embedding(np.ones(100)), InputError, r"reference has 100 entries, but the "
                                                     r"embedding has D = 512\."),
        (emb, T.Embedding(np.ones((3, 512))), InputError, r"reference has 3 rows for 2 images"),
        (emb, T.Cotangent(np.ones(100)), InputError, r"Cotangent's array has shape \[100\], but "
                                                     r"the output is \[2, 512\]\."),
        (emb, T.Cotangent(np.ones((5, 2, 512))), InputError, r"Cotangent's array has shape"),
        (seg, [T.Region(1, mask), T.Region(1)], InputError, r"A list of targets must hold one kind"),
        (seg, [T.Region(1), 2], InputError, r"must hold target objects only"),
        (seg, [T.Region(1)], InputError, r"target has 1 entries for 2 images"),
        (seg, T.Class(K), InputError, r"target 5 is outside \[0, 5\)"),
    ]
    for ex, target, error, message in cases:
        with pytest.raises(error, match=message) as info:
            ex.explain(x, target)
        text = str(info.value)
        assert text.count(". ") == 0 and text.endswith("."), text    # one sentence
    for make, error, message in [
            (lambda: T.Region(1.5), InputError, r"Region's class_ must be an int"),
            (lambda: T.Region(1, np.ones((SIZE, SIZE))), InputError, r"mask must be a bool array"),
            (lambda: T.Embedding(np.zeros(512)), InputError, r"reference is a zero vector"),
            (lambda: T.Cotangent([np.nan]), InputError, r"array contains NaN or Inf")]:
        with pytest.raises(error, match=message):
            make()


def test_an_output_without_a_class_axis(tmp_path):
    """A model whose output is one score per image ([N]): the Explainer builds (no class axis:
    num_classes None), Class is refused in one sentence, Cotangent(w) gives the gradient of
    w·s against autograd of the same conv-ReLU-mean in PyTorch (≤ 1e-5; no ReLU input within
    1e-4 of 0, asserted, so no decision to pin)."""
    import torch
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(6)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("ReduceMean", ["r"], ["score"], axes=[1, 2, 3], keepdims=0)],
        "score", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    ex = osal.Explainer(model, methods=["gradient_sum"], fused=False)
    assert ex.num_classes is None
    with pytest.raises(ModelError, match=r"Class needs a class axis, but output 'score' has "
                                         r"shape \[N\]; explain it with targets\.Cotangent"):
        ex.explain(x)
    weights = np.array([0.5, -2.0], np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    c = torch.nn.functional.conv2d(xt, torch.from_numpy(w), padding=1)
    assert c.abs().min() > 1e-4
    (torch.relu(c).mean((1, 2, 3)) * torch.from_numpy(weights)).sum().backward()
    ref = xt.grad.numpy()
    assert rel_err(osal.gradient(model, x, T.Cotangent(weights)), ref) <= 1e-5
    assert rel_err(ex.explain(x, T.Cotangent(weights))["gradient_sum"], ref.sum(1)) <= 1e-5
