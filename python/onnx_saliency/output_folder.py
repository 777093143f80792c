"""The output folder of `onnx-saliency explain`: files written atomically, `maps.json` always
listing exactly the complete maps on disk, one run at a time (a lock), an earlier run's maps
refused or replaced, and SIGTERM/SIGINT turned into an orderly stop (OUT_FOLDER_HELP).

Exit codes are the command's: UsageError is 2, CommandError 1, Interrupted 128 + the signal.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import sys
import tempfile
import threading
import zlib
from collections import Counter
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np

INDEX = "maps.json"
LOCK = ".onnx-saliency.lock"
OUT_FOLDER_HELP = (
    "Writes, per image and map, NAME.npy (the raw map, at the model's input size) and NAME.png (an "
    "overlay at the photo's resolution with a colour bar and a caption: class, name, probability), "
    "and maps.json listing them. Each file is written beside its final name and renamed into "
    "place, and maps.json is rewritten after every batch and when SIGTERM or Ctrl-C stops the run: "
    "it lists exactly the complete maps on disk (after a SIGKILL the batch being written may be "
    "missing from it). A folder whose maps.json lists an earlier run's maps is refused unless "
    "--overwrite, which removes the files that maps.json lists and nothing else; a folder another "
    "run is writing is refused. Unreadable images (corrupt, truncated, decompression bombs) are "
    "skipped with a one-line warning each and listed under 'skipped' in maps.json; the other "
    "images' maps are written, and the exit status is 1 when any image was skipped. Inputs that "
    "share a stem (a/x.png and b/x.png, x.png and x.jpg) are named x_png, x_jpg, then x_png_2, "
    "... in input order. Files already in the folder that no "
    "maps.json lists are never overwritten: this run's files take the next free name "
    "(x_gradient_2).")


class UsageError(Exception):
    """Bad flags or paths: exit status 2."""


class CommandError(Exception):
    """The command could not do its work: exit status 1."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT (a BaseException, like KeyboardInterrupt, so no `except Exception` eats it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Signals:
    """While `installed`, SIGTERM and SIGINT raise Interrupted in the main thread, once, and never
    inside a `critical()` block: there they wait for its end, so a batch's files and its maps.json
    entries land together."""

    def __init__(self):
        self._reset()

    def _reset(self):
        self._depth, self._pending, self._fired = 0, None, False

    @contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._reset()
        old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, signal.SIG_DFL if handler is None else handler)

    def _handle(self, signum, frame):
        if self._fired:
            return
        if self._depth:
            self._pending = signum
            return
        self._fired = True
        raise Interrupted(signum)

    @contextmanager
    def critical(self):
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._pending and not self._depth and not self._fired:
            self._fired = True
            raise Interrupted(self._pending)


SIGNALS = _Signals()


_UMASK = threading.Lock()


def _new_file_mode() -> int:
    """The mode open() gives a new file (0o666 less the umask); mkstemp's are 0o600. Reading the
    umask sets it for a moment: the lock keeps PooledRun's writer threads from restoring each
    other's temporary value."""
    with _UMASK:
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic(path: Path):
    """A temporary path beside `path` (same suffix) to write; renamed onto `path` when the block
    succeeds, removed when it fails, so `path` is never seen half-written."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.",
                                   suffix=f".part{path.suffix}")
    except OSError as exc:                  # name the file the user asked for, not the temporary
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    os.fchmod(fd, _new_file_mode())
    os.close(fd)
    try:
        yield Path(tmp)
    except BaseException:
        os.unlink(tmp)
        raise
    os.replace(tmp, path)


@contextmanager
def _locked(folder: Path):
    """Hold an exclusive flock on folder/LOCK, or refuse: another run is writing the folder. The
    kernel drops the lock when its holder dies, so a lock file left by a killed run is no obstacle."""
    path = folder / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise CommandError(f"another onnx-saliency run (pid {holder}) is writing to '{folder}'; "
                               "wait for it to finish or choose another --out") from None
        with suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break           # else the holder removed the file as we waited: lock the new one
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.unlink(path)
        os.close(fd)


def earlier_maps(folder: Path, overwrite: bool) -> list[str]:
    """The files an earlier run's maps.json in `folder` lists (its maps, and those it was still
    removing when killed). Refused (a usage error) unless `overwrite` when it lists maps or
    cannot be read."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out '{folder}' is a file, not a folder")
    index = folder / INDEX
    if not index.exists():
        return []
    try:
        earlier = json.loads(index.read_text())
        maps = [e[kind] for e in earlier["maps"] for kind in ("npy", "png")]
        removing = list(earlier.get("removing", []))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        if overwrite:
            return []
        raise UsageError(f"'{index}' is not an onnx-saliency index ({exc}); pass --overwrite to "
                         "replace it, or choose another --out") from None
    if maps and not overwrite:
        raise UsageError(f"'{folder}' holds an earlier run's {len(maps) // 2} maps (listed in "
                         f"{INDEX}); pass --overwrite to replace them, or choose another --out")
    # only plain .npy/.png names in this folder: a hand-edited index must not reach elsewhere
    return [n for n in maps + removing if isinstance(n, str) and n == Path(n).name
            and n.endswith((".npy", ".png"))]


