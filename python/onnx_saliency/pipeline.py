"""Overlapping the steps of `onnx-saliency explain` on a folder: a reader thread decodes and fits
the next batches (`Prefetch`) while the main thread explains one (ONNX Runtime releases the GIL)
and a pool of writer threads writes the previous one's maps (output_folder.PooledRun: NumPy,
Pillow's resizing and zlib release the GIL for the heavy part).

Memory stays bounded whatever the number of images: at most `ahead` decoded batches wait in the
reader's queue, one more is being decoded, one explained and one written, so ahead + 3 batches
are held at once (5 with the CLI's ahead = 2).
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Iterable, Iterator

AHEAD = 2   # decoded batches the reader may hold ready


def default_jobs() -> int:
    """The writer threads `explain` uses unless --jobs says: one per CPU, at most 4 (the PNG
    encoding and blending scale to a few threads; the explainer's ONNX Runtime threads share the
    same cores)."""
    return max(1, min(4, os.cpu_count() or 1))


class _Failed:
    """The reader's exception, handed to the consumer."""

    def __init__(self, exc: BaseException):
        self.exc = exc


_END = object()


class Prefetch:
    """Iterate over `items` (any iterable, e.g. a generator that decodes a batch per item),
    produced in a background thread at most `ahead` items ahead of the consumer: the producer
    blocks once `ahead` items wait in the queue, so at most ahead + 1 items exist that the
    consumer has not taken (the queue's and the one the producer holds). The producer's exception
    is raised in the consumer, at the item where it happened. `threaded=False` iterates in the
    consumer's thread (no overlap). Close it (or use it as a context manager) to stop the
    producer early."""

    def __init__(self, items: Iterable, ahead: int = AHEAD, threaded: bool = True):
        if ahead < 1:
            raise ValueError(f"ahead must be at least 1, not {ahead}")
        self._items, self._threaded = items, threaded
        self._queue: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._thread = None
        if threaded:
            self._thread = threading.Thread(target=self._produce, name="onnx-saliency-reader",
                                            daemon=True)
            self._thread.start()

    def _put(self, item) -> bool:
        """Put `item`, waiting for room; False when the consumer closed the pipeline."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
        except BaseException as exc:         # noqa: BLE001  (handed to the consumer)
            self._put(_Failed(exc))
            return
        self._put(_END)

    def __iter__(self) -> Iterator:
        if not self._threaded:
            yield from self._items
            return
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item

    def close(self) -> None:
        """Stop the producer (it ends at its next item) and wait for it (a few seconds at most:
        it is a daemon thread, left behind when stuck on a read)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        close = getattr(self._items, "close", None)   # a generator's cleanup, in this thread
        if close is not None and (self._thread is None or not self._thread.is_alive()):
            close()

    def __enter__(self) -> "Prefetch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
