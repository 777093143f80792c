"""TSGB (docs/methods.md §5) against its identities and a clean PyTorch reference of its equations.

Tolerances: conservation sums 1e-4 of the relevance mass Σ|ĝ_z ⊙ z| (with γ = 1 the totals
themselves nearly cancel, so a relative error of the sum would measure float noise); maps vs the PyTorch reference 1e-3 of the map's
peak (the reference runs the same float32 equations; TSGB divides by activation sums, which
amplifies last-bit differences of the two engines a little more than the plain gradient does).
The reference is pinned to the ORT graph's decisions (ReLU masks, MaxPool argmaxes; its values
there, so sign(a) agrees too: conftest.pinned_decisions); no tolerance would cover a near-tie
decided the other way.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from scipy.stats import spearmanr

import onnx_saliency as osal
from onnx_saliency import _kernels, methods
from onnx_saliency.canonical import canonicalize
from onnx_saliency.graph import GraphIndex, attrs_of
from onnx_saliency.runtime import make_session

from conftest import Decisions, export_torchvision, pinned_decisions, rapidocr_classifier

EPS = 1e-10


def _images(n, size, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def _tsgb_signals(path, tensors, x, target, gamma=1.0):
    """Forward values and TSGB signals ĝ at `tensors` (via backward_graph + extra outputs)."""
    model = osal.backward_graph(path, list(tensors), rule=methods.TSGB(gamma=gamma))
    for t in tensors:
        model.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    session = make_session(model)
    outs = session.run(None, {session.get_inputs()[0].name: x, "target": np.asarray(target)})
    n = len(tensors)
    return dict(zip(tensors, outs[n:])), dict(zip(tensors, outs[:n]))


def _assert_conserved(a, ga, z, gz, kept=None):
    """Σ a ⊙ ĝ_a = Σ ĝ_z ⊙ z ⊙ kept per image, within 1e-4 of the mass Σ|ĝ_z ⊙ z|. `kept` is the
    share that survives the stabiliser, D/(D + ε) (1 where D ≫ ε; 0 where a window sees only
    zeros, so its bias relevance has nowhere to go)."""
    rel_in = (a.astype(np.float64) * ga).sum((1, 2, 3))
    rel_out = gz.astype(np.float64) * z
    mass = np.abs(rel_out).sum((1, 2, 3))
    expected = (rel_out * (1.0 if kept is None else kept)).sum((1, 2, 3))
    assert (mass > 0).all()
    assert (np.abs(rel_in - expected) <= 1e-4 * mass).all(), (rel_in, expected, mass)


def _kept_share(a, node, index):
    """D/(D + ε) on the conv's output grid, per group (float64 NumPy, via the portable twin's
    box-sum written with explicit loops over the kernel)."""
    at = attrs_of(node)
    kh, kw = index.shapes[node.input[1]][2:]
    sh, sw = at.get("strides", [1, 1])
    pt, pl, pb, pr = at.get("pads", [0] * 4)
    dh, dw = at.get("dilations", [1, 1])
    group = at.get("group", 1)
    n, c, h, w = a.shape
    absum = np.abs(a.astype(np.float64)).reshape(n, group, c // group, h, w).sum(2)
    padded = np.pad(absum, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    d = np.zeros((n, group, ho, wo))
    for i in range(kh):
        for j in range(kw):
            d += padded[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
    k_out = index.shapes[node.input[1]][0]
    return np.repeat(d / (d + EPS), k_out // group, axis=1)


@pytest.mark.parametrize("name", ["resnet18", "vgg11", "mobilenet_v2", "regnet_x_400mf"])
def test_every_conv_conserves_relevance(name, tmp_path):
    """Σ a ⊙ ĝ_a = Σ ĝ_z ⊙ z for every conv (depthwise: MobileNetV2's standard-op rule; grouped
    with 16 channels a group: RegNetX's RectifiedConvTranspose), per image; the signal
    the graph carries at z is fed to the kernel, and the graph's own ĝ_a is checked wherever the
    conv is the only consumer of its input."""
    path = tmp_path / f"{name}.onnx"
    export_torchvision(name, path, 64)
    index = GraphIndex(canonicalize(path).model)
    convs = [n for n in index.nodes if n.op_type == "Conv"]
    tensors = sorted({t for n in convs for t in (n.input[0], n.output[0])})
    x = _images(2, 64)
    acts, grads = _tsgb_signals(path, tensors, x, [3, 5])
    checked_graph = 0
    for node in convs:
        a, z = acts[node.input[0]], acts[node.output[0]]
        gz = grads[node.output[0]]
        at = attrs_of(node)
        k = list(index.shapes[node.input[1]][2:])
        ga = _kernels.rectified_conv_transpose(
            gz, z, a, k, at.get("strides", [1, 1]), at.get("pads", [0] * 4),
            at.get("dilations", [1, 1]), at.get("group", 1), EPS)
        kept = _kept_share(a, node, index)
        _assert_conserved(a, ga, z, gz, kept)
        if len(index.consumers[node.input[0]]) == 1 and node.input[0] in grads:
            _assert_conserved(a, grads[node.input[0]], z, gz, kept)
            checked_graph += 1
    assert checked_graph >= 5


def test_batchnorm_ratio_rule_conserves_relevance(tmp_path):
    path = tmp_path / "r18_bn.onnx"
    export_torchvision("resnet18", path, 48, keep_bn=True)
    index = GraphIndex(canonicalize(path).model)
    bns = [n for n in index.nodes if n.op_type == "BatchNormalization"]
    assert len(bns) == 20
    tensors = sorted({t for n in bns for t in (n.input[0], n.output[0])})
    acts, grads = _tsgb_signals(path, tensors, _images(2, 48), [1, 2])
    for node in bns:
        _assert_conserved(acts[node.input[0]], grads[node.input[0]], acts[node.output[0]],
                          grads[node.output[0]])


@pytest.mark.parametrize("gamma", [1.0, 0.8])
def test_tsgb_fc_sum_identity(gamma, tmp_path):
    """Σ_i a_i ĝ_a,i = (1 − γ) z⁺_t at the classifier's input (one-hot seed on t)."""
    path = tmp_path / "r18.onnx"
    export_torchvision("resnet18", path, 64)
    index = GraphIndex(canonicalize(path).model)
    fc = [n for n in index.nodes if n.op_type == "Gemm"][-1]
    targets = np.array([4, 9])
    acts, grads = _tsgb_signals(path, [fc.input[0]], _images(2, 64), targets, gamma)
    a, ga = acts[fc.input[0]].astype(np.float64), grads[fc.input[0]]
    w = index.const(fc.input[1]).astype(np.float64)   # [K, N] (transB = 1)
    z_pos = a @ np.maximum(w, 0).T
    expected = (1 - gamma) * z_pos[np.arange(2), targets]
    np.testing.assert_allclose((a * ga).sum(1), expected, rtol=1e-4,
                               atol=1e-5 * np.abs(z_pos).max())


def _torch_tsgb(model, x, target, pins, gamma=1.0):
    """TSGB in PyTorch: conv2d, batch_norm and the last linear get autograd Functions whose
    backward is the TSGB rule (written from docs/methods.md §5); everything else is autograd, with
    the ReLUs and MaxPools pinned to `pins` (ORT's decisions)."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    last_linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]

    class Conv(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, w, b, stride, padding, dilation, groups):
            z = F.conv2d(a, w, b, stride, padding, dilation, groups)
            ctx.saved = (a.detach().clone(), z.detach().clone())  # z may be changed in place
            ctx.geo = (w.shape[2:], stride, padding, dilation, groups)
            return z

        @staticmethod
        def backward(ctx, gz):
            a, z = ctx.saved
            k, stride, padding, dilation, groups = ctx.geo
            n, c, h, w_ = a.shape
            s = (gz * z).reshape(n, groups, -1, *z.shape[2:]).sum(2)
            d = F.conv2d(a.abs().reshape(n, groups, -1, h, w_).sum(2),
                         torch.ones(groups, 1, *k, dtype=a.dtype), None, stride, padding,
                         dilation, groups)
            spread = torch.nn.grad.conv2d_input((n, groups, h, w_), torch.ones(groups, 1, *k),
                                                s / (d + EPS), stride, padding, dilation, groups)
            spread = spread.repeat_interleave(c // groups, dim=1)
            return torch.sign(a) * spread, None, None, None, None, None, None

    class BatchNorm(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, *args):
            y = F.batch_norm(x, *args)
            ctx.saved = (x.detach().clone(), y.detach().clone())  # ResNet adds into y in place
            return y

        @staticmethod
        def backward(ctx, gy):
            x, y = ctx.saved
            return (gy * y / (x + EPS),) + (None,) * 7

    class Linear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, w, b):
            ctx.save_for_backward(a, w)
            return F.linear(a, w, b)

        @staticmethod
        def backward(ctx, gz):
            a, w = ctx.saved_tensors
            wp, wn = w.clamp(min=0), w.clamp(max=0)
            beta = gamma * (a @ wp.T) / (a @ wn.T).abs().clamp_min(EPS)
            return gz @ wp + (gz * beta) @ wn, None, None

    class Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is F.conv2d:
                a, w, b = args[:3]
                stride, padding, dilation, groups = (list(args[3:]) + [None] * 4)[:4]
                pair = lambda v, d: tuple(v) if isinstance(v, (tuple, list)) else (v if v is not None else d,) * 2
                return Conv.apply(a, w, b, pair(stride or kwargs.get("stride"), 1),
                                  pair(padding or kwargs.get("padding"), 0),
                                  pair(dilation or kwargs.get("dilation"), 1),
                                  groups or kwargs.get("groups", 1))
            if func is F.batch_norm:
                return BatchNorm.apply(*args, *[kwargs[k] for k in kwargs])
            if func is F.linear and args[1] is last_linear.weight:
                return Linear.apply(*args)
            return func(*args, **kwargs)

    xt = torch.tensor(x, requires_grad=True)
    with Mode(), pinned_decisions(pins, model):   # the pins see each call first
        logits = model(xt)
    seed = torch.zeros_like(logits)
    seed[torch.arange(len(target)), torch.as_tensor(target)] = 1
    logits.backward(seed)
    return (xt * xt.grad).sum(1).detach().numpy()


@pytest.mark.parametrize("name,size", [("resnet18", 64), ("resnet18", 57), ("vgg11", 64),
                                       ("mobilenet_v2", 64)])
def test_tsgb_matches_pytorch_reference(name, size, tmp_path):
    """Odd and even sizes, 7×7/s2 and 1×1/s2 convs, overlapping 3×3/s2 MaxPool (ResNet),
    depthwise convs and ReLU6 (MobileNetV2: its convs rescaled to unit variance on the images,
    without which its signals shrink to ~1e-10 and float32 rounding decides 1-3% of the map).
    The ONNX model has BN folded into the convs, the reference keeps BN with its ratio rule:
    equality also shows TSGB's invariance to the folding."""
    path = tmp_path / f"{name}.onnx"
    x = _images(2, size, seed=3)
    model = export_torchvision(name, path, size,
                               calibrate=x if name == "mobilenet_v2" else None)
    target = [7, 2]
    ex = osal.Explainer(path, methods=["tsgb"])
    ours = ex.explain(x, target)["tsgb"]
    ref = _torch_tsgb(model, x, target, Decisions.from_ort(path, x, graph=ex.model, target=target))
    peak = np.abs(ref).max()
    assert np.abs(ours - ref).max() <= 1e-3 * peak, np.abs(ours - ref).max() / peak


def test_tsgb_invariant_to_batchnorm_folding(tmp_path):
    """The graph of the folded model and that of the model with BN kept give the same maps.
    Their forward passes differ in the last bits, so a ReLU near-tie may go either way in
    them: each is compared with the reference pinned to its own decisions, and the two with
    each other where they decide alike."""
    folded, kept = tmp_path / "folded.onnx", tmp_path / "kept.onnx"
    model = export_torchvision("resnet18", folded, 48)
    export_torchvision("resnet18", kept, 48, keep_bn=True)
    x, target = _images(2, 48, seed=1), [1, 2]
    maps, pins = [], []
    for path in (folded, kept):
        ex = osal.Explainer(path, methods=["tsgb"])
        maps.append(ex.explain(x, target)["tsgb"])
        pins.append(Decisions.from_ort(path, x, graph=ex.model, target=target))
        ref = _torch_tsgb(model, x, target, pins[-1])
        assert np.abs(maps[-1] - ref).max() <= 1e-3 * np.abs(ref).max(), path.name
    a, b = maps
    if pins[0] == pins[1]:
        assert np.abs(a - b).max() <= 1e-3 * np.abs(b).max()


def test_tsgb_is_target_selective_on_a_real_model():
    """The rapidocr text-direction classifier (trained, 2 classes): the maps of 0° and 180°
    differ (Spearman ρ < 0.9)."""
    from importlib import resources

    from PIL import Image
    path = rapidocr_classifier()
    ex = osal.Explainer(path, methods=[methods.TSGB()])
    with Image.open(resources.files("onnx_saliency") / "data" / "sample_text.png") as img:
        pixels = np.asarray(img.convert("RGB").resize((192, 48)), np.float32) / 255
    image = ((pixels - 0.5) / 0.5).transpose(2, 0, 1)[None].copy()
    maps = [ex.explain(image, t)["tsgb"][0] for t in (0, 1)]
    rho = spearmanr(maps[0].ravel(), maps[1].ravel()).statistic
    assert rho < 0.9, rho


def test_tsgb_options_and_normalized_form(tmp_path):
    path = tmp_path / "r18.onnx"
    export_torchvision("resnet18", path, 32)
    x = _images(1, 32)
    raw = osal.Explainer(path, methods=["tsgb"]).explain(x, 3)["tsgb"]
    shown = osal.Explainer(path, methods=[methods.TSGB(normalize=True)]).explain(x, 3)["tsgb"]
    np.testing.assert_allclose(shown, np.maximum(raw, 0) / np.abs(raw).max(), rtol=1e-5, atol=1e-7)
    with pytest.raises(osal.MethodError, match="fc"):
        methods.TSGB(fc="some")


def test_fused_and_portable_tsgb_agree_on_a_model_of_unknown_spatial_size():
    """The rapidocr classifier's height and width are symbolic, so every fit of a spread back to
    its input's size is computed at run time (a fit that padded the channel axis too once zeroed
    the portable maps here; its depthwise convs' spreads are fitted so in both graphs)."""
    path = rapidocr_classifier()
    x = _images(2, 48, seed=4)[..., :48].repeat(4, axis=3)  # [2, 3, 48, 192]
    maps = [osal.Explainer(path, methods=["tsgb"], fused=f).explain(x, [0, 1])["tsgb"]
            for f in (True, False)]
    assert np.abs(maps[1]).max() > 0
    assert np.abs(maps[0] - maps[1]).max() <= 1e-5 * np.abs(maps[1]).max()


def test_sums_of_broadcasts_are_summed_as_one_channel_maps():
    """TSGBContext.sum: Σ_i sign ⊙ B(s_i) = sign ⊙ B(Σ_i s_i), one broadcasting Conv; other
    terms are added as they are."""
    from onnx_saliency.backward.rules.tsgb import TSGBContext
    from onnx_saliency.graph import GraphBuilder

    c = 16
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in
              [("a", [1, c, 4, 5]), ("s1", [1, 1, 4, 5]), ("s2", [1, 1, 4, 5]),
               ("other", [1, c, 4, 5])]]
    graph = helper.make_graph([], "g", inputs, [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    index = GraphIndex(model)
    b = GraphBuilder(index)
    ctx = TSGBContext(b, index)
    sign = b.op("Sign", "a")
    ones = b.const(np.ones((c, 1, 1, 1), np.float32))
    total = ctx.sum([ctx.broadcast("a", sign, "s1", ones), "other",
                     ctx.broadcast("a", sign, "s2", ones)])
    assert ctx.broadcasts[ctx.summands[total][0]].spread != "s1"
    model.graph.node.extend(b.nodes)
    model.graph.initializer.extend(b.initializers)
    model.graph.output.append(helper.make_tensor_value_info(total, TensorProto.FLOAT, None))
    from onnx_saliency.canonical import remove_dead_code
    model = remove_dead_code(model)
    assert sum(n.op_type == "Conv" for n in model.graph.node) == 1
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in
             [("a", (1, c, 4, 5)), ("s1", (1, 1, 4, 5)), ("s2", (1, 1, 4, 5)), ("other", (1, c, 4, 5))]}
    out = make_session(model).run(None, feeds)[0]
    expected = np.sign(feeds["a"]) * (feeds["s1"] + feeds["s2"]) + feeds["other"]
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_residual_adds_read_a_copy_of_a_skip_tensor_the_backward_reads_late(torchvision_model):
    """Every residual Add(conv, s) whose s a backward node reads after the seed (TSGB's
    Σ ĝ ⊙ s) takes an early copy of s instead, so the fused Conv+Add may overwrite its operand;
    the maps equal those of the graph without copies (to 1e-5 of the peak: ORT sums in another
    order)."""
    path, _ = torchvision_model("resnet18", 64)
    ex = osal.Explainer(path, methods=["tsgb"], fused=False)
    nodes = list(ex.model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    after_seed = {"target"}                       # tensors that depend on the target
    for n in nodes:
        if after_seed & set(n.input):
            after_seed.update(n.output)
    adds = [n for n in nodes if n.op_type == "Add" and not n.name.startswith("osal/")
            and any(producer.get(i) is not None and producer[i].op_type == "Conv" for i in n.input)]
    assert len(adds) == 8                            # resnet18's residual blocks
    copied = 0
    for add in adds:
        for s in add.input:
            if producer[s].op_type == "MaxPool" and producer[s].name.startswith("osal/copy/"):
                copied += 1
                continue
            late = [n for n in nodes if s in n.input and set(n.output) & after_seed]
            assert producer[s].op_type == "Conv" or not late, (add.name, s)
    assert copied == 8             # identity blocks: the block input; others: the downsample
    x = _images(2, 64)
    with_copies = ex.explain(x, [3, 5])["tsgb"]
    import onnx_saliency.explainer as explainer_mod
    original = explainer_mod.copy_fused_sum_operands
    try:
        explainer_mod.copy_fused_sum_operands = lambda graph, added, index: list(added)
        without = osal.Explainer(path, methods=["tsgb"], fused=False).explain(x, [3, 5])["tsgb"]
    finally:
        explainer_mod.copy_fused_sum_operands = original
    np.testing.assert_allclose(with_copies, without, rtol=0, atol=1e-5 * np.abs(without).max())
