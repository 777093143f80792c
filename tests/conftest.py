"""Shared test helpers: fixture graphs, torchvision exports with seeded weights, and the pinning
of PyTorch references to ONNX Runtime's decisions at kinks (Decisions, pinned_decisions)."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "graphs"))

import make_graphs  # noqa: E402


@pytest.fixture(scope="session")
def graphs():
    return make_graphs


def export_module(net, path, x, input_name: str = "input", output_name: str = "logits") -> None:
    """TorchScript export of a torch module at the example `x` (opset 17, dynamic batch), as
    the tests' small models are written."""
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17,
                          input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: "N"}, output_name: {0: "N"}})


def unit_variance(model, batch, std=lambda module: 1.0) -> None:
    """Layer-sequential unit variance (Mishkin & Matas 2016), one pass: during one forward of
    `batch` (a tensor), in execution order, each Conv2d's weight is multiplied by one scalar so
    that its output (less its bias) has std `std(module)` over the batch, and the layers after it
    see the rescaled output. Deep random-weight nets otherwise shrink their signals layer by
    layer (a random MobileNetV2's input gradient ~1e-10), where float32 rounding decides."""
    import torch

    def rescale(module, args, out):
        bias = 0 if module.bias is None else module.bias[None, :, None, None]
        k = std(module) / (out - bias).std()
        module.weight.mul_(k)
        return (out - bias) * k + bias

    hooks = [m.register_forward_hook(rescale) for m in model.modules()
             if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for h in hooks:
            h.remove()


def export_torchvision(name: str, path: Path, size: int, seed: int = 0, keep_bn: bool = False,
                       calibrate=None, **kwargs) -> "torch.nn.Module":
    """Export torchvision `name` with seeded random weights (ReLUs made not in-place, so Captum's
    hooks see every one) to `path`; batch dimension dynamic. BatchNormalization is folded into
    the convolutions unless `keep_bn`; `calibrate` (images [N, 3, size, size]): the convs
    rescaled on them first (`unit_variance`). Returns the eval-mode module."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None, **kwargs).eval()
    if name.startswith("vgg") and size < 224:
        # VGG's AdaptiveAvgPool2d(7) cannot be exported below 224 px; classify the feature
        # map directly instead (same layers otherwise, and 12x cheaper than 224 px)
        cells = (size // 32) ** 2
        model.avgpool = torch.nn.Identity()
        model.classifier[0] = torch.nn.Linear(512 * cells, 4096)
    prepare_for_pinning(model)
    if calibrate is not None:
        unit_variance(model, torch.as_tensor(calibrate))
    x = torch.randn(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        big = sum(p.numel() for p in model.parameters()) * 4 > 2**30   # external data over 1 GiB
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                          external_data=big,
                          input_names=["input"], output_names=["logits"], do_constant_folding=not keep_bn,
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return model


def prepare_for_pinning(model) -> None:
    """ReLUs made not in place (the pins and Captum's hooks see each one), and BatchNorm
    statistics moved off the identity so BN rules see non-trivial values."""
    import torch
    for module in model.modules():
        if isinstance(module, (torch.nn.ReLU, torch.nn.ReLU6)):
            module.inplace = False
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)


def tiny_cnn(path, size: tuple[int, int], classes: int = 3, seed: int = 0) -> Path:
    """A tiny CNN written to `path`: Conv(3->4, 3x3) -> Relu -> GlobalAveragePool -> Flatten ->
    Gemm(4->classes), input 'input' [N, 3, *size], output 'logits'."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in [("w", (4, 3, 3, 3)), ("b", (4,)), ("fc_w", (4, classes)),
                                 ("fc_b", (classes,))]]
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
             helper.make_node("Flatten", ["pool"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, *size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return Path(path)


@pytest.fixture(scope="session")
def torchvision_model(tmp_path_factory):
    """Factory: (name, size) -> (onnx path, torch module); cached per session."""
    cache = {}

    def get(name: str, size: int = 64):
        key = (name, size)
        if key not in cache:
            path = tmp_path_factory.mktemp("tv") / f"{name}_{size}.onnx"
            cache[key] = (path, export_torchvision(name, path, size))
        return cache[key]

    return get


def rapidocr_classifier() -> Path:
    """The text-direction classifier shipped in rapidocr-onnxruntime (a real trained model)."""
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    assert spec is not None and spec.submodule_search_locations, "rapidocr-onnxruntime missing"
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / \
        "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    assert path.is_file(), path
    return path


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    """max |a - ref| / max |ref|."""
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-30))


