"""Peak memory of opening a huge slide the way napari does (``napari-sam-histo slide-memory``).

Writes a synthetic ``size`` x ``size`` RGB pyramidal OME-TIFF (``slides.synthetic_slide``), then,
in a fresh Python process so that nothing of the writer is counted, opens it through the napari
reader contribution (``open_image`` + the lazy dask multiscale), reads a few level-0 regions and
the coarsest level whole, and reports peak RSS (``ru_maxrss``) and current RSS after each step, the
file size and the times. This is a measurement, not a test: it prints figures and never asserts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..slides.progressive_level import CACHE_BYTES
from ..slides.synthetic_slide import check_sizes, write_synthetic_slide

REGION = 1024  # side of each level-0 read: one SAM tile


def _rss_bytes() -> int | None:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        pass
    try:
        import os

        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _peak_rss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def measure(path: str | Path, regions: int = 4) -> dict:
    """Run in a fresh process: open ``path`` as napari would and read; RSS after each step."""
    stages = []

    def stage(name: str, seconds: float, **extra) -> None:
        stages.append({"stage": name, "seconds": seconds, "peak_rss": _peak_rss_bytes(), "rss": _rss_bytes(), **extra})

    start = time.perf_counter()
    import dask.array  # noqa: F401  (imports are the baseline, not the cost of opening)
    import openslide  # noqa: F401
    import tifffile  # noqa: F401
    import zarr  # noqa: F401

    from ..slides import lazy, reader, tiff_source  # noqa: F401
    from ..slides.progressive_level import ProgressiveLevel
    from .slide_layer_data import slide_layer_data

    stage("python + imports", time.perf_counter() - start)
    start = time.perf_counter()
    # what napari's File > Open gets from the plugin's reader (less the Qt timer that redraws the
    # layer as chunks, read on threads, arrive)
    [(data, meta, _)] = slide_layer_data(str(path))
    levels = data if meta["multiscale"] else [data]
    stage("open: reader (levels read as napari asks)", time.perf_counter() - start,
          shapes=[list(level.shape) for level in levels])

    def read(level, y: int, x: int, side: int) -> np.ndarray:
        """As napari's view shows it once read: asked for, waited for, asked again."""
        if isinstance(level, ProgressiveLevel):
            level[y: y + side, x: x + side]
            level.reader.wait_idle()
        return np.asarray(level[y: y + side, x: x + side])

    height, width = levels[0].shape[:2]
    side = min(REGION, height, width)
    rng = np.random.default_rng(0)
    spots = [(height // 2, width // 2), (0, 0)] + [
        tuple(int(v) for v in rng.integers(0, (height - side + 1, width - side + 1))) for _ in range(regions)]
    times = []
    for y, x in spots[:regions]:  # the centre is tissue, the corner background, the rest random
        y, x = min(y, height - side), min(x, width - side)
        start = time.perf_counter()
        read(levels[0], y, x, side)
        times.append(time.perf_counter() - start)
    stage(f"{len(times)} level-0 reads of {side}x{side}", sum(times), each=times)
    start = time.perf_counter()
    coarsest = read(levels[-1], 0, 0, max(levels[-1].shape[:2]))  # read since the reader returned
    stage(f"coarsest level whole ({coarsest.shape[1]}x{coarsest.shape[0]})", time.perf_counter() - start)
    source = reader.open_image(path)  # after the figures: which source class napari got
    return {"stages": stages, "mpp": meta["metadata"]["mpp"], "source": type(source).__name__}


def run_slide_memory(size: int = 100_000, tile: int = 512, out_dir: str | Path | None = None,
                     keep: bool = False, log=print) -> dict:
    """Write the synthetic slide, measure it in a fresh process, delete it unless ``keep``."""
    check_sizes(size, tile)
    folder = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="napari-sam-histo-slide-memory-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"synthetic-{size}px-{tile}.ome.tif"
    needed = 0.12 * size * size + 2**28  # measured ~0.106 byte/px (40 % tissue, JPEG, pyramid) + margin
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise InputError(f"{folder}: {free / 1e9:.1f} GB free, about {needed / 1e9:.1f} GB needed; use another --out.")
    try:
        log(f"writing {path} ({size}x{size} RGB, {tile}px JPEG tiles) ...")
        written = write_synthetic_slide(path, size, tile)
        log("measuring in a fresh process ...")
        result = subprocess.run([sys.executable, "-m", __name__, str(path)], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"the measuring process failed (exit {result.returncode}):\n{result.stderr}")
        measured = json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        if not keep:
            path.unlink(missing_ok=True)
            if not out_dir:
                shutil.rmtree(folder, ignore_errors=True)
    return {"path": str(path), "kept": keep, "size": size, "tile": tile, "written": written, **measured}


def format_report(report: dict) -> str:
    gb = 1e9
    size, written = report["size"], report["written"]
    lines = [
        (f"slide-memory: synthetic {size}x{size} RGB OME-TIFF, {report['tile']}px JPEG tiles, "
         f"{len(written['levels'])} levels (SubIFDs), {written['tiles']} tiles"),
        (f"  file: {written['bytes'] / gb:.2f} GB, written in {written['seconds']:.1f} s"
         f"{' -> ' + report['path'] if report['kept'] else ' (deleted)'}"),
        (f"  level 0 as one array would be {size * size * 3 / gb:.1f} GB; opened as {report['source']}, "
         f"mpp {report['mpp']}"),
        f"  {'step':44} {'time':>9} {'peak RSS':>10} {'RSS now':>10}",
    ]
    for s in report["stages"]:
        rss = f"{s['rss'] / 2**20:7.0f} MiB" if s["rss"] else "       n/a"
        lines.append(f"  {s['stage']:44} {s['seconds']:8.2f}s {s['peak_rss'] / 2**20:6.0f} MiB {rss}")
    opened = report["stages"][1]
    lines.append(f"  multiscale: {len(opened['shapes'])} levels, each chunk read when napari draws it; the chunks read "
                 f"are kept in a cache of at most {CACHE_BYTES / 2**20:.0f} MiB per slide while panning")
    return "\n".join(lines)


if __name__ == "__main__":  # the measuring child: one JSON line on stdout
    print(json.dumps(measure(sys.argv[1])))