def _unique(name: str, taken: set[str]) -> str:
    """`name`, else name_2, name_3, ...: the first not in `taken` (then added to it)."""
    candidate, k = name, 1
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    taken.add(candidate)
    return candidate


def output_stems(files: list[Path]) -> list[str]:
    """One distinct name per input image: its stem, or stem_ext (x_png, x_jpg) when another input
    shares the stem, numbered in input order when that is taken too."""
    counts = Counter(f.stem for f in files)
    taken = {stem for stem, n in counts.items() if n == 1}
    return [f.stem if counts[f.stem] == 1 else _unique(f"{f.stem}_{f.suffix[1:].lower()}", taken)
            for f in files]


class Run:
    """This run's entries in its output folder; a map's .npy and .png land together, then its
    entry; `flush` rewrites maps.json."""

    def __init__(self, folder: Path, model: str):
        self.folder, self.model = folder, model
        self.maps: list[dict] = []
        self.skipped: list[dict] = []
        self.removing: list[str] = []     # an earlier run's files, listed until they are gone
        self._taken: set[str] = set()

    def reserve(self, names) -> None:
        """Names this run must not write (files already in the folder)."""
        self._taken.update(names)

    def add(self, stem: str, entry: dict, rgb: np.ndarray, saliency: np.ndarray, fit=None,
            caption: str | None = None, box=None) -> None:
        """Write the map's .npy (as given) and its overlay on the photo `rgb` (placed through the
        viz.Fit `fit`, captioned, with the rectangle `box` in photo pixels drawn on it), then
        list them."""
        entry = self.named(stem, entry)
        write_map(self.folder, entry, rgb, saliency, fit, caption, box)
        self.maps.append(entry)

    def named(self, stem: str, entry: dict) -> dict:
        """`entry` with the names of its .npy and .png (stem_map, the first free: see _unique)."""
        key = re.sub(r"[^\w.-]", "_", entry["map"].replace("@", "_at_"))
        name = _unique(f"{stem}_{key}", self._taken)
        return {**entry, "npy": f"{name}.npy", "png": f"{name}.png"}

    def skip(self, image: Path, reason: str) -> None:
        from tqdm import tqdm
        tqdm.write(f"onnx-saliency: warning: skipped {reason}", file=sys.stderr)
        self.skipped.append({"image": str(image), "error": reason})

    def flush(self, status: str = "running") -> None:
        index = {"model": self.model, "status": status, "maps": self.maps, "skipped": self.skipped}
        if self.removing:
            index["removing"] = self.removing
        with atomic(self.folder / INDEX) as part:
            part.write_text(json.dumps(index, indent=1))


# Pillow's per-row adaptive filters, then deflate's run-length strategy: on overlays of photos
# about 35% less time than the default strategy at level 3, and a 10% smaller file
PNG_OPTIONS = {"compress_level": 3, "compress_type": zlib.Z_RLE}


def write_map(folder: Path, entry: dict, rgb: np.ndarray, saliency: np.ndarray, fit=None,
              caption: str | None = None, box=None) -> None:
    """Run.add's files: entry["npy"] (the map as given) and entry["png"] (its overlay), both
    atomically, the .npy removed when the .png fails. Safe to call from several threads."""
    from .viz import MIN_LONG_SIDE, overlay

    picture = overlay(rgb, saliency, colorbar=True, fit=fit, caption=caption,
                      min_long_side=MIN_LONG_SIDE, box=box)
    with atomic(folder / entry["npy"]) as npy_part, atomic(folder / entry["png"]) as png_part:
        np.save(npy_part, saliency)
        picture.save(png_part, format="PNG", **PNG_OPTIONS)


