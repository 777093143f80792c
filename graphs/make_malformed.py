"""Sloppy and malformed ONNX files: what deployed models contain, and what users feed by mistake.

`clean()` is a tiny classifier, x [N,3,16,16] → Conv → Relu → MaxPool → Conv → Relu →
GlobalAveragePool → Flatten → Gemm → logits [N,5], with seeded weights.

`REPAIRABLE` derives from it files that ONNX Runtime loads but the strict ONNX checker refuses
(a graph output with a type but no shape, unnamed nodes, unsorted nodes, ...): each must explain
exactly like the clean model. Running this file writes them next to it as `repair_<name>.onnx`.

`write_corpus(folder)` writes ~80 malformed files (truncations, bit flips at seeded positions,
cycles, dangling tensors, huge declared shapes, bad external data, foreign opsets and domains,
wrong inputs, ...) and returns {relative path: expectation}: "error" (a package error whose
message matches the given pattern, when there is one), "works" (an explainer that explains) or
"either" (bit flips: one of the two). The tests write it to a temporary folder.
Deterministic: the same bytes every run.

    python graphs/make_malformed.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
OPSET = 17
CLASSES = 5
HUGE = 2**20      # a declared side no machine can hold: 3 × 2^40 floats per image is 12 TiB


def clean(size: int | str = 16, width: int = 4, seed: int = 14) -> onnx.ModelProto:
    """The tiny classifier; `size` is the declared H = W (an int, or a symbol)."""
    rng = np.random.default_rng(seed)

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), name)

    inits = [w("w1", width, 3, 3, 3), w("b1", width), w("w2", 2 * width, width, 3, 3),
             w("b2", 2 * width), w("fc_w", CLASSES, 2 * width), w("fc_b", CLASSES)]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])
    graph = helper.make_graph(nodes, "tiny", [x], [logits], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="onnx-saliency malformed fixtures")
    model.ir_version = 8
    return model


def _edit(fn: Callable[[onnx.ModelProto], None]) -> Callable[[], onnx.ModelProto]:
    """A maker of the clean model edited in place by `fn`."""
    def make():
        model = clean()
        fn(model)
        return model
    return make


def _node(model, name) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


# --- repairable: ONNX Runtime loads these; so must onnx-saliency ----------------------------

def _output_no_shape(m):
    m.graph.output[0].type.tensor_type.ClearField("shape")


def _output_no_type(m):
    m.graph.output[0].ClearField("type")


def _unnamed_nodes(m):
    for node in m.graph.node:
        node.name = ""


def _duplicate_node_names(m):
    for i, node in enumerate(m.graph.node):
        node.name = "block" if i % 3 else ""


def _ghost_value_info(m):
    m.graph.value_info.extend([
        helper.make_tensor_value_info("no_such_tensor", TensorProto.FLOAT, [1, 2]),
        helper.make_tensor_value_info("r1", TensorProto.FLOAT, ["N", 4, 16, 16])])


def _initializer_inputs(m):
    m.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                         for t in m.graph.initializer)


def _unsorted_nodes(m):
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(reversed(nodes))


def _duplicate_outputs(m):
    m.graph.output.append(m.graph.output[0])


REPAIRABLE = {fn.__name__[1:]: _edit(fn) for fn in (
    _output_no_shape, _output_no_type, _unnamed_nodes, _duplicate_node_names, _ghost_value_info,
    _initializer_inputs, _unsorted_nodes, _duplicate_outputs)}


# --- malformed: each must fail with one package error (or explain, once repaired) -----------

def _cycle(m):
    _node(m, "relu1").input[0] = "r2"          # relu1 ← relu2 ← conv2 ← pool1 ← relu1


def _self_loop(m):
    _node(m, "relu2").input[0] = "r2"


def _dangling_input(m):
    _node(m, "conv2").input[0] = "missing_tensor"


def _dangling_output(m):
    m.graph.output[0].name = "nobody_makes_this"


def _dangling_weight(m):
    _node(m, "conv1").input[1] = "missing_weight"


def _two_producers(m):
    _node(m, "relu2").output[0] = "c2"
    _node(m, "gap").input[0] = "c2"


def _huge_input(m):
    for d, v in zip(m.graph.input[0].type.tensor_type.shape.dim[2:], (HUGE, HUGE)):
        d.Clear()
        d.dim_value = v


def _huge_batch(m):
    d = m.graph.input[0].type.tensor_type.shape.dim[0]
    d.Clear()
    d.dim_value = 2**40


def _huge_resize(m):
    m.graph.initializer.append(numpy_helper.from_array(
        np.array([1, 1, HUGE / 8, HUGE / 8], np.float32), "scales"))
    m.graph.node.insert(1, helper.make_node("Resize", ["c1", "", "scales"], ["big"], name="zoom"))
    _node(m, "relu1").input[0] = "big"


def _initializer_dims_lie(m):
    w1 = m.graph.initializer[0]
    w1.dims[0] = HUGE                            # raw_data still holds 4·3·3·3 floats


def _initializer_short_data(m):
    w2 = next(t for t in m.graph.initializer if t.name == "w2")
    w2.raw_data = w2.raw_data[:-8]


def _opset(version):
    def edit(m):
        m.opset_import[0].version = version
    return edit


def _no_default_opset(m):
    m.opset_import[0].domain = "ai.onnx.ml"


def _foreign_op(domain, op_type="Gelu", register=True):
    """relu2 becomes `domain.op_type` (on the backward path of every method)."""
    def edit(m):
        node = _node(m, "relu2")
        node.op_type, node.domain = op_type, domain
        if register:
            m.opset_import.append(helper.make_opsetid(domain, 1))
    return edit


def _foreign_op_off_path(m):
    """A com.microsoft node whose result no output needs (dead code: it goes)."""
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    m.graph.node.append(helper.make_node("Gelu", ["r1"], ["unused"], name="side_gelu",
                                         domain="com.microsoft"))


def _unknown_default_op(m):
    _node(m, "relu2").op_type = "NoSuchOp"


def _no_outputs(m):
    del m.graph.output[:]


def _no_inputs(m):
    del m.graph.input[:]
    m.graph.initializer.append(numpy_helper.from_array(np.zeros([1, 3, 16, 16], np.float32), "x"))


def _two_image_inputs(m):
    m.graph.input.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["N", 3, 16, 16]))
    m.graph.node.insert(0, helper.make_node("Add", ["x", "x2"], ["xx"], name="mix"))
    _node(m, "conv1").input[0] = "xx"


def _uint8_input(m):
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    m.graph.node.insert(0, helper.make_node("Cast", ["x"], ["xf"], name="to_float", to=1))
    _node(m, "conv1").input[0] = "xf"


def _rank2_input(m):
    x = m.graph.input[0]
    x.CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 768]))
    m.graph.node.insert(0, helper.make_node("Reshape", ["x", "to_image"], ["xi"], name="unflatten"))
    m.graph.initializer.append(numpy_helper.from_array(np.array([-1, 3, 16, 16], np.int64),
                                                       "to_image"))
    _node(m, "conv1").input[0] = "xi"


def _input_no_shape(m):
    m.graph.input[0].type.tensor_type.ClearField("shape")


def _input_no_type(m):
    m.graph.input[0].ClearField("type")


def _input_sequence(m):
    m.graph.input[0].type.CopyFrom(helper.make_sequence_type_proto(
        helper.make_tensor_type_proto(TensorProto.FLOAT, None)))


def _empty_graph(m):
    del m.graph.node[:]
    del m.graph.initializer[:]


def _identity_graph(m):
    del m.graph.node[:]
    del m.graph.initializer[:]
    m.graph.node.append(helper.make_node("Identity", ["x"], ["logits"], name="same"))


def _int_output(m):
    m.graph.node.append(helper.make_node("ArgMax", ["logits"], ["label"], name="argmax", axis=1))
    m.graph.output[0].CopyFrom(helper.make_tensor_value_info("label", TensorProto.INT64, ["N", 1]))


def _constant_output(m):
    m.graph.initializer.append(numpy_helper.from_array(np.ones([1, CLASSES], np.float32), "k"))
    m.graph.output[0].name = "k"


def _wrong_attribute_type(m):
    node = _node(m, "conv1")
    del node.attribute[:]
    node.attribute.append(helper.make_attribute("pads", "one"))


def _wrong_weight_shape(m):
    w2 = next(t for t in m.graph.initializer if t.name == "w2")
    w2.CopyFrom(numpy_helper.from_array(np.ones([8, 5, 3, 3], np.float32), "w2"))


def _wrong_weight_type(m):
    w2 = next(t for t in m.graph.initializer if t.name == "w2")
    w2.CopyFrom(numpy_helper.from_array(np.ones([8, 4, 3, 3], np.float64), "w2"))


def _zero_size_input(m):
    d = m.graph.input[0].type.tensor_type.shape.dim[2]
    d.Clear()
    d.dim_value = 0


def _subgraph_if(m):
    """An If node on the backward path (a control-flow op with subgraphs)."""
    then = helper.make_graph([helper.make_node("Relu", ["c2"], ["t"], name="then_relu")], "then",
                             [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Neg", ["c2"], ["e"], name="else_neg")], "else",
                              [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    m.graph.initializer.append(numpy_helper.from_array(np.array(True), "flag"))
    relu2 = _node(m, "relu2")
    relu2.CopyFrom(helper.make_node("If", ["flag"], ["r2"], name="branch", then_branch=then,
                                    else_branch=other))


MALFORMED: dict[str, tuple[Callable[[], onnx.ModelProto], str]] = {
    "cycle": (_edit(_cycle), "error:cycle"),
    "self_loop": (_edit(_self_loop), "error:cycle"),
    "dangling_input": (_edit(_dangling_input), "error:missing_tensor"),
    "dangling_output": (_edit(_dangling_output), "error:nobody_makes_this"),
    "dangling_weight": (_edit(_dangling_weight), "error:missing_weight"),
    "two_producers": (_edit(_two_producers), "error:'c2'"),
    "huge_input": (_edit(_huge_input), "error:memory"),
    "huge_batch": (_edit(_huge_batch), "works"),
    "huge_resize": (_edit(_huge_resize), "error:memory"),
    "initializer_dims_lie": (_edit(_initializer_dims_lie), "error:w1"),
    "initializer_short_data": (_edit(_initializer_short_data), "error:w2"),
    "opset_1": (_edit(_opset(1)), "error:opset 1;"),
    "opset_6": (_edit(_opset(6)), "error:opset 6;"),
    "opset_99": (_edit(_opset(99)), "error:opset 99;"),
    "opset_11": (_edit(_opset(11)), "works"),
    "no_default_opset": (_edit(_no_default_opset), "error:opset"),
    "unknown_domain": (_edit(_foreign_op("my.domain", "Swish")), "error:relu2.*Swish.*my.domain"),
    "unknown_domain_unregistered": (_edit(_foreign_op("my.domain", "Swish", register=False)),
                                    "error:relu2.*Swish.*my.domain"),
    "microsoft_op_on_path": (_edit(_foreign_op("com.microsoft", "SampleOp")),
                             "error:relu2.*SampleOp.*com.microsoft"),
    "microsoft_gelu_on_path": (_edit(_foreign_op("com.microsoft")), "works"),
    "microsoft_op_off_path": (_edit(_foreign_op_off_path), "works"),
    "unknown_default_op": (_edit(_unknown_default_op), "error:NoSuchOp"),
    "no_outputs": (_edit(_no_outputs), "error:no graph outputs"),
    "no_inputs": (_edit(_no_inputs), "error:image input"),
    "two_image_inputs": (_edit(_two_image_inputs), "error:image input"),
    "uint8_input": (_edit(_uint8_input), "error:uint8"),
    "rank2_input": (_edit(_rank2_input), "error:rank 2"),
    "input_no_shape": (_edit(_input_no_shape), "error:shape"),
    "input_no_type": (_edit(_input_no_type), r"error:\bx\b"),
    "input_sequence": (_edit(_input_sequence), r"error:\bx\b"),
    "zero_size_input": (_edit(_zero_size_input), "error:'x'"),
    "empty_graph": (_edit(_empty_graph), "error:no nodes"),
    "identity_graph": (_edit(_identity_graph), "either"),
    "int_output": (_edit(_int_output), "either"),
    "constant_output": (_edit(_constant_output), "either"),
    "wrong_attribute_type": (_edit(_wrong_attribute_type), "error:conv1"),
    "wrong_weight_shape": (_edit(_wrong_weight_shape), "either"),
    "wrong_weight_type": (_edit(_wrong_weight_type), "error:conv2"),
    "if_on_path": (_edit(_subgraph_if), "error:branch"),
    "duplicate_outputs": (REPAIRABLE["duplicate_outputs"], "works"),
}


# --- byte-level damage ----------------------------------------------------------------------

def _replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1, old
    return data.replace(old, new)


def _bad_utf8_files() -> dict[str, bytes]:
    """Names whose bytes are not UTF-8 (what a flipped high bit does to an ASCII name)."""
    data = clean().SerializeToString()
    return {"utf8_node_name": _replace_once(data, b"relu1", b"rel\xf51"),
            "utf8_op_type": _replace_once(data, b"MaxPool", b"Max\xd0ool"),
            "utf8_input_name": data.replace(b"\n\x01x", b"\n\x01\xf8")}


def _truncations(data: bytes) -> dict[str, bytes]:
    n = len(data)
    offsets = sorted({0, 1, 2, 7, 16, 64, n // 4, n // 2, 3 * n // 4, n - 40, n - 9, n - 1})
    return {f"truncated_{k}": data[:k] for k in offsets}


def _weight_spans(model: onnx.ModelProto, data: bytes) -> list[tuple[int, int]]:
    spans = []
    for t in model.graph.initializer:
        start = data.find(t.raw_data)
        spans.append((start, start + len(t.raw_data)))
    return spans


def _bit_flips(model: onnx.ModelProto, count: int = 24, seed: int = 15) -> dict[str, bytes]:
    """`count` single-bit flips at seeded positions, half of them outside the weights' bytes."""
    data = model.SerializeToString()
    spans = _weight_spans(model, data)
    structure = [i for i in range(len(data)) if not any(a <= i < b for a, b in spans)]
    rng = np.random.default_rng(seed)
    picks = list(rng.choice(structure, count // 2, replace=False)) + \
        list(rng.choice(len(data), count - count // 2, replace=False))
    out = {}
    for pos in sorted(int(p) for p in picks):
        bit = int(rng.integers(8))
        flipped = bytearray(data)
        flipped[pos] ^= 1 << bit
        out[f"bitflip_{pos}_{bit}"] = bytes(flipped)
    return out


# --- external data ------------------------------------------------------------------------

def _external(folder: Path, location: str, offset: int = 0, length: int | None = None,
              write: bytes | None = None) -> None:
    """The clean model in `folder` with w2 stored externally at `location` (its bytes written
    to folder/w2.bin unless `write` says what that file holds)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = clean()
    w2 = next(t for t in model.graph.initializer if t.name == "w2")
    raw = w2.raw_data
    (folder / "w2.bin").write_bytes(raw if write is None else write)
    w2.ClearField("raw_data")
    w2.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": str(offset), "length": str(length or len(raw))}
    for key, value in entries.items():
        w2.external_data.append(onnx.StringStringEntryProto(key=key, value=value))
    (folder / "model.onnx").write_bytes(model.SerializeToString())


def _external_cases(root: Path) -> dict[str, str]:
    """Bad external data; a readable w2.bin one level up lures a loader that leaves the folder."""
    root.mkdir(parents=True, exist_ok=True)
    raw = next(t for t in clean().graph.initializer if t.name == "w2").raw_data
    (root / "w2.bin").write_bytes(raw)
    outside = str((root / "w2.bin").resolve())
    cases = {
        "ext_ok": ({"location": "w2.bin"}, "works"),
        "ext_parent_dir": ({"location": "../w2.bin"}, "error:outside"),
        "ext_absolute": ({"location": outside}, "error:outside"),
        "ext_missing_file": ({"location": "nope.bin"}, "error:nope.bin"),
        "ext_too_long": ({"location": "w2.bin", "length": len(raw) + 4}, "error:w2"),
        "ext_offset_past_end": ({"location": "w2.bin", "offset": len(raw) * 2}, "error:w2"),
        "ext_short_file": ({"location": "w2.bin", "write": raw[:20]}, "error:w2"),
        "ext_directory": ({"location": "."}, "error:w2"),
    }
    out = {}
    for name, (kwargs, expect) in cases.items():
        _external(root / name, **kwargs)
        out[f"{root.name}/{name}/model.onnx"] = expect
    link = root / "ext_symlink"
    _external(link, "w2_link.bin")
    (link / "w2_link.bin").symlink_to(root / "w2.bin")
    out[f"{root.name}/ext_symlink/model.onnx"] = "error:outside"
    return out


def write_corpus(folder: Path) -> dict[str, str]:
    """Write the malformed corpus into `folder`; {path relative to folder: expectation}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[bytes, str]] = {}
    for name, (make, expect) in MALFORMED.items():
        files[name] = (make().SerializeToString(), expect)
    for name, make in REPAIRABLE.items():
        files[f"repair_{name}"] = (make().SerializeToString(), "works")
    files["gap_1024"] = (clean(size=1024).SerializeToString(), "works")
    files["not_onnx"] = (b"hello, I am not a model\n", "error:ONNX")
    for name, data in _bad_utf8_files().items():
        files[name] = (data, "error:UTF-8")
    base = clean().SerializeToString()
    for name, data in _truncations(base).items():
        files[name] = (data, "error")
    for name, data in _bit_flips(clean()).items():
        files[name] = (data, "either")
    out = {}
    for name, (data, expect) in files.items():
        (folder / f"{name}.onnx").write_bytes(data)
        out[f"{name}.onnx"] = expect
    out.update(_external_cases(folder / "external"))
    return out


def main(out_dir: Path = HERE) -> None:
    for name, make in REPAIRABLE.items():
        onnx.save(make(), str(out_dir / f"repair_{name}.onnx"))
    print(f"wrote {len(REPAIRABLE)} repairable fixtures to {out_dir}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
