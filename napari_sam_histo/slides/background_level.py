"""A slide's coarsest display level, read on a background thread.

napari slices a new multiscale image on its GUI thread as the layer is created, starting with the
whole coarsest level; read through dask there, a one-level slide's 1/4 overview (every pixel of the
slide decoded and resized) froze napari for 0.3-1.4 s as the slide opened. This level is an array
napari can slice (``shape``, ``dtype``, ``__getitem__``) whose pixels start white, the background
outside the tissue, and are filled chunk by chunk from a thread, so the layer appears at once and
its overview a moment later (the caller refreshes the layer when ``done`` is set).

Written here rather than through napari's asynchronous slicing, which napari ships as an
experimental global setting.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from .boxes import TileBox
from .rgb import MIN_SIDE
from .source import ImageSource

LOG = logging.getLogger(__name__)
WHITE = 255
READ_CHUNK = 512  # display pixels per read: one read_region call each, as the dask levels read


class BackgroundLevel:
    """Level ``level`` of ``source`` (resized to ``downsample`` when that is coarser than the
    level's own), read whole on a background thread into white-initialised pixels."""

    def __init__(self, source: ImageSource, level: int, downsample: float | None = None) -> None:
        own = source.level_downsamples[level]
        self.virtual = downsample is not None and abs(downsample / own - 1) > 1e-6
        self.downsample = downsample if self.virtual else own
        self.level = level
        width, height = source.size_at(self.downsample, level) if self.virtual else source.level_dimensions[level]
        self._pixels = np.full((height, width, 3), WHITE, np.uint8)
        self.done = threading.Event()
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._read, args=(source,), daemon=True,
                                        name=f"read {source.name} overview")
        self._thread.start()

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._pixels.shape

    @property
    def dtype(self) -> np.dtype:
        return self._pixels.dtype

    @property
    def ndim(self) -> int:
        return 3

    @property
    def size(self) -> int:
        return self._pixels.size

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        return self._pixels[key]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self._pixels if dtype is None else self._pixels.astype(dtype)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every chunk is read (tests and scripts); True when it was."""
        return self.done.wait(timeout)

    def _read(self, source: ImageSource) -> None:
        height, width = self.shape[:2]
        try:
            for y0 in range(0, height, READ_CHUNK):
                for x0 in range(0, width, READ_CHUNK):
                    y1, x1 = min(y0 + READ_CHUNK, height), min(x0 + READ_CHUNK, width)
                    # a chunk a few pixels thin is read as a MIN_SIDE-wide box reaching back, and cropped
                    ry0, rx0 = max(0, min(y0, y1 - MIN_SIDE)), max(0, min(x0, x1 - MIN_SIDE))
                    box = TileBox(self.level, rx0, ry0, x1 - rx0, y1 - ry0, self.downsample, self.virtual)
                    self._pixels[y0:y1, x0:x1] = source.read_region(box)[y0 - ry0:, x0 - rx0:]
        except Exception as err:  # noqa: BLE001 - a damaged overview stays white; the finer levels say why
            LOG.warning("The overview of %s could not be read: %s", source.name, err)
            self.error = err
        finally:
            self.done.set()