class PooledRun:
    """A Run whose maps are written by `jobs` threads while the caller explains the next batch.

    `add` (as Run.add) names the map at once, in call order, and queues its writing; `flush`
    ends a batch: it waits for the batch before it to be written, lists that batch's maps in
    order and rewrites maps.json, then starts writing this one. So one batch is written while the
    next is explained, batches are listed whole and in the order a sequential run lists them,
    and maps.json still lists exactly the complete maps on disk (after a SIGKILL the batch being
    written may be missing from it, as in a sequential run). A write that fails stops the batch's unstarted writes;
    the maps written are listed and the error is raised by the next `flush` or `finish`. Use it
    as a context manager: on the way out the batch in flight is written and listed, whatever
    stopped the run (SIGTERM/SIGINT wait for it)."""

    def __init__(self, run: Run, jobs: int):
        from concurrent.futures import ThreadPoolExecutor

        self.run = run
        self._pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="onnx-saliency-writer")
        self._batch: list = []           # (entry, write args) added since the last flush
        self._writing: list = []         # (entry, future) of the batch being written

    def add(self, stem: str, entry: dict, rgb: np.ndarray, saliency: np.ndarray, fit=None,
            caption: str | None = None, box=None) -> None:
        self._batch.append((self.run.named(stem, entry), (rgb, saliency, fit, caption, box)))

    def flush(self) -> None:
        """End the batch: list the previous one once written, then start writing this one."""
        self._wait()
        with SIGNALS.critical():
            self._list()
            batch, self._batch = self._batch, []
            self._writing = [(entry, self._pool.submit(write_map, self.run.folder, entry, *args))
                             for entry, args in batch]

    def finish(self) -> None:
        """Wait for the batch in flight and list it."""
        self._wait()
        with SIGNALS.critical():
            self._list()

    def _wait(self) -> None:
        """Until every write of the batch in flight is done or, after a failure, cancelled."""
        from concurrent.futures import FIRST_EXCEPTION, wait

        futures = [f for _, f in self._writing]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        if pending:                                      # a write failed: stop the others
            for f in pending:
                f.cancel()
            wait(futures)

    def _list(self) -> None:
        """List the batch in flight's written maps (in order), rewrite maps.json, and raise the
        first write's error if one failed."""
        if not self._writing:
            return
        writing, self._writing = self._writing, []
        errors = [f.exception() for _, f in writing if not f.cancelled()]
        self.run.maps += [entry for entry, f in writing
                          if not f.cancelled() and f.exception() is None]
        self.run.flush()
        error = next((e for e in errors if e is not None), None)
        if error is not None:
            raise error

    def __enter__(self) -> "PooledRun":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        try:
            with SIGNALS.critical():
                self._wait()
                try:
                    self._list()
                except Exception:
                    if exc is None:
                        raise                # else the error that stopped the run is reported
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def run_folder(folder: Path, model: str, overwrite: bool):
    """The output folder of one `explain` run (OUT_FOLDER_HELP): locked, an earlier run's maps
    refused or (`overwrite`) removed, maps.json current on every exit."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise UsageError(f"cannot make the --out folder '{folder}': {exc.strerror}") from None
    with _locked(folder):
        run = Run(folder, model)
        run.removing = earlier_maps(folder, overwrite)
        with SIGNALS.critical():
            for suffix in (".npy", ".png", ".json", ".onnx"):   # atomic()'s temporaries, left
                for part in folder.glob(f".*.part{suffix}"):   # by a killed run (none is writing)
                    part.unlink()
            run.flush()                   # this run's index replaces the earlier one, which
            for name in run.removing:     # lists the earlier files until they are removed
                (folder / name).unlink(missing_ok=True)
            run.removing = []
            run.flush()
            # files already there (the user's, or a killed run's unlisted ones) are never
            # overwritten: this run's names step around them (x_gradient_2)
            run.reserve(p.stem for p in folder.iterdir() if p.suffix in (".npy", ".png"))
        status = "failed"
        try:
            yield run
            status = "complete"
        except Interrupted:
            status = "interrupted"
            raise
        finally:
            with SIGNALS.critical():
                run.flush(status)
