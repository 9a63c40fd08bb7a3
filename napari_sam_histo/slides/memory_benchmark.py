"""Peak memory of opening a huge slide the way napari does (``napari-sam-histo slide-memory``).

Writes a synthetic ``size`` x ``size`` RGB pyramidal OME-TIFF (JPEG tiles, reduced levels in
SubIFDs: the layout QuPath and bioformats write, read here through ``tiff_source``), then, in a
fresh Python process so that nothing of the writer is counted, opens it through the napari reader
contribution (``open_image`` + the lazy dask multiscale), reads a few level-0 regions and the
coarsest level whole, and reports peak RSS (``ru_maxrss``) and current RSS after each step, the file
size and the times. This is a measurement, not a test: it prints figures and never asserts.

Encoding 30 GB of pixels with JPEG would take most of an hour on 2 cores, so the file is assembled
from a handful of tiles encoded once (a few tissue-like textures and a background tile): tifffile
writes pre-encoded tile bytes as they are. A 100k x 100k file is written in well under a minute and
is about the size of a real JPEG-compressed 40x scan.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError

TISSUE_VARIANTS = 4
BACKGROUND = (242, 240, 244)
REGION = 1024  # side of each level-0 read: one SAM tile


def _texture(tile: int, seed: int) -> np.ndarray:
    """An H&E-like texture (pink stroma, purple nuclei-dense patches): JPEG sizes like real tissue."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:tile, 0:tile] / tile
    density = sum(np.sin(2 * np.pi * (fx * x + fy * y) + phase)
                  for fx, fy, phase in rng.uniform((-12, -12, 0), (12, 12, 2 * np.pi), (6, 3)))
    density = (density - density.min()) / np.ptp(density) * 0.8 + rng.random((tile, tile)) * 0.2
    pink, purple = np.array([232.0, 150.0, 200.0]), np.array([105.0, 55.0, 150.0])
    return (pink * (1 - density[..., None]) + purple * density[..., None]).astype(np.uint8)


def encode_tiles(tile: int, quality: int = 80) -> list[bytes]:
    """Tissue variants then a background tile, JPEG-encoded by tifffile itself (so the bytes match the
    tags it writes for ``photometric='rgb', compression='jpeg'``: YCbCr JPEG, no shared tables)."""
    import tifffile

    tiles = [_texture(tile, seed) for seed in range(TISSUE_VARIANTS)]
    tiles.append(np.full((tile, tile, 3), BACKGROUND, np.uint8))
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tif:
        for pixels in tiles:
            tif.write(pixels, tile=(tile, tile), **_tile_options(quality))
    data = buffer.getvalue()
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        return [data[p.dataoffsets[0]: p.dataoffsets[0] + p.databytecounts[0]] for p in tif.pages]


def _tile_options(quality: int) -> dict:
    return dict(photometric="rgb", compression="jpeg", compressionargs={"level": quality})


def level_shapes(size: int, tile: int) -> list[tuple[int, int]]:
    """(height, width) per level, halving until a level fits in one tile."""
    levels = 1 + max(0, math.ceil(math.log2(size / tile)))
    return [(math.ceil(size / 2**i), math.ceil(size / 2**i)) for i in range(levels)]


def _tile_bytes(shape: tuple[int, int], tile: int, encoded: list[bytes]):
    """One pre-encoded tile per grid cell: tissue inside a centred ellipse (~40 % of the slide)."""
    rows, cols = math.ceil(shape[0] / tile), math.ceil(shape[1] / tile)
    for r in range(rows):
        for c in range(cols):
            u, v = (c + 0.5) / cols - 0.5, (r + 0.5) / rows - 0.5
            inside = (u / 0.42) ** 2 + (v / 0.32) ** 2 <= 1.0
            yield encoded[(r * 7 + c * 3) % TISSUE_VARIANTS] if inside else encoded[-1]


