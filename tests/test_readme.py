"""The README runs as written: its Python blocks are executed verbatim, its shell commands that
run offline are run through the installed `onnx-saliency` command, and what its prose says about
their results is checked (map names, the saved graph's inputs and outputs in a bare ONNX Runtime
session). Blocks that need a model the reader brings (`model.onnx`, `photos/`) run in a temporary
folder holding a small exported CNN and two photos made here. The C++ block is built and run by
tests/test_cpp.py. Links and repository paths named in the README and docs/ must exist.

Tolerance: the saved graph is compared with `Explainer.explain` to 1e-5 of the map's peak (the
same graph run by two sessions; only ORT's thread scheduling of float sums may differ).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)


def blocks(lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(README.read_text()) if kind == lang]


def commands(block: str) -> list[str]:
    """A shell block's commands: continuation lines joined, `a && b` split."""
    text = block.replace("\\\n", " ")
    return [part.strip() for line in text.splitlines() if line.strip()
            for part in line.split("&&")]


def cli_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def run_cli(command: str, cwd: Path) -> subprocess.CompletedProcess:
    argv = shlex.split(command)
    assert argv[0] == "onnx-saliency", command
    done = subprocess.run(argv, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done


def python_block(marker: str) -> str:
    found = [b for b in blocks("python") if marker in b]
    assert len(found) == 1, f"expected one README Python block with {marker!r}, found {len(found)}"
    return found[0]


def test_setup_commands_are_the_documented_two():
    text = README.read_text()
    assert "pip install . && onnx-saliency demo" in text
    assert 'pip install ".[test]" && pytest -q' in text


def test_every_shell_command_is_run_here_or_in_test_cpp():
    """Each shell command is an installer/pytest step, an `onnx-saliency` command (run below), or
    part of the C++ block (tests/test_cpp.py builds that example); nothing is silently skipped."""
    for block in blocks("sh"):
        for command in commands(block):
            head = command.split()[0]
            assert (command.startswith(("pip install", "pytest")) or head == "onnx-saliency"
                    or "cmake" in block), f"README shell command not covered by a test: {command}"


def test_python_quick_start(tmp_path, monkeypatch):
    """The quick start, verbatim; then its prose: map names and shapes, the overlay written, and
    the saved graph in a bare ONNX Runtime session (inputs image and target, −1 = top-1; outputs
    the logits, one map per key, `finite`) giving the same maps."""
    import onnxruntime as ort

    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    with pytest.warns(UserWarning):          # the bundled model's trailing Softmax is bypassed
        exec(compile(python_block("Explainer(data /"), "README quick start", "exec"), scope)
    maps, x = scope["maps"], scope["x"]
    assert list(maps) == ["gradient", "gradcam@hardswish_17.tmp_0", "tsgb"]
    assert all(m.shape == (1, 48, 192) for m in maps.values())
    assert (tmp_path / "gradient.png").stat().st_size > 0
    session = ort.InferenceSession(str(tmp_path / "explainer.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()][1] == "target"
    names = [o.name for o in session.get_outputs()]
    assert names[1:] == [*maps, "finite"]
    image = session.get_inputs()[0].name
    out = dict(zip(names, session.run(None, {image: x, "target": np.array([-1], np.int64)})))
    assert out["finite"].tolist() == [True]
    for key, value in maps.items():
        np.testing.assert_allclose(out[key], value, rtol=0, atol=1e-5 * np.abs(value).max(), err_msg=key)


def test_python_from_pytorch(tmp_path, monkeypatch):
    """The from-PyTorch block, verbatim (it asserts its own map names); it writes model.onnx."""
    monkeypatch.chdir(tmp_path)
    exec(compile(python_block("from_torch("), "README from PyTorch", "exec"), {})
    assert (tmp_path / "model.onnx").stat().st_size > 0


def test_demo_command(tmp_path):
    """`onnx-saliency demo` from the set-up block, offline on the bundled model."""
    (demo,) = [c for b in blocks("sh") for c in commands(b) if c.startswith("onnx-saliency demo")]
    run_cli(demo, tmp_path)
    out = tmp_path / "saliency_out"
    assert (out / "maps.json").exists()
    assert list(out.glob("*.npy")) and list(out.glob("*.png"))


def test_command_line_block(tmp_path):
    """The command-line block, each command as written, on a small exported CNN (`model.onnx`,
    a spatial layer before global pooling, 64 px) and two photos in `photos/`."""
    torch = pytest.importorskip("torch")
    from PIL import Image

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5))
    torch.onnx.export(net.eval(), torch.rand(1, 3, 64, 64), str(tmp_path / "model.onnx"), dynamo=False,
                      input_names=["input"], dynamic_axes={"input": {0: "N"}})
    (tmp_path / "photos").mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.jpg", (90, 70)), ("b.png", (64, 64))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(tmp_path / "photos" / name)
    (block,) = [b for b in blocks("sh") if "onnx-saliency explain" in b]
    ran = [c for c in commands(block) if c.startswith("onnx-saliency")]
    assert len(ran) == len(commands(block)) >= 3
    for command in ran:
        run_cli(command, tmp_path)
    assert (tmp_path / "maps" / "maps.json").exists()
    assert len(list((tmp_path / "maps").glob("*.npy"))) == 4        # 2 photos × 2 methods
    assert (tmp_path / "explainer.onnx").stat().st_size > 0


def test_methods_table_is_the_registry():
    from onnx_saliency.methods import REGISTRY

    text = README.read_text().split("## Methods", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \|", text, re.M)
    assert sorted(rows) == sorted(REGISTRY) and len(rows) == len(REGISTRY)


def _slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("doc", ["README.md", "CONTRIBUTING.md", "docs/methods.md", "docs/design.md",
                                 "docs/kernels.md", "docs/benchmarks.md"])
def test_links_and_paths_exist(doc):
    """Relative links (and their #anchors) and the repository paths named in `code` exist."""
    path = ROOT / doc
    text = path.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"\w+://", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.exists(), f"{doc}: link to missing {target}"
        if anchor:
            slugs = {_slug(h) for h in re.findall(r"^#+ (.*)$", dest.read_text(), re.M)}
            assert anchor in slugs, f"{doc}: no heading for #{anchor} in {file or doc}"
    for named in re.findall(r"`((?:docs|examples|benchmarks|tests|graphs|csrc|python)/[\w./-]+)`", text):
        assert (ROOT / named.rstrip("/")).exists(), f"{doc}: names missing path {named}"