# -- pinning the PyTorch reference to ONNX Runtime's decisions at kinks --------------------------
#
# Two engines compute conv outputs that differ in the last bit, so a ReLU or Clip input within
# ~1e-7 of a bound, or a near-tie in a MaxPool window, can go either way; each engine then
# differentiates its own (correct) forward pass, and one flipped ReLU moves a whole receptive
# field of the gradient. `pinned_decisions` makes the reference take ONNX Runtime's decisions.

PIN_KINDS = ("Relu", "Clip", "MaxPool")   # the ONNX ops whose backward makes a decision


def _onnx_model(source, external: bool = True):
    """A ModelProto from a path, serialized bytes or a ModelProto (`external=False`: a file's
    external data left unloaded)."""
    import onnx
    if isinstance(source, onnx.ModelProto):
        return source
    if isinstance(source, (bytes, bytearray)):
        return onnx.load_from_string(bytes(source))
    return onnx.load(str(source), load_external_data=external)


def _clip_bounds(node, consts: dict) -> tuple[float, float]:
    """(lo, hi) of a Clip node (inputs from opset 11, attributes before; absent = ±inf)."""
    lo, hi = -np.inf, np.inf
    for attr in node.attribute:
        if attr.name == "min":
            lo = attr.f
        elif attr.name == "max":
            hi = attr.f
    if len(node.input) > 1 and node.input[1]:
        lo = float(consts[node.input[1]])
    if len(node.input) > 2 and node.input[2]:
        hi = float(consts[node.input[2]])
    return float(np.float32(lo)), float(np.float32(hi))