def write_synthetic_slide(path: str | Path, size: int, tile: int = 512, mpp: float = 0.25,
                          quality: int = 80) -> dict:
    """Write the synthetic OME-TIFF; returns its levels, tile count, bytes and seconds."""
    import tifffile

    _check_sizes(size, tile)
    start = time.perf_counter()
    encoded = encode_tiles(tile, quality)
    shapes = level_shapes(size, tile)
    options = dict(tile=(tile, tile), dtype=np.uint8, **_tile_options(quality))
    metadata = {"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeXUnit": "µm",
                "PhysicalSizeY": mpp, "PhysicalSizeYUnit": "µm"}
    with atomic_path(path, overwrite=True) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
            for i, shape in enumerate(shapes):
                extra = dict(subifds=len(shapes) - 1, metadata=metadata) if i == 0 else dict(subfiletype=1)
                tif.write(_tile_bytes(shape, tile, encoded), shape=(*shape, 3), **extra, **options)
    tiles = sum(math.ceil(h / tile) * math.ceil(w / tile) for h, w in shapes)
    return {"levels": [list(s) for s in shapes], "tiles": tiles, "bytes": Path(path).stat().st_size,
            "seconds": time.perf_counter() - start}


def _check_sizes(size: int, tile: int) -> None:
    if tile < 16 or tile % 16:
        raise InputError(f"--tile {tile}: TIFF tiles must be a multiple of 16 pixels (e.g. 256, 512, 1024).")
    if size < max(256, tile):
        raise InputError(f"--size {size}: the slide must be at least {max(256, tile)} pixels (and one tile) wide.")


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

    from .._napari.reader import get_reader
    from . import lazy, reader, tiff_source  # noqa: F401

    stage("python + imports", time.perf_counter() - start)
    start = time.perf_counter()
    [(data, meta, _)] = get_reader(str(path))(str(path))  # exactly what napari calls on File > Open
    levels = data if meta["multiscale"] else [data]
    stage("open: reader + lazy multiscale", time.perf_counter() - start,
          shapes=[list(level.shape) for level in levels], chunks=sum(level.npartitions for level in levels))
    height, width = levels[0].shape[:2]
    side = min(REGION, height, width)
    rng = np.random.default_rng(0)
    spots = [(height // 2, width // 2), (0, 0)] + [
        tuple(int(v) for v in rng.integers(0, (height - side + 1, width - side + 1))) for _ in range(regions)]
    times = []
    for y, x in spots[:regions]:  # the centre is tissue, the corner background, the rest random
        y, x = min(y, height - side), min(x, width - side)
        start = time.perf_counter()
        np.asarray(levels[0][y: y + side, x: x + side])
        times.append(time.perf_counter() - start)
    stage(f"{len(times)} level-0 reads of {side}x{side}", sum(times), each=times)
    start = time.perf_counter()
    coarsest = np.asarray(levels[-1])
    stage(f"coarsest level whole ({coarsest.shape[1]}x{coarsest.shape[0]})", time.perf_counter() - start)
    source = reader.open_image(path)  # after the figures: which source class napari got
    return {"stages": stages, "mpp": meta["metadata"]["mpp"], "source": type(source).__name__}


def run_slide_memory(size: int = 100_000, tile: int = 512, out_dir: str | Path | None = None,
                     keep: bool = False, log=print) -> dict:
    """Write the synthetic slide, measure it in a fresh process, delete it unless ``keep``."""
    _check_sizes(size, tile)
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
        f"slide-memory: synthetic {size}x{size} RGB OME-TIFF, {report['tile']}px JPEG tiles, "
        f"{len(written['levels'])} levels (SubIFDs), {written['tiles']} tiles",
        f"  file: {written['bytes'] / gb:.2f} GB, written in {written['seconds']:.1f} s"
        f"{' -> ' + report['path'] if report['kept'] else ' (deleted)'}",
        f"  level 0 as one array would be {size * size * 3 / gb:.1f} GB; opened as {report['source']}, "
        f"mpp {report['mpp']}",
        f"  {'step':44} {'time':>9} {'peak RSS':>10} {'RSS now':>10}",
    ]
    for s in report["stages"]:
        rss = f"{s['rss'] / 2**20:7.0f} MiB" if s["rss"] else "       n/a"
        lines.append(f"  {s['stage']:44} {s['seconds']:8.2f}s {s['peak_rss'] / 2**20:6.0f} MiB {rss}")
    opened = report["stages"][1]
    lines.append(f"  lazy multiscale: {len(opened['shapes'])} levels, {opened['chunks']} dask chunks; "
                 f"napari's own dask chunk cache (default 1/4 of RAM) comes on top while panning")
    return "\n".join(lines)


if __name__ == "__main__":  # the measuring child: one JSON line on stdout
    print(json.dumps(measure(sys.argv[1])))
