"""The CLI's output folders (issue #15, item 8) and its one-line errors (item 6): atomic files,
maps.json always consistent with the folder, SIGTERM mid-run, earlier runs, same-stem inputs,
concurrent runs, unreadable images, bad output paths."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from contextlib import suppress
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from conftest import tiny_cnn
from onnx_saliency import cli

SIZE = (16, 24)
METHODS = ["--method", "gradient", "--method", "input_x_gradient"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny CNN: Conv(3->4, 3x3) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(4->3)."""
    return tiny_cnn(tmp_path_factory.mktemp("model") / "tiny.onnx", SIZE)


def make_images(folder: Path, names: list[str], seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = [folder / name for name in names]
    for path in paths:
        Image.fromarray(rng.integers(0, 255, (*SIZE, 3), dtype=np.uint8)).save(path)
    return paths


def explain(model: Path, *args) -> int:
    return cli.main(["explain", str(model), *map(str, args), *METHODS])


def command(model: Path, images: Path, out: Path, *flags) -> list[str]:
    """The CLI as a separate process, one image per batch."""
    return [sys.executable, "-m", "onnx_saliency.cli", "explain", str(model), str(images),
            "--out", str(out), "--batch-size", "1", *METHODS, *flags]


def assert_consistent(out: Path) -> dict:
    """maps.json parses; it lists exactly the map files in `out` (no temporary files, no lock);
    every listed file loads."""
    index = json.loads((out / "maps.json").read_text())
    listed = {e[kind] for e in index["maps"] for kind in ("npy", "png")}
    assert set(os.listdir(out)) == listed | {"maps.json"}
    for entry in index["maps"]:
        assert np.load(out / entry["npy"]).shape == SIZE
        with Image.open(out / entry["png"]) as png:
            png.verify()
    return index


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < end
        time.sleep(0.002)


def written(out: Path) -> int:
    """How many finished .npy maps are in `out` now (temporary files start with a dot)."""
    with suppress(FileNotFoundError):
        return sum(1 for f in os.listdir(out) if f.endswith(".npy") and not f.startswith("."))
    return 0


def test_sigterm_at_any_point_leaves_a_consistent_folder(model, tmp_path):
    """Ten runs over 30 images (60 maps), each stopped by SIGTERM once a seeded random number of
    maps (stratified from 0 to 59) is on disk, after a random further delay."""
    images = tmp_path / "images"
    make_images(images, [f"{i:02d}.png" for i in range(30)])
    rng = np.random.default_rng(15)
    counts = []
    for k in range(10):
        out = tmp_path / f"run{k}"
        process = subprocess.Popen(command(model, images, out), stderr=subprocess.PIPE, text=True)
        wait_for(out, process)
        at = 6 * k + rng.integers(6)
        while process.poll() is None and written(out) < at:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.01))
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        index = assert_consistent(out)
        assert process.returncode in (0, 128 + signal.SIGTERM), err
        assert "Traceback" not in err
        assert index["status"] == ("complete" if process.returncode == 0 else "interrupted")
        counts.append(len(index["maps"]))
    assert min(counts) < 20 and max(counts) >= 40, counts


def test_a_write_that_fails_midway_leaves_no_partial_file(model, tmp_path, monkeypatch, capsys):
    """A full disk on the second overlay: the first image's maps stay listed, the half-written
    PNG is gone, and the error is one line."""
    make_images(tmp_path / "images", ["a.png", "b.png"])
    real_save = Image.Image.save
    calls = []

    def full_disk(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) < 3:
            return real_save(self, fp, *args, **kwargs)
        Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    out = tmp_path / "out"
    assert explain(model, tmp_path / "images", "--out", out, "--batch-size", "1") == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and len(err.strip().splitlines()) == 1
    index = assert_consistent(out)
    assert [e["image"] for e in index["maps"]] == [str(tmp_path / "images" / "a.png")] * 2
    assert index["status"] == "failed"