class Decisions:
    """ONNX Runtime's decisions at the kinks of a model's forward pass, for a batch of images:
    per op type ("Relu", "Clip", "MaxPool") a list in the exported file's node order (which is
    PyTorch's call order) of what ORT computed there: the gate's output (its mask and, at a
    Clip, the side it clipped to) or the pool's argmax (flat over each channel's H×W, as
    PyTorch's return_indices).

    `Decisions.from_ort(onnx_path, x, graph=..., prefix=...)` lists the decision points from the
    exported file and reads their values from `graph` (default: the file itself), the graph whose
    results the test compares: an explainer or backward graph keeps the file's tensor names for
    its forward part, and meta-saliency's stepped forward pass has them behind `prefix="meta/"`
    (inside the per-image Scan, whose outputs come back stacked over the batch). A tuple of
    prefixes gives a tuple of Decisions from one run (meta: the model's pass and the stepped one).
    """

    def __init__(self, values: dict, bounds: list):
        self.values = values      # op type -> list of arrays, [N, ...] each
        self.bounds = bounds      # (lo, hi) of each Clip, in order

    @classmethod
    def from_ort(cls, onnx_path, x, *, graph=None, target=None, prefix: str | tuple = "",
                 weights=None):
        import onnx
        from onnx import numpy_helper

        from onnx_saliency.runtime import make_session

        exported = _onnx_model(onnx_path, external=False)   # its gates; weights not needed
        consts = {t.name: numpy_helper.to_array(t) for t in exported.graph.initializer
                  if t.data_location != onnx.TensorProto.EXTERNAL}
        for node in exported.graph.node:
            if node.op_type == "Constant":
                consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        points, bounds = [], []          # (op type, output name in the exported file)
        for node in exported.graph.node:
            if node.op_type in PIN_KINDS:
                points.append((node.op_type, node.output[0]))
                if node.op_type == "Clip":
                    bounds.append(_clip_bounds(node, consts))

        run = onnx.ModelProto()
        run.CopyFrom(_onnx_model(graph) if graph is not None else exported)
        # where each tensor is made: the top graph, or the body of a Scan (meta's per_image)
        graphs = [(run.graph, None)]
        for node in run.graph.node:
            for attr in node.attribute:
                if node.op_type == "Scan" and attr.type == onnx.AttributeProto.GRAPH:
                    graphs.append((attr.g, node))
        producers = {o: (n, g, scan) for g, scan in graphs for n in g.node for o in n.output if o}
        prefixes = (prefix,) if isinstance(prefix, str) else tuple(prefix)
        # gates on constants only (Swin-V2's position-bias MLP) are folded out of the graph;
        # their decisions are read from the exported file itself
        constant = set(consts) | {i.name for i in exported.graph.initializer}
        for node in exported.graph.node:
            if node.input and all(i in constant for i in node.input if i):
                constant.update(node.output)
        folded = {name for kind, name in points if kind != "MaxPool" and name in constant
                  and not any(p + name in producers for p in prefixes)}
        fetch, stacked = [], set()
        for prefix_, (kind, name) in ((p, point) for p in prefixes for point in points):
            if name in folded:
                continue
            if prefix_ + name not in producers:
                raise AssertionError(f"{kind} output {prefix_ + name!r} of the exported file is "
                                     "not in the graph to pin to")
            node, g, scan = producers[prefix_ + name]
            if kind == "MaxPool":    # its argmax, and its input (for the H×W to index in)
                if len(node.output) < 2 or not node.output[1]:
                    del node.output[1:]
                    node.output.append(node.output[0] + "/pin_indices")
                tensors = [(node.output[1], onnx.TensorProto.INT64),
                           (node.input[0], onnx.TensorProto.FLOAT)]
            else:
                tensors = [(node.output[0], onnx.TensorProto.FLOAT)]
            for tensor, elem in tensors:
                if scan is None:
                    if tensor not in {o.name for o in run.graph.output}:
                        run.graph.output.append(onnx.helper.make_tensor_value_info(tensor, elem, None))
                    fetch.append(tensor)
                    continue
                # a Scan output: the body's [1, ...] per image, stacked to [N, 1, ...]
                if tensor not in {o.name for o in g.output}:
                    g.output.append(onnx.helper.make_tensor_value_info(tensor, elem, None))
                    scan.output.append("pin/" + tensor)
                outer = scan.output[[o.name for o in g.output].index(tensor)]
                if outer not in {o.name for o in run.graph.output}:
                    run.graph.output.append(onnx.helper.make_tensor_value_info(outer, elem, None))
                fetch.append(outer)
                stacked.add(outer)

        x = x.detach().numpy() if hasattr(x, "detach") else np.asarray(x)
        feeds = {}
        for i, inp in enumerate(run.graph.input):
            if i == 0:
                feeds[inp.name] = x
            elif inp.name == "target":
                feeds[inp.name] = np.broadcast_to(  # None: −1, each image's top-1
                    np.asarray(-1 if target is None else target, np.int64), (len(x),)).copy()
        # the explainers' session options; `weights`: the values of `graph`'s placeholders
        # (runtime.split_weights), for graphs over 2 GB
        outs = make_session(run, weights=weights).run(fetch, feeds)
        if folded:
            probe = onnx.ModelProto()
            probe.CopyFrom(_onnx_model(onnx_path))
            probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT,
                                                                         None) for n in folded)
            inp = probe.graph.input[0].name
            folded = dict(zip(folded, make_session(probe).run(list(folded), {inp: x})))
        outs = iter([o.reshape((-1,) + o.shape[2:]) if name in stacked else o
                     for name, o in zip(fetch, outs)])
        found = []
        for _ in prefixes:
            values = {kind: [] for kind in PIN_KINDS}
            for kind, name in points:
                out = folded[name] if name in folded else next(outs)
                if kind == "MaxPool":    # flat over [N, C, H, W] (over [1, C, H, W] in a Scan)
                    h, w = next(outs).shape[2:]
                    out = out % (h * w)  # -> within the image's channel, as PyTorch indexes
                values[kind].append(out)
            found.append(cls(values, bounds))
        return found[0] if isinstance(prefix, str) else tuple(found)

    def image(self, i: int) -> "Decisions":
        """The decisions of image i alone (a batch of 1)."""
        return Decisions({k: [v[i:i + 1] for v in vs] for k, vs in self.values.items()},
                         self.bounds)

    def __eq__(self, other) -> bool:
        return isinstance(other, Decisions) and all(
            len(self.values[k]) == len(other.values[k]) and all(
                np.array_equal(self._state(k, j, a), other._state(k, j, b))
                for j, (a, b) in enumerate(zip(self.values[k], other.values[k])))
            for k in PIN_KINDS)

    def _state(self, kind: str, j: int, value: np.ndarray) -> np.ndarray:
        """−1 / 0 / +1: clipped low, passed, clipped high (gates); the argmax (pools)."""
        if kind == "MaxPool":
            return value
        lo, hi = (0.0, np.inf) if kind == "Relu" else self.bounds[j]
        return np.where(value <= lo, -1, np.where(value >= hi, 1, 0))


