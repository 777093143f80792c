"""`onnx-saliency explain` with decoding, explaining and writing overlapped (issue #19, item 4):
the pipelined run writes what a sequential one writes, in the same order; a failing write, a
failing batch or a reader error leaves a consistent folder and one line; SIGINT stops it with
whole batches listed; the reader and the writers stay within their bounds (pipeline.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnx_saliency import cli, output_folder
from onnx_saliency.output_folder import PooledRun, Run
from onnx_saliency.pipeline import Prefetch
from test_cli_output import METHODS, assert_consistent, make_images, png_declaring, written
from test_cli_output import model  # noqa: F401  (the tiny CNN fixture)


def explain(model: Path, *args) -> int:
    return cli.main(["explain", str(model), *map(str, args), *METHODS])


def folder_with_unreadable(folder: Path) -> tuple[list[Path], list[str]]:
    """14 images, batch size 3 in the tests: unreadable files in the middle (one batch wholly
    unreadable), stems shared by x.png and x.jpg; (readable files in order, unreadable names)."""
    names = [f"{i:02d}.png" for i in range(8)] + ["x.jpg", "x.png", "y.jpg", "z.png"]
    good = make_images(folder, names)
    bad = {"03_text.png": b"not an image", "05_cut.png": good[0].read_bytes()[:150],
           "06_bomb.png": png_declaring(20000, 20000), "06_text.png": b"\x89PNG nothing"}
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    return sorted(good), sorted(bad)


def test_pipelined_run_writes_what_a_sequential_run_writes(model, tmp_path, capsys):
    """--jobs 0 (each step in turn, the code path of the sequential CLI) and --jobs 3 and the
    default: the same file names, byte-identical .npy and .png files, the same maps.json (maps
    in input order, method order within an image; skipped files in input order), the same exit
    status and warnings. A file already in --out makes the names step around it."""
    good, bad = folder_with_unreadable(tmp_path / "in")
    results = {}
    for jobs in ("0", "3", None):
        out = tmp_path / f"out{jobs}"
        out.mkdir()
        np.save(out / "00_gradient.npy", np.zeros(2))          # a user's file: never overwritten
        code = explain(model, tmp_path / "in", "--out", out, "--batch-size", "3",
                       *(["--jobs", jobs] if jobs else []))
        err = capsys.readouterr().err
        (out / "00_gradient.npy").unlink()
        index = assert_consistent(out)
        files = {name: (out / name).read_bytes() for name in sorted(os.listdir(out))}
        results[jobs] = (code, err, index, files)
    code, err, index, files = results["0"]
    assert code == 1 and len(err.splitlines()) == len(bad)
    assert [e["image"] for e in index["maps"]] == [str(f) for f in good for _ in range(2)]
    assert [e["map"] for e in index["maps"]] == ["gradient", "input_x_gradient"] * len(good)
    assert [Path(s["image"]).name for s in index["skipped"]] == bad
    assert index["maps"][0]["npy"] == "00_gradient_2.npy"
    assert {"x_jpg_gradient.npy", "x_png_gradient.png"} <= set(files)
    for jobs in ("3", None):
        assert results[jobs][:3] == results["0"][:3], jobs
        assert results[jobs][3].keys() == files.keys(), jobs
        for name, data in files.items():
            assert results[jobs][3][name] == data, (jobs, name)


def no_threads_left(before: int) -> None:
    """The reader and the writer threads have ended (daemon or not)."""
    end = time.monotonic() + 10
    while threading.active_count() > before:
        assert time.monotonic() < end, [t.name for t in threading.enumerate()]
        time.sleep(0.01)


def test_a_failing_write_is_exit_1_one_line_and_a_consistent_index(model, tmp_path, capsys,
                                                                      monkeypatch):
    """A full disk on image 05's first overlay (half of it written) with 3 writer threads and
    batches of 2: exit 1, one line; maps.json lists exactly the maps on disk, status failed: the
    batches before (00-03) whole, nothing of 05's failing map, nothing after 05's batch."""
    make_images(tmp_path / "in", [f"{i:02d}.png" for i in range(8)])
    real_save = Image.Image.save

    def full_disk(self, fp, *args, **kwargs):
        if Path(fp).name.startswith(".05_gradient."):
            Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n partial")
            raise OSError(28, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", full_disk)
    threads = threading.active_count()
    out = tmp_path / "out"
    assert explain(model, tmp_path / "in", "--out", out, "--batch-size", "2", "--jobs", "3") == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "No space left on device" in err, err
    index = assert_consistent(out)
    assert index["status"] == "failed"
    listed = [(Path(e["image"]).stem, e["map"]) for e in index["maps"]]
    whole = [(f"{i:02d}", m) for i in range(4) for m in ("gradient", "input_x_gradient")]
    assert listed[:8] == whole
    assert set(listed[8:]) <= {("04", "gradient"), ("04", "input_x_gradient"),
                               ("05", "input_x_gradient")}
    no_threads_left(threads)


def test_a_failing_batch_lists_the_batch_in_flight(model, tmp_path, capsys, monkeypatch):
    """The explainer failing on the third batch: the second batch, still being written when
    the error reaches the main thread, is written and listed; exit 1, one line."""
    make_images(tmp_path / "in", [f"{i:02d}.png" for i in range(8)])
    real_run = cli.Explainer.run
    calls = []

    def third_fails(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise cli.SaliencyError("the explainer failed")
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(cli.Explainer, "run", third_fails)
    threads = threading.active_count()
    out = tmp_path / "out"
    assert explain(model, tmp_path / "in", "--out", out, "--batch-size", "2", "--jobs", "2") == 1
    assert capsys.readouterr().err.strip() == "onnx-saliency: error: the explainer failed"
    index = assert_consistent(out)
    assert index["status"] == "failed"
    assert [Path(e["image"]).stem for e in index["maps"]] == ["00"] * 2 + ["01"] * 2 + \
        ["02"] * 2 + ["03"] * 2
    no_threads_left(threads)


def test_a_reader_error_reaches_the_main_thread(model, tmp_path, monkeypatch):
    """An unexpected error while decoding image 05 (not an unreadable image: a bug) is raised by
    cli.main itself, as it was before the reader thread; the batches before it are listed."""
    make_images(tmp_path / "in", [f"{i:02d}.png" for i in range(8)])
    real_load = cli._load_image

    def broken(path, *args, **kwargs):
        if path.name == "05.png":
            raise RuntimeError("a bug in decoding")
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(cli, "_load_image", broken)
    threads = threading.active_count()
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="a bug in decoding"):
        explain(model, tmp_path / "in", "--out", out, "--batch-size", "2")
    index = assert_consistent(out)
    assert index["status"] == "failed"
    assert [Path(e["image"]).stem for e in index["maps"]] == [f"{i:02d}" for i in range(4)
                                                              for _ in range(2)]
    no_threads_left(threads)


def test_sigint_lists_whole_batches_in_order(model, tmp_path):
    """Three pipelined runs (batches of 4, 2 writer threads) over 40 images stopped by SIGINT
    once 4, 24 and 44 maps are on disk: exit 130, a consistent folder, status interrupted, and
    the maps listed are those of the first k whole batches, in input order."""
    images = tmp_path / "images"
    make_images(images, [f"{i:02d}.png" for i in range(40)])
    stopped = []
    for k, at in enumerate((4, 24, 44)):
        out = tmp_path / f"run{k}"
        process = subprocess.Popen(
            [sys.executable, "-m", "onnx_saliency.cli", "explain", str(model), str(images),
             "--out", str(out), "--batch-size", "4", "--jobs", "2", *METHODS],
            stderr=subprocess.PIPE, text=True)
        while process.poll() is None and written(out) < at:
            time.sleep(0.002)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        index = assert_consistent(out)
        if process.returncode == 0:                      # it finished first: all of it listed
            assert len(index["maps"]) == 80
            continue
        assert process.returncode == 128 + signal.SIGINT and "Traceback" not in err, err
        assert index["status"] == "interrupted"
        images_listed = [Path(e["image"]).name for e in index["maps"][::2]]
        assert images_listed == [f"{i:02d}.png" for i in range(len(images_listed))]
        assert len(images_listed) % 4 == 0
        stopped.append(len(images_listed))
    assert stopped and min(stopped) < 40, stopped


def test_the_reader_runs_at_most_ahead_items_ahead():
    """A fast producer and a slow consumer: items made but not taken never exceed ahead + 1 (the
    queue's `ahead` and the one the producer waits to put), and reach it (the bound is what
    stops the producer, not its speed); a producer's error arrives at its item; close() stops a
    producer that is still running."""
    for ahead in (1, 2, 4):
        made, gaps = [0], []

        def produce(n=12):
            for i in range(n):
                made[0] += 1
                yield i

        with Prefetch(produce(), ahead=ahead) as reader:
            for taken, item in enumerate(reader, 1):
                time.sleep(0.02)                     # the producer fills the queue meanwhile
                gaps.append(made[0] - taken)
                assert item == taken - 1
        assert max(gaps) == ahead + 1 and taken == 12, gaps

    def failing():
        yield 0
        yield 1
        raise ValueError("at item 2")

    got = []
    with pytest.raises(ValueError, match="at item 2"):
        for item in Prefetch(failing()):
            got.append(item)
    assert got == [0, 1]

    made = [0]

    def endless():
        while True:
            made[0] += 1
            yield made[0]

    reader = Prefetch(endless(), ahead=2)
    next(iter(reader))
    reader.close()
    stopped_at = made[0]
    time.sleep(0.05)
    assert made[0] == stopped_at <= 1 + 2 + 1 and not reader._thread.is_alive()


def test_one_batch_is_written_while_the_next_is_explained(tmp_path, monkeypatch):
    """PooledRun with 3 writer threads: batch 2's writing starts only after batch 1's has ended
    (flush waits for it, so the caller is at most one batch ahead of the writers); batch 1 is
    listed in maps.json when batch 2 starts, batch 2 on the way out; writes run in parallel
    within a batch."""
    events = []
    release = threading.Event()
    running, most = [0], [0]
    lock = threading.Lock()

    def write(folder, entry, *args):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            events.append(("start", entry["npy"]))
        if entry["npy"].startswith("a"):
            release.wait(10)
        time.sleep(0.01)
        (folder / entry["npy"]).write_bytes(b"")
        (folder / entry["png"]).write_bytes(b"")
        with lock:
            running[0] -= 1
            events.append(("end", entry["npy"]))

    monkeypatch.setattr(output_folder, "write_map", write)
    run = Run(tmp_path, "model")
    rgb, saliency = np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.float32)
    with PooledRun(run, jobs=3) as writer:
        for stem in ("a1", "a2", "a3"):
            writer.add(stem, {"map": "gradient"}, rgb, saliency)
        writer.flush()                                  # returns at once: batch a is written
        for stem in ("b1", "b2"):
            writer.add(stem, {"map": "gradient"}, rgb, saliency)
        second = threading.Thread(target=writer.flush)
        second.start()
        time.sleep(0.2)
        assert second.is_alive() and not run.maps     # waits for batch a, which waits for us
        assert sorted(events) == [("start", f"a{i}_gradient.npy") for i in (1, 2, 3)]
        release.set()
        second.join(10)
        listed = json.loads((tmp_path / "maps.json").read_text())["maps"]
        assert [e["npy"] for e in listed] == ["a1_gradient.npy", "a2_gradient.npy",
                                              "a3_gradient.npy"]
    assert [e["npy"] for e in run.maps][3:] == ["b1_gradient.npy", "b2_gradient.npy"]
    first_b = min(i for i, (kind, name) in enumerate(events) if name.startswith("b"))
    assert sum(kind == "end" for kind, name in events[:first_b]) == 3
    assert most[0] == 3
