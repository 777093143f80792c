"""The CLI's user errors (issue #20, item 1): each one line on stderr, no traceback, exit 2 for a
usage error (checked before the model is loaded where possible) and 1 for a failure while working;
--version, `python -m onnx_saliency`, a complete --help, grayscale models, one-line warnings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from onnx_saliency import cli
from onnx_saliency.methods import REGISTRY
from test_cli_output import SIZE, model  # noqa: F401  (the tiny CNN fixture)


def grayscale(source: Path, path: Path) -> Path:
    """test_cli_output's tiny CNN taking 1-channel images: its first Conv's weights cut to one
    input channel."""
    proto = onnx.load(source)
    w = next(i for i in proto.graph.initializer if i.name == "w")
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w)[:, :1].copy(), "w"))
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 1
    onnx.save(proto, path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ["a.png", "b.jpg"]:
        Image.fromarray(rng.integers(0, 255, (*SIZE, 3), dtype=np.uint8)).save(folder / name)
    return folder


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """cli.main's exit status (argparse's SystemExit too), stdout and stderr."""
    try:
        code = cli.main(list(map(str, argv)))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str, starts: str = "onnx-saliency: error:") -> str:
    assert len(err.splitlines()) == 1 and "Traceback" not in err and err.startswith(starts), err
    return err


CASES = {   # name: (argv after the model, or "export"/"layers" argv, exit code, words in the line)
    "batch-size 0": (["--batch-size", "0"], 2, "--batch-size"),
    "batch-size -1": (["--batch-size", "-1"], 2, "--batch-size"),
    "batch-size abc": (["--batch-size", "abc"], 2, "invalid int"),
    "two means, 3 channels": (["--mean", "0.1", "0.2"], 2, "--mean"),
    "channels 1, 3-channel model": (["--channels", "1"], 2, "3-channel images"),
    "method nosuch": (["--method", "nosuch"], 2, "tsgb"),
    "layer nosuch": (["--method", "gradcam", "--layer", "nosuch"], 2, "onnx-saliency layers"),
    "target 5000": (["--target", "5000"], 2, "0 to 2"),
    "target cat": (["--target", "cat"], 2, "class label"),
    "layout NHWC on NCHW": (["--layout", "NHWC"], 2, "drop --layout NHWC"),
    "channels 2": (["--channels", "2"], 2, "invalid choice"),
    "bogus flag": (["--bogus"], 2, "--bogus"),
}


@pytest.mark.parametrize("case", CASES)
def test_explain_usage_errors_are_one_line(model, images, tmp_path, capsys, case):
    flags, code, words = CASES[case]
    status, _, err = run_cli(capsys, "explain", model, images, "--out", tmp_path / "out", *flags)
    assert status == code and words in one_line(err), err
    assert not (tmp_path / "out").exists()


def test_method_is_checked_before_the_model_is_loaded(model, images, tmp_path, capsys, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli, "Explainer", no_loading)
    for argv in (["explain", tmp_path / "garbage.onnx", images, "--method", "nosuch"],
                 ["export", model, "-o", tmp_path / "x.onnx", "--method", "nosuch"],
                 ["bench", model, "--method", "nosuch"]):
        if argv[1] != model:
            argv[1].write_bytes(b"not a model")
        status, _, err = run_cli(capsys, *argv)
        assert status == 2 and "unknown --method 'nosuch'" in one_line(err)


@pytest.mark.parametrize("argv", [
    ["explain", "{tmp}/missing.onnx", "{images}"],
    ["explain", "{model}", "{tmp}/missing.png"],
    ["layers", "{tmp}/missing.onnx"],
    ["export", "{tmp}/missing.onnx", "-o", "{tmp}/x.onnx"],
    ["export", "{model}", "-o", "/nonexistent/dir/x.onnx"],
    ["bench", "{tmp}/missing.onnx"],
    ["export", "{model}", "-o", "{tmp}/x.onnx", "--method", "gradcam", "--layer", "nosuch"],
])
def test_bad_paths_and_layers_are_usage_errors(model, images, tmp_path, capsys, argv):
    argv = [a.format(tmp=tmp_path, model=model, images=images) for a in argv]
    status, _, err = run_cli(capsys, *argv)
    assert status == 2, err
    one_line(err)
    assert "list_layers" not in err
    assert not (tmp_path / "x.onnx").exists()


def test_a_skipped_image_is_exit_1_with_everything_else_written(model, images, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for f in images.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "cut.jpg").write_bytes((images / "b.jpg").read_bytes()[:300])   # truncated JPEG
    status, out, err = run_cli(capsys, "explain", model, folder, "--out", tmp_path / "out")
    assert status == 1
    assert "cut.jpg" in one_line(err, "onnx-saliency: warning: skipped") and "skipped 1" in out
    index = json.loads((tmp_path / "out" / "maps.json").read_text())
    assert {Path(e["image"]).name for e in index["maps"]} == {"a.png", "b.jpg"}
    assert [Path(s["image"]).name for s in index["skipped"]] == ["cut.jpg"]


def test_input_methods_warn_that_they_ignore_layer(model, images, tmp_path, capsys):
    status, _, err = run_cli(capsys, "explain", model, images, "--out", tmp_path / "out",
                             "--method", "gradient", "--method", "gradcam", "--layer", "conv")
    assert status == 0
    assert one_line(err, "onnx-saliency: warning:").strip() == \
        "onnx-saliency: warning: input methods ignore --layer: gradient"


def test_one_mean_is_every_channel(model, images, tmp_path, capsys):
    status, _, err = run_cli(capsys, "explain", model, images, "--out", tmp_path / "out",
                             "--mean", "0.5", "--std", "0.25")
    assert status == 0 and err == ""
    assert "every channel" in cli._parser()._subparsers._group_actions[0].choices[
        "explain"].format_help().replace("\n", " ").replace("  ", " ")


def test_a_grayscale_model_is_explained(model, tmp_path, images, capsys):
    gray = grayscale(model, tmp_path / "gray.onnx")
    out = tmp_path / "out"
    status, _, err = run_cli(capsys, "explain", gray, images, "--out", out,
                             "--method", "gradient", "--method", "gradcam")
    assert status == 0 and err == "", err
    index = json.loads((out / "maps.json").read_text())
    assert len(index["maps"]) == 4
    for entry in index["maps"]:
        assert np.load(out / entry["npy"]).shape == SIZE
        with Image.open(out / entry["png"]) as png:
            assert png.mode in ("RGB", "RGBA")
    # --channels 3 on a 1-channel model, a preset's 3 values: refused / averaged
    status, _, err = run_cli(capsys, "explain", gray, images, "--out", tmp_path / "o3",
                             "--channels", "3")
    assert status == 2 and "1-channel" in one_line(err)
    status, _, err = run_cli(capsys, "explain", gray, images, "--out", tmp_path / "o3",
                             "--mean", "0.1", "0.2", "0.3")
    assert status == 2 and "--mean takes 1 or 1 numbers" not in one_line(err) and "--mean" in err
    assert cli._norm(None, [0.2, 0.4, 0.6], 1, "--mean").ravel().tolist() == pytest.approx([0.4])


def test_the_other_layout_is_named(tmp_path):
    def proto(dims):
        graph = helper.make_graph(
            [helper.make_node("Identity", ["input"], ["logits"])], "g",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, dims)])
        return helper.make_model(graph)

    with pytest.raises(cli.UsageError, match="pass --layout NHWC"):
        cli._check_layout(proto(["N", 16, 24, 3]), "NCHW")
    with pytest.raises(cli.UsageError, match="drop --layout NHWC"):
        cli._check_layout(proto(["N", 1, 16, 24]), "NHWC")
    cli._check_layout(proto(["N", 3, 16, 24]), "NCHW")
    cli._check_layout(proto(["N", 3, 16, 3]), "NHWC")            # ambiguous: left to the model


def test_help_lists_methods_and_exit_codes(capsys):
    for argv in ([], ["explain"], ["export"], ["bench"], ["layers"], ["demo"]):
        status, out, _ = run_cli(capsys, *argv, "--help")
        text = " ".join(out.split())
        assert status == 0 and "exit status: 0 success; 2 usage error" in text, argv
        if argv in ([], ["explain"], ["export"], ["bench"]):
            assert all(name in text for name in REGISTRY), argv
    top = " ".join(run_cli(capsys, "--help")[1].split())
    assert "bench MODEL` times it." in top          # the description is whole sentences
    explain_help = cli._parser()._subparsers._group_actions[0].choices["explain"]
    assert all(action.help for action in explain_help._actions)


def test_version_and_python_m(capsys):
    from importlib.metadata import version
    status, out, _ = run_cli(capsys, "--version")
    assert status == 0 and out.strip() == f"onnx-saliency {version('onnx-saliency')}"
    proc = subprocess.run([sys.executable, "-m", "onnx_saliency", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "exit status" in proc.stdout and "explain" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "onnx_saliency", "explain", "missing.onnx",
                           "missing.png"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr


def test_python_warnings_are_one_clean_line():
    """The bundled model's Softmax-bypass warning, from a process with Python's own warning
    settings: one line, without the source line."""
    from importlib import resources
    bundled = str(resources.files("onnx_saliency") / "data" / "text_direction_cls.onnx")
    proc = subprocess.run([sys.executable, "-m", "onnx_saliency", "layers", bundled],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("onnx-saliency: warning: The output")
    assert len(proc.stderr.splitlines()) == 1 and "warnings.warn" not in proc.stderr