def _bounds_of_call(func, args, kwargs) -> tuple[str, float, float] | None:
    """(ONNX op type, lo, hi) that a PyTorch call exports to, or None if it is no gate."""
    import torch
    import torch.nn.functional as F

    if func in (F.relu, torch.relu, torch.Tensor.relu):
        return "Relu", 0.0, np.inf
    if func is F.relu6:
        return "Clip", 0.0, 6.0
    if func is F.hardtanh:     # nn.ReLU6 and nn.Hardtanh call it
        params = dict(zip(("min_val", "max_val"), args[1:3]), **kwargs)
        lo, hi = params.get("min_val", -1.0), params.get("max_val", 1.0)
    elif func in (torch.clamp, torch.clip, torch.Tensor.clamp, torch.Tensor.clip):
        params = dict(zip(("min", "max"), args[1:3]), **kwargs)
        lo, hi = params.get("min"), params.get("max")
        if isinstance(lo, torch.Tensor) or isinstance(hi, torch.Tensor):
            return None        # a clamp to tensors is no Clip with constant bounds
    else:
        return None
    return ("Clip", -np.inf if lo is None else float(np.float32(lo)),
            np.inf if hi is None else float(np.float32(hi)))


class pinned_decisions:
    """Make the PyTorch reference `model` take ONNX Runtime's decisions at every kink of its
    forward pass: the mask of every ReLU, both sides of every Clip (ReLU6 = Clip(0, 6):
    nn.ReLU6, F.relu6, F.hardtanh, torch.clamp) and the argmax of every 2-D MaxPool.

        with pinned_decisions(onnx_path, model, x, graph=explainer.model):
            logits = model(x)          # then backward / Captum, as usual

    `onnx_path`: the exported file (path, bytes or ModelProto) whose node order matches the
    model's call order (the TorchScript exporter keeps it); `x`: the images (torch or NumPy);
    `graph`, `target`, `prefix`: the graph whose decisions to take (default the file itself;
    see `Decisions.from_ort`). Instead of a file, `onnx_path` may be a `Decisions` (x unused).
    `kinds`: the op types to pin (default all; fewer only to show what a pin changes).

    How: a TorchFunctionMode, active only inside the model's forward (not in Captum's own code),
    sees each gate call in order (F.relu, torch.relu, Tensor.relu -> the next Relu node; F.relu6,
    F.hardtanh, torch.clamp/clip with constant bounds -> the next Clip node, whose bounds must
    match). Where PyTorch's own decision differs from ORT's, the gate's input takes ORT's gate
    output there (straight-through: x's gradient passes unchanged), so the gate itself, or a
    mode or hook under it (Captum's ReLU hooks, the EBP and TSGB references' own modes), then
    makes ORT's decision, and its output value agrees in sign and side too (TSGB's sign(a)).
    Each 2-D MaxPool (F.max_pool2d) becomes a gather at ORT's argmax. ORT's decision is followed
    even where the two forward passes disagree; on exit it asserts that they disagreed on at
    most `max_flip_rate` of the decisions (default 1 in 1,000: pinning settles near-ties, it
    must not hide a wrong forward pass); `flips` and `total` count them, `calls` the pinned
    calls per op type. Each forward pass replays the decisions from the first.
    """

    def __init__(self, onnx_path, model, x=None, *, graph=None, target=None, prefix: str = "",
                 kinds=PIN_KINDS, max_flip_rate: float = 1e-3):
        self.decisions = onnx_path if isinstance(onnx_path, Decisions) else \
            Decisions.from_ort(onnx_path, x, graph=graph, target=target, prefix=prefix)
        self.model, self.kinds, self.max_flip_rate = model, tuple(kinds), max_flip_rate
        self.calls = {k: 0 for k in PIN_KINDS}
        self.flips = self.total = 0

    def _next(self, kind: str, shape) -> tuple[int, np.ndarray]:
        values = self.decisions.values[kind]
        assert values, f"the model calls a {kind} that the ONNX graph does not have"
        j = self.calls[kind] % len(values)
        self.calls[kind] += 1
        value = values[j]
        assert value.shape == tuple(shape), (kind, j, value.shape, tuple(shape))
        return j, value

    def _gate(self, func, args, kwargs, kind, lo, hi):
        import torch
        x = args[0]
        j, out = self._next(kind, x.shape)
        if kind == "Clip":
            assert self.decisions.bounds[j] == (lo, hi), ("Clip", j, self.decisions.bounds[j], (lo, hi))
        ort = torch.from_numpy(out).to(x.dtype)
        own = torch.where(x <= lo, -1, torch.where(x >= hi, 1, 0))
        theirs = torch.where(ort <= lo, -1, torch.where(ort >= hi, 1, 0))
        flip = own != theirs
        self._count(flip)
        if flip.any():
            # ORT's value where the decisions differ (exactly: + 0), the gradient of x everywhere
            x = torch.where(flip, ort + (x - x.detach()), x)
        return func(x, *args[1:], **kwargs)

    def _pool(self, func, args, kwargs):
        import torch
        import torch.nn.functional as F
        x = args[0]
        assert x.dim() == 4, "pinned_decisions handles 2-D MaxPools on [N, C, H, W]"
        returns = kwargs.get("return_indices", func is F.max_pool2d_with_indices)
        if len(args) > 6:
            returns = args[6]
        own_out, own = func(*args[:6], **{**kwargs, "return_indices": True})
        _, idx = self._next("MaxPool", own_out.shape)
        n, c = x.shape[:2]
        local = torch.from_numpy(idx).reshape(n, c, -1)
        self._count(own.reshape(n, c, -1) != local)
        out = x.flatten(2).gather(2, local).reshape(own_out.shape)
        return (out, local.reshape(own.shape)) if returns else out

    def __enter__(self):
        import torch.nn.functional as F
        from torch.overrides import TorchFunctionMode

        pin = self
        pools = (F.max_pool2d, F.max_pool2d_with_indices)

        class Pin(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                gate = _bounds_of_call(func, args, kwargs)
                if gate is not None and gate[0] in pin.kinds:
                    return pin._gate(func, args, kwargs, *gate)
                if func in pools and "MaxPool" in pin.kinds:
                    return pin._pool(func, args, kwargs)
                return func(*args, **kwargs)

        self.mode = Pin()   # active only inside the model's forward (not Captum's own relus)

        def start(*_):      # (hooks return None: anything else would replace inputs/outputs)
            self.mode.__enter__()

        def stop(*_):
            self.mode.__exit__(None, None, None)

        self.hooks = [self.model.register_forward_pre_hook(start),
                      self.model.register_forward_hook(stop, always_call=True)]
        return self

    def _count(self, disagreements):
        self.flips += int(disagreements.sum())
        self.total += disagreements.numel()

    def __exit__(self, *exc):
        for hook in self.hooks:
            hook.remove()
        if exc[0] is None:
            for kind in self.kinds:
                n = len(self.decisions.values[kind])
                assert self.calls[kind] % max(1, n) == 0, \
                    f"{self.calls[kind]} {kind} calls for {n} {kind} nodes: a forward pass ended early"
            assert self.flips <= max(1, self.total * self.max_flip_rate), (self.flips, self.total)
        return False

