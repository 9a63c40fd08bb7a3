"""A slide's display levels for napari, read chunk by chunk on background threads.

napari slices a multiscale image on its GUI thread: whatever array it is given, the chunks in view
are read there before it draws (a dask level computes them on the spot). On a slide that froze
napari for 0.3-1.9 s as it opened (its overview: every pixel of the slide decoded and resized) and
each time a pan or zoom reached chunks not read yet. A ``ProgressiveLevel`` answers napari at
once: the chunks already read, white (the background outside the tissue) where they are not, and
asks its ``ChunkReader`` for those; the napari side redraws the layer when ``generation`` moves.

Written here because napari ships asynchronous slicing only as an experimental global setting
(changing it for the user's whole napari is not ours to do) and dask has no way to return part of
a result; the reader threads take the newest requests first, so a fast pan does not queue the
chunks it has left behind ahead of those now in view.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque

import numpy as np

from .boxes import TileBox
from .lazy import chunk_box, level_geometry
from .source import ImageSource

LOG = logging.getLogger(__name__)
WHITE = 255
CHUNK = 512
CACHE_BYTES = 256 * 2**20  # read chunks kept per slide (a 1920x1080 view at one level is ~8 MB)
MAX_PENDING = 256  # chunk requests kept waiting; the oldest are dropped (napari asks again)
READERS = 2


class ChunkReader:
    """Reads chunks for the levels of one slide on ``READERS`` daemon threads, newest request first,
    into one LRU cache of ``CACHE_BYTES``; ``generation`` counts the chunks read (and failed)."""

    def __init__(self, source: ImageSource, cache_bytes: int = CACHE_BYTES, readers: int = READERS) -> None:
        self.source = source
        self.cache_bytes = cache_bytes
        self.generation = 0
        self.errors: list[str] = []
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._pending: deque[tuple] = deque()
        self._queued: set[tuple] = set()
        self._failed: set[tuple] = set()  # never asked again: a damaged chunk stays white
        self._closed = False
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._threads = [threading.Thread(target=self._work, daemon=True, name=f"read {source.name} chunks")
                         for _ in range(readers)]
        for thread in self._threads:
            thread.start()

    def get(self, key: tuple) -> np.ndarray | None:
        with self._lock:
            pixels = self._cache.get(key)
            if pixels is not None:
                self._cache.move_to_end(key)
            return pixels

    def request(self, key: tuple, box: TileBox, offset: tuple[int, int] = (0, 0),
                into: tuple[np.ndarray, int, int] | None = None) -> None:
        """Read ``box`` as chunk ``key`` (its pixels from row, column ``offset`` on) unless it is
        read or waiting already; ``into`` (array, row, column): written there instead of cached."""
        with self._lock:
            if self._closed or key in self._cache or key in self._queued or key in self._failed:
                return
            self._pending.append((key, box, offset, into))
            self._queued.add(key)
            while len(self._pending) > MAX_PENDING:
                old = self._pending.popleft()[0]
                self._queued.discard(old)
            self._wake.notify()

    def idle(self) -> bool:
        """Nothing waiting or being read."""
        with self._lock:
            return not self._queued

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until nothing is waiting or being read (scripts and tests); True when so."""
        deadline = time.monotonic() + timeout
        while not self.idle():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop reading and drop the cache (the slide's layer is gone); later requests are ignored."""
        with self._lock:
            self._closed = True
            self._pending.clear()
            self._queued.clear()
            self._cache.clear()
            self._bytes = 0
            self._wake.notify_all()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                key, box, (dy, dx), into = self._pending.pop()  # newest first
            try:
                pixels = self.source.read_region(box)[dy:, dx:]
            except Exception as err:  # noqa: BLE001 - a damaged chunk stays white; the annotator's reads say why
                LOG.warning("%s: chunk %s could not be read: %s", self.source.name, box.key(), err)
                pixels = None
                self.errors.append(f"{box.key()}: {err}")
            with self._lock:
                self._queued.discard(key)
                if pixels is None:
                    self._failed.add(key)
                elif self._closed:
                    return
                elif into is not None:
                    array, y, x = into
                    array[y: y + pixels.shape[0], x: x + pixels.shape[1]] = pixels
                else:
                    self._store(key, pixels)
                self.generation += 1

    def _store(self, key: tuple, pixels: np.ndarray) -> None:
        self._cache[key] = pixels
        self._bytes += pixels.nbytes
        while self._bytes > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._bytes -= old.nbytes


class ProgressiveLevel:
    """Level ``level`` of the reader's slide (resized to ``downsample`` when that is coarser than
    the level's own) as an array napari can slice: ``shape``, ``dtype``, ``__getitem__`` with
    slices or integers on the first two axes. ``read_all`` (the overview napari draws first, and
    keeps as the layer's thumbnail source): every chunk asked for at once and read into one
    white-initialised array, which ``__array__`` returns and the reads keep filling."""

    def __init__(self, reader: ChunkReader, index: int, level: int, downsample: float | None = None,
                 chunk: int = CHUNK, read_all: bool = False) -> None:
        self.downsample, self.virtual, width, height = level_geometry(reader.source, level, downsample)
        self.level, self.index, self.chunk, self.reader = level, index, chunk, reader
        self.shape = (height, width, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self.size = height * width * 3
        self._whole = np.full(self.shape, WHITE, np.uint8) if read_all else None
        if read_all:
            for top in range(0, height, chunk):
                for left in range(0, width, chunk):
                    bottom, right = min(top + chunk, height), min(left + chunk, width)
                    box, offset = chunk_box(level, self.downsample, self.virtual, top, bottom, left, right)
                    reader.request((index, top, left), box, offset, into=(self._whole, top, left))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        spans, rest = [], []
        for axis, item in enumerate(key[:2]):
            if isinstance(item, slice):
                start, stop, step = item.indices(self.shape[axis])
                stop = max(stop, start)
                spans.append((start, stop))
                rest.append(slice(None, None, step) if step != 1 else slice(None))
            else:
                index = int(item) + (self.shape[axis] if int(item) < 0 else 0)
                if not 0 <= index < self.shape[axis]:
                    raise IndexError(f"index {item} is out of bounds for axis {axis} of size {self.shape[axis]}")
                spans.append((index, index + 1))
                rest.append(0)
        while len(spans) < 2:
            spans.append((0, self.shape[len(spans)]))
            rest.append(slice(None))
        (y0, y1), (x0, x1) = spans
        pixels = self.region(y0, y1, x0, x1)
        return pixels[tuple(rest) + tuple(key[2:])]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        pixels = self._whole if self._whole is not None else self.region(0, self.shape[0], 0, self.shape[1])
        return pixels if dtype is None else pixels.astype(dtype)

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels [y0:y1, x0:x1]: the chunks read so far, white elsewhere (those are requested)."""
        if self._whole is not None:
            return self._whole[y0:y1, x0:x1]
        out = np.full((y1 - y0, x1 - x0, 3), WHITE, np.uint8)
        height, width = self.shape[:2]
        for top in range(y0 - y0 % self.chunk, y1, self.chunk):
            for left in range(x0 - x0 % self.chunk, x1, self.chunk):
                bottom, right = min(top + self.chunk, height), min(left + self.chunk, width)
                key = (self.index, top, left)
                pixels = self.reader.get(key)
                if pixels is None:
                    self.reader.request(key, *chunk_box(self.level, self.downsample, self.virtual, top, bottom, left, right))
                    continue
                ty0, ty1, tx0, tx1 = max(y0, top), min(y1, bottom), max(x0, left), min(x1, right)
                out[ty0 - y0:ty1 - y0, tx0 - x0:tx1 - x0] = pixels[ty0 - top:ty1 - top, tx0 - left:tx1 - left]
        return out
