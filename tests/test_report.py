"""`onnx-saliency explain --report` (issue #20, item 3): one self-contained HTML page, checked as
written and in a real headless browser (Chromium from Debian's packages; skipped, with the reason,
when no Chromium is installed): it loads with no console message, every picture decodes, one
figure per image with the image and every map, the run table; a screenshot is saved in the test's
temporary folder."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnx_saliency import cli

from test_pictures import _photo, _tiny_model

METHODS = ["gradient", "input_x_gradient", "gradcam"]
LABELS = ["cat", "dog", "bird"]
RUN_ROWS = ["model", "methods", "layers", "maps", "input", "images", "skipped", "batch size",
            "model load and graph build", "explain (ONNX Runtime)", "total", "onnx-saliency"]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class Page(HTMLParser):
    """The parts of the page the tests assert on: figures of images and their tiles, every <img>
    src, the run table's row names, scripts and outside references."""

    def __init__(self, text: str):
        super().__init__()
        self.figures: list[dict] = []
        self.images: list[str] = []
        self.rows: list[str] = []
        self.scripts = self.links = 0
        self._in_table = self._in_th = self._in_caption = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure" and a.get("class") == "image":
            self.figures.append({"image": a.get("data-image"), "tiles": [], "caption": ""})
        elif tag == "div" and a.get("class") == "map" and self.figures:
            self.figures[-1]["tiles"].append(a.get("data-map"))
        elif tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "table" and a.get("id") == "run":
            self._in_table = True
        elif tag == "th" and self._in_table:
            self.rows.append("")
            self._in_th = True
        elif tag == "figcaption" and self.figures and not self.figures[-1]["caption"]:
            self._in_caption = True
        elif tag == "script":
            self.scripts += 1
        elif tag in ("link", "iframe", "object", "embed"):
            self.links += 1

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False
        elif tag == "th":
            self._in_th = False
        elif tag == "figcaption":
            self._in_caption = False

    def handle_data(self, data):
        if self._in_th:
            self.rows[-1] += data
        if self._in_caption:
            self.figures[-1]["caption"] += data


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A run on two photos of different aspects and one truncated file (skipped: exit 1), three
    methods (one layer method), class names from a labels file."""
    root = tmp_path_factory.mktemp("report")
    model = _tiny_model(root / "tiny.onnx")
    images = root / "images"
    images.mkdir()
    Image.fromarray(_photo(7, (300, 500))).save(images / "wide.png")
    Image.fromarray(_photo(8, (320, 200))).save(images / "tall.png")
    whole = (images / "wide.png").read_bytes()
    (images / "zz_truncated.png").write_bytes(whole[: len(whole) // 3])
    (root / "labels.txt").write_text("\n".join(LABELS) + "\n")
    page = root / "report.html"
    methods = [a for m in METHODS for a in ("--method", m)]
    status = cli.main(["explain", str(model), str(images), *methods, "--labels",
                       str(root / "labels.txt"), "--out", str(root / "out"), "--report", str(page)])
    assert status == 1                                     # the truncated file was skipped
    index = json.loads((root / "out" / "maps.json").read_text())
    return page, index


def _expected(index) -> dict[str, list[dict]]:
    by_image: dict[str, list[dict]] = {}
    for entry in index["maps"]:
        by_image.setdefault(entry["image"], []).append(entry)
    return by_image


def _assert_page(page: Page, index) -> None:
    """One figure per readable image, in run order, holding the image and every one of its maps,
    captioned with its prediction; the run table's rows; all of it inline."""
    expected = _expected(index)
    assert [f["image"] for f in page.figures] == list(expected) and len(expected) == 2
    for figure, (image, entries) in zip(page.figures, expected.items()):
        assert figure["tiles"] == ["image"] + [e["map"] for e in entries]
        assert len(entries) == len(METHODS)
        e = entries[0]
        assert f'class {e["target"]}' in figure["caption"]
        assert LABELS[e["target"]] in figure["caption"]
        assert f'probability {e["probability"]:.3f}' in figure["caption"]
    assert len(page.images) == sum(1 + len(v) for v in expected.values())
    assert page.rows == RUN_ROWS
    assert page.scripts == 0 and page.links == 0


def test_report_is_one_self_contained_page(report):
    path, index = report
    text = path.read_text("utf-8")
    page = Page(text)
    _assert_page(page, index)
    assert "http://" not in text and "https://" not in text and "file:" not in text
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.load()
            assert im.format == "PNG" and max(im.size) <= 640
    assert "zz_truncated.png" in text and 'id="skipped"' in text
    assert not list(path.parent.glob(".report.*"))           # no temporary left beside it


def test_report_path_errors_are_usage_errors(tmp_path, capsys):
    model = _tiny_model(tmp_path / "tiny.onnx")
    Image.fromarray(_photo(1, (20, 30))).save(tmp_path / "p.png")
    for report, words in [(tmp_path / "nowhere" / "r.html", "no such folder"),
                          (tmp_path, "is a folder")]:
        assert cli.main(["explain", str(model), str(tmp_path / "p.png"), "--out",
                         str(tmp_path / "out"), "--report", str(report)]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()                  # refused before any work


def _browser() -> str:
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium binary (chromium, chromium-browser or google-chrome) on PATH; "
                "install it with `apt-get install -y chromium` (.ci/run does)")


def _chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu",
                           "--no-first-run", f"--user-data-dir={profile}",
                           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
                           *args], capture_output=True, text=True, timeout=120)


PROBE = ('<script>addEventListener("load", () => { const all = [...document.images]; '
         'document.body.dataset.decoded = all.filter(i => i.complete && i.naturalWidth > 0)'
         '.length; document.body.dataset.images = all.length; });</script>')


def test_report_in_headless_chromium(report, tmp_path):
    """The page as Chromium builds it: no console message about the page (it has no script, so
    any is an error: a bad resource, a parse failure), the DOM holds every figure, map and row,
    every <img> decodes (a copy of the page with a probe script counts naturalWidth > 0), and a
    screenshot with the pictures on it."""
    binary = _browser()
    path, index = report
    url = path.resolve().as_uri()
    dom = _chromium(binary, tmp_path / "profile", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines()
               if ("CONSOLE" in line or "Uncaught" in line) and path.name in line]
    assert not console, console
    _assert_page(Page(dom.stdout), index)

    probe = tmp_path / "probe.html"
    probe.write_text(path.read_text("utf-8").replace("</body>", PROBE + "</body>"), "utf-8")
    probed = _chromium(binary, tmp_path / "profile", "--dump-dom", probe.as_uri())
    n = len(Page(path.read_text("utf-8")).images)
    assert f'data-decoded="{n}"' in probed.stdout and f'data-images="{n}"' in probed.stdout, \
        probed.stdout[-500:]

    shot = tmp_path / "report.png"
    taken = _chromium(binary, tmp_path / "profile", f"--screenshot={shot}",
                      "--window-size=1280,1600", url)
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB")).astype(int)
    assert pixels.shape[:2] == (1600, 1280)
    coloured = (pixels.max(2) - pixels.min(2)) > 60            # heat-map colours, not text
    assert coloured.mean() > 0.05, coloured.mean()
    print(f"screenshot: {shot}")
