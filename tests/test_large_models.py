"""Models over 2 GB and one copy of the weights (issue #17, item 5).

The explainer keeps the weights once, apart from its graphs (runtime.split_weights): the
canonical model and the explainer graph hold placeholders, ONNX Runtime gets the arrays as
external initializers, `save` writes them as ONNX external data. References: a plain ONNX
Runtime session on the self-contained graph (`Explainer.model`, the file `save` wrote), and for
the linear classifier the closed form ∂logit_t/∂x = W[:, t].
"""

from __future__ import annotations

import resource
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_saliency as osal
from onnx_saliency.runtime import SPLIT_BYTES, is_placeholder


def _conv_classifier(batch=None, classes=10) -> onnx.ModelProto:
    """x [N,3,16,16] → Conv 3→64 (3×3) → Relu → Conv 64→64 (3×3, stride 2) → Relu →
    GlobalAveragePool → Flatten → Gemm → logits; w2 (147 KB) over SPLIT_BYTES."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.2).astype(np.float32), n)
             for n, s in (("w1", (64, 3, 3, 3)), ("w2", (64, 64, 3, 3)), ("b2", (64,)),
                          ("fc", (classes, 64)), ("fcb", (classes,)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1] * 4, name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1] * 4, strides=[2, 2],
                              name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], transB=1, name="fc")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _plain_session(model_or_path):
    source = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def _maps(session, x, target):
    names = [o.name for o in session.get_outputs()]
    out = session.run(None, {"x": x, "target": target})
    return dict(zip(names, out))


def test_weights_are_held_once_apart_from_the_graphs():
    """The canonical model and the explainer graph hold no initializer of SPLIT_BYTES or more;
    each canonical weight is one array (the same object) in the explainer's weights; the session
    fed by placeholders gives the same maps and logits as a plain session on the self-contained
    graph (exactly: the same ONNX Runtime kernels on the same values, so tolerance 0)."""
    ex = osal.Explainer(_conv_classifier(), methods=["gradient", "gradcam"], fused=False)
    for model in (ex._canon.model, ex._graph):
        inline = [t.name for t in model.graph.initializer
                  if not is_placeholder(t) and t.ByteSize() >= SPLIT_BYTES]
        assert inline == []
        assert model.ByteSize() < 60_000   # w2 alone (and its flipped copy) is 147 KB
    assert set(ex._canon.weights) == {"w2"}   # w1 (7 KB) stays in the graph
    for name, value in ex._canon.weights.items():
        assert ex._weights[name] is value
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    target = np.array([3, 8], np.int64)
    ours = ex.run(x, target)
    plain = _maps(_plain_session(ex.model), x, target)
    np.testing.assert_array_equal(ours["logits"], plain[ex.logits_output])
    for key in ex.map_names:
        np.testing.assert_array_equal(ours[key], plain[key])
    # the self-contained copies hold the weights again, equal to the source's
    full = {t.name: numpy_helper.to_array(t) for t in ex.canonical.model.graph.initializer}
    source = {t.name: numpy_helper.to_array(t) for t in _conv_classifier().graph.initializer}
    for name in ("w1", "w2", "fc"):
        np.testing.assert_array_equal(full[name], source[name])


def test_fixed_batch_model_is_made_dynamic_without_its_weights():
    """A model fixed to batch 1 is probed with batch 2 on zero weights and made dynamic; the
    maps of a batch of 3 equal, image by image, those of the same model explained one at a time
    (float32 reductions over different batch sizes: 1e-6 relative)."""
    ex = osal.Explainer(_conv_classifier(batch=1), fused=False)
    assert ex.canonical.fixed_batch is None
    x = np.random.default_rng(2).standard_normal((3, 3, 16, 16)).astype(np.float32)
    together = ex.explain(x, 4)["gradient"]
    for i in range(3):
        np.testing.assert_allclose(together[i], ex.explain(x[i:i + 1], 4)["gradient"][0],
                                   rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("external", [False, True])
def test_save_keeps_external_data_when_the_source_had_it(tmp_path, external):
    """A source with external data is saved with `<stem>.data` beside the .onnx, page-aligned,
    a source without as one file; a plain ONNX Runtime session on the saved file gives the
    explainer's maps (tolerance 0: same kernels, same values)."""
    src = tmp_path / "src" / "model.onnx"
    src.parent.mkdir()
    onnx.save_model(_conv_classifier(), str(src), save_as_external_data=external,
                    location="model.bin", size_threshold=0)
    ex = osal.Explainer(str(src), methods=["gradient"], fused=False)
    out = tmp_path / "out" / "explainer.onnx"
    out.parent.mkdir()
    ex.save(out)
    data = out.parent / "explainer.data"
    assert data.exists() == external
    saved = onnx.load(str(out), load_external_data=False)
    if external:
        refs = [{e.key: e.value for e in t.external_data} for t in saved.graph.initializer
                if t.data_location == TensorProto.EXTERNAL]
        assert {r["location"] for r in refs} == {"explainer.data"}
        assert all(int(r["offset"]) % 4096 == 0 for r in refs)
        assert out.stat().st_size < 30_000
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    target = np.array([1, 7], np.int64)
    np.testing.assert_array_equal(_maps(_plain_session(str(out)), x, target)["gradient"],
                                  ex.explain(x, target)["gradient"])


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@pytest.mark.slow
def test_model_over_2gb_builds_explains_and_saves(tmp_path):
    """x [1,3,64,64] → Flatten → Gemm(W [12288, 44000]): 2.16 GB of float32 weights, in
    external data (protobuf cannot hold them). The gradient map is the closed form
    ∂logit_t/∂x = W[:, t] (read from the data file): exact up to float32 products with a
    one-hot seed, summed over 3 channels (1e-6), 1e-4 relative on logits (a 12288-term dot
    product in float32 against float64). The saved explainer graph (external data) runs in a
    plain ONNX Runtime session with the same maps."""
    n_in, classes = 3 * 64 * 64, 44_000
    folder = tmp_path / "big"
    folder.mkdir()
    weights = np.lib.format.open_memmap(folder / "w.npy", "w+", np.float32, (n_in, classes))
    rng = np.random.default_rng(0)
    for start in range(0, n_in, 1024):
        weights[start:start + 1024] = rng.random((min(1024, n_in - start), classes),
                                                 np.float32) - 0.5
    weights.flush()
    offset = weights.offset
    del weights
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[n_in, classes],
                    data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "w.npy"), ("offset", str(offset)),
                       ("length", str(n_in * classes * 4))):
        w.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"], name="flatten"),
         helper.make_node("Gemm", ["f", "w"], ["logits"], name="fc")], "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])], [w])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                    str(folder / "model.onnx"))

    start = time.perf_counter()
    ex = osal.Explainer(str(folder / "model.onnx"), methods=["gradient_sum"], fused=False)
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    target = np.array([5, 43_999], np.int64)
    out = ex.run(x, target)
    built = time.perf_counter() - start
    w_file = np.load(folder / "w.npy", mmap_mode="r")
    for i, t in enumerate(target):   # gradient_sum: Σ_c ∂logit_t/∂x_c = Σ_c W[c·64·64 + …, t]
        ref = np.asarray(w_file[:, t], np.float64).reshape(3, 64, 64).sum(0)
        np.testing.assert_allclose(out["gradient_sum"][i], ref, rtol=1e-6, atol=1e-6)
    ref_logits = x.reshape(2, -1).astype(np.float64) @ w_file
    np.testing.assert_allclose(out["logits"], ref_logits, rtol=1e-4, atol=1e-3)

    ex.save(tmp_path / "out.onnx")
    assert (tmp_path / "out.data").stat().st_size >= n_in * classes * 4
    saved = out["gradient_sum"]
    del ex, out
    plain = _maps(_plain_session(str(tmp_path / "out.onnx")), x, target)
    np.testing.assert_array_equal(plain["gradient_sum"], saved)
    print(f"\n2.16 GB Gemm: build + explain {built:.1f} s, peak RSS {_peak_rss_gib():.2f} GiB")


def test_cli_export_of_an_external_data_model_writes_both_files(tmp_path):
    """`onnx-saliency export` on a source with external data: `<out>.onnx` and `<out>.data`,
    the graph naming the final data file (not the temporary one it was written beside), and
    nothing else left in the folder; the saved pair runs in a plain session."""
    from onnx_saliency import cli

    src = tmp_path / "src" / "model.onnx"
    src.parent.mkdir()
    onnx.save_model(_conv_classifier(), str(src), save_as_external_data=True,
                    location="model.bin", size_threshold=0)
    out = tmp_path / "out" / "explainer.onnx"
    out.parent.mkdir()
    assert cli.main(["export", str(src), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["explainer.data", "explainer.onnx"]
    saved = onnx.load(str(out), load_external_data=False)
    assert {e.value for t in saved.graph.initializer for e in t.external_data
            if e.key == "location"} == {"explainer.data"}
    x = np.random.default_rng(4).standard_normal((2, 3, 16, 16)).astype(np.float32)
    maps = _maps(_plain_session(str(out)), x, np.array([0, 5], np.int64))
    assert np.isfinite(maps["gradient"]).all() and np.abs(maps["gradient"]).max() > 0
