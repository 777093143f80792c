"""The explainer graph: forward model + seed + reverse walks + extraction heads, in one ONNX model.

    (image, target inputs) ─► forward ─► logits ─► the target's seeds (targets.py; default
                                                   Class: one-hot of `target`, −1: top-1)
                                        └─► each method's walk (shared where equal)
                                             └─► head per (method, layer) ─► resize ─► maps

One graph per target kind (Class built up front; Region, Embedding, Cotangent on first use),
sharing the weights; the target's data are graph inputs, recorded in the metadata.

A model in a deployed format (float16, quantized: formats.deployed_format) returns the logits
of its own forward pass as loaded, a second forward beside the canonical one the walks read
(formats.deployed_forward); its top-1 is the target −1 stands for.

The assembly knows no method: each names its walk (`Method.walk`) and its head.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from . import methods as methods_mod
from .backward.rules import GRADIENT
from .backward.walk import Seeds, Signals, TableWalk, Walk
from .canonical import (BATCH, CanonicalModel, ModelSource, canonicalize, remove_dead_code,
                        set_batch)
from . import formats
from . import fused as fused_ops
from . import meta
from .combine import combination
from .errors import MethodError, ModelError, NumericError, SaliencyError
from .graph import GraphBuilder, GraphIndex, rename_tensors
from .schedule import copy_fused_sum_operands, interleave_early
from .layers import (NCHW, NECK, DetectorLevel, LayerNames, LayerView, default_layer,
                     detector_levels, stage_layers)
from .methods.base import Method
from .openvino_runtime import ONNXRUNTIME, check_runtime, make_session as runtime_session
from .runtime import (TargetLike, Weights, check_images, join_weights, make_session,
                      run_session, save_model, split_weights)
from . import targets as targets_mod
from .targets import Target

TARGET = targets_mod.CLASS
FINITE = "finite"   # bool [N] output: every map and logit of the image is finite
STAGES = "stages"   # layers="stages": the paper's layer set for multi-layer maps


@dataclass(frozen=True)
class MapRequest:
    key: str        # output name: "<method>" or "<method>@<layer>"
    method: Method
    tensor: str     # the tapped tensor
    view: LayerView = NCHW   # how the head reads it as [N, C, h, w] (token layers, NHWC)
    level: DetectorLevel | None = None   # a detector's level: the map counts where the seed
    #                                      weights that level's candidates (see _level_gate)


def one_hot_seed(b: GraphBuilder, index: GraphIndex, logits: str, shown: str | None = None
                 ) -> Seeds:
    """{logits: one-hot of the `target` input's class}, broadcast over space: the seeds of
    targets.Class (see there; −1: the top-1 of `shown`, the logits the explainer returns where
    they are not `logits` itself; any other value outside [0, K) fails the run, or, where the
    runtime does not check Gather, gives that image NaN maps and `finite` false)."""
    return targets_mod.Class().seeds(b, index, logits, shown or logits)


def _rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Tensor `old` of `graph` (made by a node) called `new`: its producer, readers (in
    subgraphs too), graph output and value_info."""
    for node in graph.node:
        rename_tensors(node, {old: new})
    for value in [*graph.output, *graph.value_info]:
        if value.name == old:
            value.name = new


def _level_gate(asm: "_Assembly", level: DetectorLevel) -> str:
    """float [N, 1, 1]: 1 where the image's seed weights a candidate of `level` (its slice
    [start, stop) along the candidate axis is not all zero), else 0. For one candidate
    (targets.Detection) exactly its level's map is kept: the neck output at its stride."""
    b = asm.b
    (seed,) = asm.seeds.values()
    part = b.op("Slice", seed, b.ints([level.start]), b.ints([level.stop]), b.ints([level.axis]))
    mass = b.reduce("ReduceSum", b.op("Abs", part), [1, 2], keepdims=True)
    return b.op("Cast", b.op("Greater", mass, b.const(np.float32(0))), to=TensorProto.FLOAT)


def _index(model: onnx.ModelProto, weights: Weights) -> GraphIndex:
    """A GraphIndex over `model` that reads its placeholders' values from `weights` (kept apart
    from the model: runtime.split_weights), without copying them."""
    index = GraphIndex(model)
    index._consts.update({n: w for n, w in weights.items() if n in index.initializers})
    return index


class _Assembly:
    """Builds one explainer ModelProto from a canonical model (whose weights may be kept
    apart: the explainer graph then names them by placeholders too). A deployed model's own
    forward (`canon.deployed`) makes the logits output: the canonical forward's logits are
    renamed `osal/forward/<logits>` for the walks, and `finish` merges the deployed forward in."""

    def __init__(self, canon: CanonicalModel, fused: bool = False, meta_lr: float | None = None,
                 target: Target | None = None):
        self.canon = canon
        self.target = target or targets_mod.Class()
        self.model = onnx.ModelProto()
        self.model.CopyFrom(canon.model)
        self.shown = canon.output_name   # the logits output (a deployed model's own forward's)
        forward_logits = canon.output_name
        self.deployed = canon.deployed if canon.output_name in {
            o for n in canon.model.graph.node for o in n.output} else None
        if self.deployed is not None:
            forward_logits = f"osal/forward/{canon.output_name}"
            _rename_tensor(self.model.graph, canon.output_name, forward_logits)
        self.aliases: Weights = {}   # the deployed forward's placeholders under their new names
        self.per_image = meta_lr is not None      # meta: built for one image, Scan over the batch
        if self.per_image:
            if canon.fixed_batch not in (None, 1):
                raise ModelError(
                    f"meta=True steps the weights once per image, but this model is fixed to "
                    f"batch {canon.fixed_batch}; export it with a dynamic batch or batch 1.")
            set_batch(self.model, canon.input_name, 1)
        self.index = _index(self.model, canon.weights)
        self.b = GraphBuilder(self.index, fused=fused)
        self.target_inputs = self.target.inputs(self.index, forward_logits)
        for spec in self.target_inputs:
            if spec.name in self.index.producer or spec.name in self.index.graph_inputs:
                raise ModelError(f"The model already has a tensor named '{spec.name}'.")
        self._know_shown(forward_logits)
        self.seeds = self.target.seeds(self.b, self.index, forward_logits, self.shown)
        self.target_metadata = self.target.describe(self.index, forward_logits)
        self.logits = forward_logits
        self.tensor = {}   # tapped tensor -> the tensor the methods read (the stepped copy's)
        if meta_lr is not None:
            self._meta_step(meta_lr, fused)

    def _meta_step(self, lr: float, fused: bool) -> None:
        """One SGD step towards the target inside the graph; the methods then walk a copy of the
        forward pass that reads the stepped parameters (meta.py)."""
        forward_nodes = list(self.model.graph.node)
        updated = meta.sgd_step(self.b, self.index, self.logits, self.seeds[self.logits], lr)
        self._commit()
        self.tensor = meta.stepped_copy(self.model, forward_nodes, updated)
        self.logits = self.tensor[self.logits]
        self.seeds = {self.read(t): s for t, s in self.seeds.items()}
        self.index = _index(self.model, self.canon.weights)
        self.b = GraphBuilder(self.index, fused=fused)
        self._know_shown(f"osal/forward/{self.shown}")
        if self.target.reads_output:   # a seed made of the output (Embedding): the stepped one's
            self.seeds = self.target.seeds(self.b, self.index, self.logits, self.shown)

    def _know_shown(self, forward_logits: str) -> None:
        """The deployed forward's logits (merged in by `finish`) typed and shaped in the index
        as the canonical forward's."""
        if self.deployed is not None:
            for table in (self.index.types, self.index.shapes):
                if forward_logits in table:
                    table[self.shown] = table[forward_logits]

    def _commit(self) -> None:
        """The builder's forward edits, nodes and constants into the model (`finish` does the
        same for the last builder): the forward graph is edited here, and by the scheduling in
        `finish`, nowhere else."""
        self.b.apply_forward_edits(self.model.graph)
        self.model.graph.node.extend(self.b.nodes)
        self.model.graph.initializer.extend(self.b.initializers)

    def read(self, tensor: str) -> str:
        return self.tensor.get(tensor, tensor)

    def signals(self, walk: Walk, wrt: Sequence[str]) -> Signals:
        """`walk` from the seeds to `wrt` (tensors of the graph the walks run on: `read`)."""
        return walk(self.b, self.index, self.seeds, wrt)

    def finite_flag(self, tensors: Sequence[tuple[str, int]]) -> str:
        """bool [N]: every value of the image in `tensors` ((name, rank), each [N, …]) is
        finite. x·0 is NaN exactly where x is ±Inf or NaN, so one sum per tensor finds any."""
        b = self.b
        sums = []
        for t, rank in tensors:
            sums.append(b.reduce("ReduceSum", b.op("Mul", t, b.const(0.0)), list(range(1, rank)),
                                 keepdims=False))
        return b.op("Not", b.op("IsNaN", b.sum(sums)))

    def finish(self, outputs: Sequence[tuple[str, str, int]], keep_logits: bool,
               metadata: dict | None = None, finite: bool = False) -> onnx.ModelProto:
        """outputs: (output name, tensor, rank), float32 with a symbolic batch dim, in this
        order after the logits (`keep_logits`); `finite`: a last output `finite`, bool [N]."""
        taken = {o for n in self.index.nodes for o in n.output} | set(self.index.graph_inputs)
        clashes = sorted(taken & ({name for name, _, _ in outputs} | ({FINITE} if finite else set())))
        if clashes:
            raise ModelError(f"The model already has a tensor named '{clashes[0]}', the name of "
                             "an explainer output; rename it in the model.")
        graph = self.model.graph
        if self.deployed is not None and keep_logits:
            feed = formats.image_feed(self.model, self.canon.input_name)
            nodes, inits, self.aliases = formats.deployed_forward(
                self.deployed, feed, self.shown, self.canon.weights,
                dynamic=self.canon.fixed_batch is None)
            # right after the image feed: before every reader of the logits (meta's committed
            # nodes read them already)
            at = next((i + 1 for i, n in enumerate(graph.node) if feed in n.output), 0)
            forward = list(graph.node)
            del graph.node[:]
            graph.node.extend(forward[:at] + nodes + forward[at:])
            graph.initializer.extend(inits)
            graph.output[0].name = self.shown
        if finite:
            shown = self.shown if self.deployed is not None else self.logits
            logits = [(shown, self.index.rank(shown) or 2)] if keep_logits else []
            flag = self.finite_flag([(t, rank) for _, t, rank in outputs] + logits)
        self.b.apply_forward_edits(graph)
        graph.initializer.extend(self.b.initializers)   # after finite_flag: it adds constants
        nodes = interleave_early(graph, copy_fused_sum_operands(graph, self.b.nodes, self.index))
        del graph.node[:]
        graph.node.extend(nodes)
        graph.input.extend(spec.value_info() for spec in self.target_inputs)
        if not keep_logits:
            del graph.output[:]
        for name, tensor, rank in outputs:
            graph.node.append(helper.make_node("Identity", [tensor], [name], name=f"output/{name}"))
            graph.output.append(helper.make_tensor_value_info(
                name, TensorProto.FLOAT, [BATCH] + [None] * (rank - 1)))
        if finite:
            graph.node.append(helper.make_node("Identity", [flag], [FINITE], name=f"output/{FINITE}"))
            graph.output.append(helper.make_tensor_value_info(FINITE, TensorProto.BOOL, [BATCH]))
        for domain in self.b.custom_domains:
            self.model.opset_import.append(helper.make_opsetid(domain, 1))
        metadata = {**(metadata or {}), "onnx_saliency.target": self.target_metadata}
        if metadata:
            for key, value in metadata.items():
                self.model.metadata_props.append(
                    onnx.StringStringEntryProto(key=key, value=json.dumps(value)))
        del graph.value_info[:]
        model = remove_dead_code(self.model)
        return meta.per_image(model) if self.per_image else model


def backward_graph(model: ModelSource, wrt: Sequence[str] | str, rule: str | Method = "gradient",
                   output: str | None = None, target: Target | None = None) -> onnx.ModelProto:
    """A model (image, target) -> raw backward signal at each tensor in `wrt` (outputs named
    `grad:<name>` in the order given). `rule`: the method whose walk runs, by name (gradient,
    guided_backprop, deconvnet, tsgb, ebp, cebp, …) or as an object with options
    (`methods.TSGB(gamma=0.8)`); the signal is ∂ logit_target / ∂ tensor for the gradient, the
    method's modified signal for the others. `wrt` takes layer names, tensor names and, for the
    gradient, parameter names (conv/Gemm/MatMul weights and biases, BatchNormalization scale
    and bias, as named in the canonical model): their gradients summed over the batch.
    `output`: the model output explained, as in `Explainer`. `target`: a target object
    (onnx_saliency.targets) whose kind the graph takes as inputs (its values are not used);
    default Class: the input `target` int64 [N], as above."""
    canon = canonicalize(model, output=output)
    wrt = [wrt] if isinstance(wrt, str) else list(wrt)
    asm = _Assembly(canon, target=targets_mod.resolve(target) if target is not None else None)
    names = LayerNames(asm.index, canon.input_name, canon.folded)
    walk = methods_mod.resolve(rule).walk(names)
    params = set(meta.parameters(asm.index)) if walk == TableWalk(GRADIENT) else set()
    tensors = [w if w in params else names.resolve(w) for w in wrt]
    signals = asm.signals(walk, tensors)
    outputs = []
    for label, tensor in zip(wrt, tensors):
        g = signals[tensor]
        if g is None:
            g = asm.b.zeros_like(tensor)
        outputs.append((f"grad:{label}", g, asm.index.rank(tensor) or 4))
    return asm.finish(outputs, keep_logits=False)


class Explainer:
    """Explain an ONNX image classifier with one or more saliency methods.

    >>> ex = Explainer("model.onnx", methods=["gradient", "gradcam"], layers=["layer4"])
    >>> maps = ex.explain(images, target=None)   # {"gradient": [N,H,W], "gradcam@layer4": …}

    `methods`: names or method objects (`methods.GradCAM(relu=False)`); `layers`: layer names
    for layer methods (module paths such as `layer4` or raw tensor names; None: each method's
    default; "stages": the last layer of each stage, ResNets layer1–layer4, VGGs relu1_2 …
    relu5_3); `providers`: ONNX Runtime execution providers; `fused`: emit the fused custom ops
    (default: when the custom-op library is present) or their portable decompositions.
    `combine` ("sum" | "product"): one map per layer method, the per-layer maps min-max
    normalised and combined with `weights` ("uniform", "linear" w_l = l/L, or a list), named
    `<method>@combined`. `meta=True`: meta-saliency, the maps of the model after one SGD step
    (learning rate `meta_lr`) towards each image's target, computed in the same graph (meta.py).
    `layout="NHWC"`: the model takes channels-last images; the explainer still takes and returns
    NCHW images and [N,H,W] maps (a Transpose is put in front of the model).
    Float16 models run their forward in float16 and their backward in float32: maps are
    float32, and a float16 image input takes float32 images (a Cast in the graph). Quantized
    models (QDQ, QOperator, dynamic) keep their integer forward; their maps are the
    straight-through gradients of the dequantized model (backward/rules/quantized.py). The
    logits of these deployed formats are the model's own, bit for bit: the graph runs the
    model's forward pass as loaded (its nodes, read by the logits output alone, so ONNX Runtime
    optimises them as in the bare model) beside the canonical forward the backward reads; one
    more forward pass, for these formats only. Target −1 is the top-1 of those logits.
    `output`: the name of the model output to explain; default the only output, or the logits
    where the outputs are the logits and their (Log)Softmax; other multi-output models must
    name one. The seed sits on the chosen output's pre-softmax logits.
    `input_size`: (H, W) for a model whose image height and width are symbolic (many detector
    exports): fixed to it, so rules that need lengths (Resize in a detector's neck) know them.
    `runtime`: "onnxruntime" (default) or "openvino" (the portable graph compiled by OpenVINO
    for its CPU in float32: no providers, no fused ops; openvino_runtime.py).

    The saved graph's outputs, by name: the logits, one map per key in `map_names` (that
    order), and `finite` (bool [N]: the image's maps and logits hold no NaN/Inf). A target
    outside [0, K) other than −1 makes the run fail (ONNX Gather out of bounds) or, where the
    runtime does not check Gather, gives that image NaN maps (see `one_hot_seed`).
    """

    def __init__(self, model: ModelSource, methods: Sequence[str | Method] | str = ("gradient",),
                 layers: Sequence[str] | str | None = None,
                 providers: Sequence[str] | None = None, *, threads: int | None = None,
                 fused: bool | None = None, combine: str | None = None,
                 weights: str | Sequence[float] = "uniform", meta: bool = False,
                 meta_lr: float = 2.5e-3, layout: str = "NCHW", output: str | None = None,
                 input_size: tuple[int, int] | None = None, runtime: str = ONNXRUNTIME):
        self.runtime = check_runtime(runtime, providers, fused)
        # the weights once, apart from the graphs (not for meta: its Scan body holds them)
        self._canon = canonicalize(model, layout, output, apart=not meta, deployed=True,
                                   input_size=input_size)
        if not np.isfinite(meta_lr) or meta_lr < 0:
            raise MethodError(f"meta_lr must be a non-negative number, not {meta_lr!r}.")
        self.meta, self.meta_lr = bool(meta), float(meta_lr)
        self.providers = providers
        self.threads = threads
        if fused and not fused_ops.available():
            raise SaliencyError("fused=True, but the custom-op library was not built with this "
                                "install (see docs/kernels.md); use fused=False.")
        self.fused = (fused_ops.available() and runtime == ONNXRUNTIME) if fused is None \
            else bool(fused)
        self._save_fused = fused is True   # save() keeps custom ops only when asked for here
        index = _index(self._canon.model, self._canon.weights)
        self.layer_names = LayerNames(index, self._canon.input_name, self._canon.folded)
        self._index = index
        self._levels = detector_levels(index, self._canon.input_name, self._canon.output_name)
        methods = [methods] if isinstance(methods, (str, Method)) else list(methods)
        if not methods:
            raise MethodError("Give at least one method.")
        layers = [layers] if isinstance(layers, str) else (list(layers) if layers else None)
        if layers == [STAGES] and STAGES not in self.layer_names:
            layers = stage_layers(self.layer_names)
        resolved = [methods_mod.resolve(m) for m in methods]
        refused = [m.name for m in resolved if self.meta and not m.runtime_weights]
        if refused:
            raise MethodError(f"meta=True does not work with {', '.join(refused)}: its rules need "
                              "the model's constant weights, and meta-saliency steps them.")
        self.requests = self._requests(resolved, layers)
        self.combination = combination(combine, weights, self.requests)
        # the graph built now: Class's; for an output without a class axis ([N]), Cotangent's
        rank = index.rank(self._canon.output_name)
        self._default_target: Target = (targets_mod.Class() if rank is None or rank >= 2
                                        else targets_mod.Cotangent(np.float32(0)))
        self._graph, self._weights = self._build(self.fused, self._default_target)
        self._session = None
        self._variants: dict[tuple, list] = {}   # other target kinds: key -> [graph, weights, session]

    # -- building ---------------------------------------------------------------------------
    def _requests(self, methods: list[Method], layers: list[str] | None) -> list[MapRequest]:
        requests: list[MapRequest] = []
        inp = self._canon.input_name
        for method in methods:
            if not method.layer_method:
                requests.append(MapRequest(method.name, method, inp))
                continue
            if method.layer is not None:
                labels = [method.layer]
            elif layers:
                labels = layers
            elif method.default_at_input:   # at the image: named like the input methods
                requests.append(MapRequest(method.name, method, inp))
                continue
            else:
                tap = method.default_tap(self._index, inp)
                if tap is None and self._levels:   # a detector: the neck at the candidate's level
                    for level in self._levels:
                        view = self.layer_names.checked_view(level.tensor, NECK)
                        requests.append(MapRequest(f"{method.name}@{NECK}", method, level.tensor,
                                                   view, level))
                    continue
                tap = tap or default_layer(self._index, inp, self.layer_names,
                                           self._canon.output_name)
                labels = [self.layer_names.friendly(tap)]
            for label in labels:
                tensor = self.layer_names.resolve(label)
                view = self.layer_names.checked_view(tensor, label)
                requests.append(MapRequest(f"{method.name}@{label}", method, tensor, view))
        keys = [r.key for r in requests if r.level is None]
        dupes = {k for k in keys if keys.count(k) > 1}
        if dupes:
            raise MethodError(f"Two maps would both be called {sorted(dupes)[0]!r}; "
                              "list each method and layer once.")
        return requests

    def _build(self, fused: bool, target: Target | None = None
               ) -> tuple[onnx.ModelProto, Weights]:
        """The explainer graph for `target`'s kind (default Class), its large initializers
        placeholders, and their values (the canonical model's arrays and the new constants')."""
        asm = _Assembly(self._canon, fused, self.meta_lr if self.meta else None, target)
        by_walk: dict[Walk, list[MapRequest]] = {}
        for req in self.requests:
            by_walk.setdefault(req.method.walk(self.layer_names), []).append(req)
        maps: dict[str, str] = {}
        inp = self._canon.input_name
        for walk, reqs in by_walk.items():
            taps = [asm.read(r.tensor) for r in reqs]
            warning = walk.warning(asm.index, asm.seeds, taps)
            if warning:
                names = ", ".join(dict.fromkeys(r.method.name for r in reqs))
                warnings.warn(f"{names}: {warning}", stacklevel=3)
            signals = asm.signals(walk, taps)
            for req in reqs:
                tensor = asm.read(req.tensor)
                g = signals[tensor]
                if g is None:
                    raise ModelError(
                        f"No gradient reaches '{req.key.split('@')[-1]}': the model's output does "
                        "not depend on it.")
                # token and channels-last layers are read as [N, C, h, w] (layers.LayerView)
                x, g = req.view.apply(asm.b, tensor), req.view.apply(asm.b, g)
                saliency = req.method.head(signals.context, x, g)
                if req.tensor != inp:
                    saliency = asm.b.squeeze(
                        asm.b.resize_to(asm.b.unsqueeze(saliency, [1]), inp), [1])
                if req.level is not None:
                    saliency = asm.b.op("Mul", saliency, _level_gate(asm, req.level))
                    if req.key in maps:
                        saliency = asm.b.op("Add", maps[req.key], saliency)
                maps[req.key] = saliency
        if self.combination is not None:
            maps = self.combination.apply(asm.b, maps, self.requests)
        outputs = [(key, maps[key], 3) for key in self.map_names]   # the order asked for
        metadata = {"onnx_saliency.maps": list(maps), "onnx_saliency.input": inp,
                    "onnx_saliency.logits": self._canon.output_name,
                    "onnx_saliency.output": self._canon.original_output,
                    "onnx_saliency.fused": fused,
                    "onnx_saliency.meta_lr": self.meta_lr if self.meta else None}
        model = asm.finish(outputs, keep_logits=True, metadata=metadata, finite=True)
        weights = {**self._canon.weights, **asm.aliases}
        del asm   # its builder holds copies of the new constants
        return split_weights(model, weights)

    # -- running ----------------------------------------------------------------------------
    @property
    def map_names(self) -> list[str]:
        if self.combination is not None:
            return self.combination.keys(self.requests)
        return list(dict.fromkeys(r.key for r in self.requests))

    @property
    def canonical(self) -> CanonicalModel:
        """The canonical model, self-contained: a copy holding the weights (the explainer
        keeps one copy of them, apart from its graphs)."""
        c = self._canon
        if not c.weights:
            return c
        deployed = join_weights(c.deployed, c.weights) if c.deployed is not None else None
        return replace(c, model=join_weights(c.model, c.weights), weights={}, deployed=deployed)

    @property
    def model(self) -> onnx.ModelProto:
        """The explainer graph, self-contained: a copy holding the weights (see `canonical`)."""
        return join_weights(self._graph, self._weights)

    def forward_session(self):
        """A session of the model's own forward pass (the canonical model: image -> logits), on
        this explainer's runtime, providers and threads, sharing its weights."""
        return runtime_session(self._canon.model, self.providers, self.threads,
                               weights=self._canon.weights, runtime=self.runtime)

    @property
    def input_name(self) -> str:
        """The image input's name (the model's own, in the saved graph too)."""
        return self._canon.input_name

    @property
    def logits_output(self) -> str:
        """The saved graph's logits output: the explained output's pre-softmax tensor."""
        return self._canon.output_name

    @property
    def num_classes(self) -> int | None:
        """K, the size of the explained output's axis 1 where it is known (None for an output
        of rank 1 or an unknown size: an embedding net's D counts as K for Class targets)."""
        shape = self._index.shapes.get(self._canon.output_name)
        return shape[1] if shape is not None and len(shape) > 1 and isinstance(shape[1], int) \
            else None

    @property
    def output_shape(self) -> tuple | None:
        """The explained output's dims (ints where known statically), None where unknown; a
        detector's candidate count A from its levels' grids where the export left it symbolic."""
        shape = self._index.shapes.get(self._canon.output_name)
        if shape is not None and self._levels and not isinstance(shape[self._levels[0].axis], int):
            shape = tuple(self._levels[-1].stop if i == self._levels[0].axis else d
                          for i, d in enumerate(shape))
        return shape

    def _variant(self, target: Target) -> list:
        """[graph, weights, session] of the explainer graph for `target`'s kind (built once)."""
        if target.key == self._default_target.key:
            return [self._graph, self._weights, None]
        if target.key not in self._variants:
            self._variants[target.key] = [*self._build(self.fused, target), None]
        return self._variants[target.key]

    def _session_for(self, target: Target):
        variant = self._variant(target)
        if variant[0] is self._graph:
            return self.session
        if variant[2] is None:
            variant[2] = runtime_session(variant[0], self.providers, self.threads,
                                         weights=variant[1], runtime=self.runtime)
        return variant[2]

    def target_model(self, target: Target) -> onnx.ModelProto:
        """The explainer graph for `target`'s kind, self-contained (see `model`); the target's
        values are its inputs (metadata `onnx_saliency.target`), not part of the graph."""
        graph, weights, _ = self._variant(targets_mod.resolve(target))
        return join_weights(graph, weights)

    @property
    def input_shape(self) -> tuple:
        return self._index.shapes[self._canon.input_name]

    @property
    def session(self):
        if self._session is None:
            self._session = runtime_session(self._graph, self.providers, self.threads,
                                            weights=self._weights, runtime=self.runtime)
        return self._session

    def run(self, images: np.ndarray, target: TargetLike | Target = None
            ) -> dict[str, np.ndarray]:
        """Logits and maps: {"logits": [N,K], "<map>": [N,H,W], …}. `target`: see `explain`."""
        images = check_images(images, self.input_shape)
        n = images.shape[0]
        target = targets_mod.resolve(target)
        feeds = target.feeds(n, self.output_shape)
        session = self._session_for(target)
        names = [self.logits_output, *self.map_names, FINITE]   # outputs by name, never position
        step = n if self.meta else (self._canon.fixed_batch or n)  # meta: a Scan over images
        out = run_chunks(session, names, {self._canon.input_name: images, **feeds}, step)
        bad = np.flatnonzero(~out.pop(FINITE))
        if bad.size:
            raise NumericError(
                f"The maps of image{'s' if bad.size > 1 else ''} {', '.join(map(str, bad[:5]))}"
                f"{' …' if bad.size > 5 else ''} contain NaN or Inf: the model overflowed float32 "
                "inside (inputs far outside its usual range?) or the target is degenerate (an "
                "all-zero embedding).")
        return {"logits": out.pop(self.logits_output), **{k: out[k] for k in self.map_names}}

    def explain(self, images: np.ndarray, target: TargetLike | Target = None
                ) -> dict[str, np.ndarray]:
        """Saliency maps {key: float32 [N,H,W]} at input resolution, raw (not normalised).

        `target`: an int for every image, one int per image, or None for each image's top-1
        (targets.Class); or a target object (onnx_saliency.targets: Class, Region, Embedding,
        Cotangent), applied to every image; or a list of them, one per image, of one kind."""
        out = self.run(images, target)
        out.pop("logits")
        return out

    def save(self, path, portable: bool | None = None, data_name: str | None = None,
             target: Target | None = None) -> None:
        """Write the explainer graph: inputs (image, target int64 [N]; −1 = top-1, another value
        outside [0, K) fails the run or, where the runtime does not check, gives NaN maps),
        outputs by name (logits, one [N,H,W] map per key in `map_names`, `finite` bool [N]).

        `portable=True` writes standard ONNX ops only (the fused ops' decompositions): it runs
        in any ONNX runtime, a bare `onnxruntime.InferenceSession` included. `portable=False`
        keeps the fused custom ops (faster; the session must register `fused.library_path()`).
        Default: the fused graph only when this explainer was built with `fused=True`.

        The weights go to `<stem>.data` beside `path` (ONNX external data, page-aligned) when the
        graph would exceed protobuf's 2 GB limit or when the model's file kept its weights in
        external data (`data_name`: another name for that file, in the same folder); else `path`
        holds them all.

        `target`: a target object whose kind the saved graph takes as inputs instead of the
        class index (its values are not saved: they are the inputs; names, dtypes and shapes in
        the metadata `onnx_saliency.target`, a JSON {"kind", "inputs": {name: {dtype, shape,
        meaning}}}): Region `target` int64 [N] (+ `target_mask` bool [N, H, W] when it has a
        mask), Embedding `target_reference` float32 [N, D], Cotangent `target_cotangent`
        float32 [N, *output dims]."""
        if portable is None:
            portable = not self._save_fused
        target = targets_mod.resolve(target) if target is not None else self._default_target
        if portable and self.fused:
            graph, weights = self._build(False, target)
        else:
            graph, weights = self._variant(target)[:2]
        save_model(graph, path, weights, external=True if self._canon.external_data else None,
                   data_name=data_name)


def run_chunks(session, names: Sequence[str], feeds: dict[str, np.ndarray], step: int
               ) -> dict[str, np.ndarray]:
    """`session` over the feeds (each [N, …]) in chunks of `step` images (a model fixed to a
    batch: the last chunk padded with copies of its last image, cut off again)."""
    n = next(iter(feeds.values())).shape[0]
    chunks = []
    for start in range(0, n, step):
        part = {k: v[start:start + step] for k, v in feeds.items()}
        pad = step - next(iter(part.values())).shape[0]
        if pad:
            part = {k: np.concatenate([v, np.repeat(v[-1:], pad, 0)]) for k, v in part.items()}
        outs = run_session(session, names, part)
        chunks.append([o[:step - pad] for o in outs])
    return dict(zip(names, (np.concatenate(parts) for parts in zip(*chunks))))


def gradient(model: ModelSource, images: np.ndarray, target: TargetLike | Target = None,
             output: str | None = None, input_size: tuple[int, int] | None = None
             ) -> np.ndarray:
    """∂s_i/∂image_i for each image i, float32 of the images' shape: the raw input gradient of
    the target's score (onnx_saliency.targets; an int, per-image ints or None: the class logit,
    None the top-1). `output`, `input_size`: as in `Explainer`. Built as one
    backward graph (the gradient walk) and run in ONNX Runtime on the CPU."""
    canon = canonicalize(model, output=output, apart=True, input_size=input_size)
    target = targets_mod.resolve(target)
    asm = _Assembly(canon, target=target)
    names = LayerNames(asm.index, canon.input_name, canon.folded)
    inp = canon.input_name
    g = asm.signals(methods_mod.resolve("gradient").walk(names), [inp])[inp]
    if g is None:
        raise ModelError("No gradient reaches the image: the model's output does not depend on it.")
    shape = asm.index.shapes.get(canon.output_name)
    image_shape = asm.index.shapes[inp]
    graph = asm.finish([("grad", g, asm.index.rank(inp) or 4)], keep_logits=False)
    graph, weights = split_weights(graph, dict(canon.weights))
    del asm
    images = check_images(images, image_shape)
    feeds = {inp: images, **target.feeds(images.shape[0], shape)}
    session = make_session(graph, weights=weights)
    return run_chunks(session, ["grad"], feeds, canon.fixed_batch or images.shape[0])["grad"]


def list_layers(model: ModelSource, output: str | None = None) -> list[str]:
    """Names usable as layers: module paths from exporter scopes, then raw tensor names."""
    canon = canonicalize(model, output=output)
    return LayerNames(GraphIndex(canon.model), canon.input_name).names()


def default_layers(model: ModelSource | CanonicalModel, output: str | None = None
                   ) -> dict[str, str]:
    """The layer each layer method taps when none is given, for this model: {method: layer}.

    Grad-CAM and the NormGrad family: the last spatial tensor before the classifier's global
    pooling (VGG16 features.29, ResNet50 layer4; vision transformers: the last block's output
    before the final LayerNorm, a Swin's last stage, read as tokens); normgrad_conv: the last convolution; EBP: by
    family (ResNets layer3, VGGs pool4: VGG16 features.23), else the Grad-CAM layer.
    `model` may be a model already canonicalised (`canonicalize`)."""
    canon = model if isinstance(model, CanonicalModel) else canonicalize(model, output=output)
    index = GraphIndex(canon.model)
    names = LayerNames(index, canon.input_name, canon.folded)
    levels = detector_levels(index, canon.input_name, canon.output_name)
    general = (f"{NECK} (" + ", ".join(names.friendly(lv.tensor) for lv in levels) + ")"
               if levels else names.friendly(
                   default_layer(index, canon.input_name, names, canon.output_name)))
    out = {}
    for name, factory in methods_mod.REGISTRY.items():
        method = factory()
        if not method.layer_method or method.default_at_input:
            continue
        tap = method.default_tap(index, canon.input_name)
        out[name] = names.friendly(tap) if tap else general
    return out