def test_an_earlier_run_is_refused_unless_overwrite_replaces_it(model, tmp_path, capsys):
    make_images(tmp_path / "first", ["a.png", "b.png"])
    second = make_images(tmp_path / "second", ["c.png"])
    out = tmp_path / "out"
    assert explain(model, tmp_path / "first", "--out", out) == 0
    (out / "notes.txt").write_text("mine")
    before = sorted(os.listdir(out))
    assert explain(model, tmp_path / "second", "--out", out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == before                         # nothing touched
    assert explain(model, tmp_path / "second", "--out", out, "--overwrite") == 0
    (out / "notes.txt").unlink()                                      # never removed: not a map
    index = assert_consistent(out)                                    # the first run's maps went
    assert {e["image"] for e in index["maps"]} == {str(second[0])}
    # an index that lists no maps (a run that failed before its first batch) is just replaced
    (out / "maps.json").write_text(json.dumps({"maps": []}))
    assert explain(model, tmp_path / "second", "--out", out) == 0


def test_inputs_sharing_a_stem_get_their_own_files(model, tmp_path):
    images = [*make_images(tmp_path / "a", ["x.png"], 1), *make_images(tmp_path / "b", ["x.png"], 2),
              *make_images(tmp_path / "b", ["x.jpg"], 3)]
    out = tmp_path / "out"
    assert explain(model, *images, "--out", out) == 0
    index = assert_consistent(out)
    names = [e["npy"] for e in index["maps"] if e["map"] == "gradient"]
    assert names == ["x_png_gradient.npy", "x_png_2_gradient.npy", "x_jpg_gradient.npy"]
    maps = [np.load(out / name) for name in names]
    assert not np.allclose(maps[0], maps[1]) and not np.allclose(maps[1], maps[2])


def test_a_folder_another_run_is_writing_is_refused(model, tmp_path, capsys):
    images, others = tmp_path / "images", tmp_path / "others"
    make_images(images, [f"{i:03d}.png" for i in range(100)])
    make_images(others, ["other.png"])
    out = tmp_path / "out"
    process = subprocess.Popen(command(model, images, out), stderr=subprocess.PIPE, text=True)
    wait_for(out, process)
    while process.poll() is None and written(out) < 2:
        time.sleep(0.002)
    # refused: exit 2 once the first run's maps.json lists maps, else 1 (it holds the lock)
    assert explain(model, others, "--out", out) in (1, 2)
    assert explain(model, others, "--out", out, "--overwrite") == 1   # never cleared mid-run
    assert process.poll() is None, "the first run ended before the second started"
    assert "another onnx-saliency run" in capsys.readouterr().err
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert len(assert_consistent(out)["maps"]) == 200
    # a run killed outright leaves its lock file and temporary files: no obstacle to the next
    process = subprocess.Popen(command(model, others, out, "--overwrite"))
    wait_for(out / ".onnx-saliency.lock", process)
    process.kill()
    process.wait()
    assert explain(model, others, "--out", out, "--overwrite") == 0
    assert len(assert_consistent(out)["maps"]) == 2


def png_declaring(width: int, height: int) -> bytes:
    """A PNG header declaring width x height pixels (Pillow refuses above 2 x MAX_IMAGE_PIXELS)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def test_unreadable_images_are_skipped_and_listed(model, tmp_path, capsys):
    folder = tmp_path / "images"
    good = make_images(folder, ["good1.png", "good2.jpg"])
    (folder / "bomb.png").write_bytes(png_declaring(20000, 20000))
    (folder / "truncated.png").write_bytes(good[0].read_bytes()[:200])
    (folder / "text.png").write_text("not an image")
    out = tmp_path / "out"
    assert explain(model, folder, "--out", out) == 1         # written, but some were skipped
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 3 and "Traceback" not in err and "decompression bomb" in err
    index = assert_consistent(out)
    assert {e["image"] for e in index["maps"]} == set(map(str, good))
    skipped = {Path(s["image"]).name for s in index["skipped"]}
    assert skipped == {"bomb.png", "truncated.png", "text.png"}
    # nothing readable: a failure, in one line
    assert explain(model, folder / "bomb.png", "--out", tmp_path / "none") == 1
    assert len(capsys.readouterr().err.splitlines()) == 2      # the warning, then the error


@pytest.mark.parametrize("case", ["--out is a file", "--out is inside a file",
                                  "--out is an input folder", "-o in no folder", "-o is a folder"])
def test_bad_output_paths_are_one_line_errors(model, tmp_path, capsys, case):
    make_images(tmp_path / "images", ["a.png"])
    (tmp_path / "file.txt").write_text("x")
    argv = {"--out is a file": ["explain", model, tmp_path / "images", "--out", tmp_path / "file.txt"],
            "--out is inside a file": ["explain", model, tmp_path / "images",
                                       "--out", tmp_path / "file.txt" / "sub"],
            "--out is an input folder": ["explain", model, tmp_path / "images", "--out",
                                         tmp_path / "images"],
            "-o in no folder": ["export", model, "-o", tmp_path / "no" / "such" / "x.onnx"],
            "-o is a folder": ["export", model, "-o", tmp_path]}[case]
    assert cli.main(list(map(str, argv))) == 2
    err = capsys.readouterr().err
    assert err.startswith("onnx-saliency: error:") and len(err.splitlines()) == 1, err
    assert sorted(os.listdir(tmp_path)) == ["file.txt", "images"]
    assert os.listdir(tmp_path / "images") == ["a.png"]


def test_export_writes_atomically(model, tmp_path, monkeypatch, capsys):
    out = tmp_path / "explainer.onnx"
    out.write_bytes(b"an earlier export")
    real_save, real_save_model = onnx.save, onnx.save_model

    def full_disk(proto, path, *args, **kwargs):
        Path(path).write_bytes(proto.SerializeToString()[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save", full_disk)
    monkeypatch.setattr(onnx, "save_model", full_disk)
    assert cli.main(["export", str(model), "-o", str(out)]) == 1
    assert len(capsys.readouterr().err.splitlines()) == 1
    assert os.listdir(tmp_path) == ["explainer.onnx"] and out.read_bytes() == b"an earlier export"
    monkeypatch.setattr(onnx, "save", real_save)
    monkeypatch.setattr(onnx, "save_model", real_save_model)
    assert cli.main(["export", str(model), "-o", str(out)]) == 0
    onnx.checker.check_model(onnx.load(out))
    assert os.listdir(tmp_path) == ["explainer.onnx"]


def test_model_output_reaches_the_explainer(model, tmp_path, monkeypatch):
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs)
        raise cli.SaliencyError("stop")

    monkeypatch.setattr(cli, "Explainer", spy)
    export = ["export", str(model), "-o", str(tmp_path / "x.onnx")]
    assert cli.main([*export, "--model-output", "scores"]) == 1
    assert cli.main(export) == 1
    assert seen[0]["output"] == "scores" and "output" not in seen[1]


def test_files_no_index_lists_are_never_overwritten(model, tmp_path):
    """A user's own x_gradient.npy (no maps.json lists it) survives; this run names around it.
    A hidden file that only looks like a temporary survives the clean-up of temporaries."""
    images = make_images(tmp_path / "in", ["x.png"])
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "x_gradient.npy"
    np.save(mine, np.arange(3.0))
    notes = out / ".notes.part.txt"
    notes.write_text("keep")
    assert explain(model, *images, "--out", out) == 0
    np.testing.assert_array_equal(np.load(mine), np.arange(3.0))
    assert notes.read_text() == "keep"
    listed = [e["npy"] for e in json.loads((out / "maps.json").read_text())["maps"]]
    assert "x_gradient_2.npy" in listed and mine.name not in listed
