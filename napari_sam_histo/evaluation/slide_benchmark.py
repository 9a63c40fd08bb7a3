"""The slide-scale benchmark: RITM's clicker on whole regions, through the Annotator engine.

The patch benchmark cannot see tiles, levels or seams. Here each region (an image and its mask,
e.g. ``bcss-breast-40x``: 0.25 µm/px, several 1024-px tiles wide) is written as a pyramidal
OME-TIFF (levels 1 and 1/4, like a scanner's), opened by our reader and annotated by the
``Annotator`` exactly as the dock drives it (tile choice, working levels, blending); the clicker
places each click at level 0 on the whole region and IoU is computed over the whole region at
level 0. Modes (what the simulated pathologist does):

* ``level0``: every click at level 0 (the dock's fixed "level 0"), without continuation: the
  Annotator as it was before working levels and continuation (blending included).
* ``level0+grow``: the same with continuation (the object grows into neighbouring tiles).
* ``auto``: every click at the level "auto" picks for a view that shows the whole region (a
  canvas of ``VIEW`` screen pixels with a margin): the pathologist outlines at overview.
* ``refine``: the first click like ``auto``; for each later click the pathologist zooms to the
  error being fixed (the view spans twice that error's extent, the connected false-negative or
  false-positive region under the clicker's point), never coarser than ``auto``, so border
  corrections are made at a higher magnification and refine the coarse object.

Before every click the annotator's ``view`` is set to the level-0 box the simulated pathologist
looks at, as the dock sets it from its canvas: the view showing the whole region (``level0``,
``level0+grow``, ``auto`` and ``refine``'s first click: the dock's view after opening, and the view
auto picks its level for) or, for ``refine``'s later clicks, the zoomed view centred on the click.
The object grows by itself only where a tile border cuts it inside that view, and a first tile
that spans the view uses the "unflooded" first-mask rule (``engine.object_tiles``).

``auto``, ``refine`` and ``level0+grow`` run with the annotator's ``continuation`` on: after each
click the benchmark waits for the object to stop growing (``wait_continuation``) before the next
click (the dock lets it run in the background meanwhile).

Small objects next to each other, composed into slides from such regions: ``slide_small_objects``.

The clicker applies RITM's rule on the masks subsampled by ``CLICK_GRID`` (4: the click is the
centre of a 4x4 block of level-0 pixels): on a 10-Mpx region its two distance transforms cost 2.5 s
per click at full resolution, 16 times less so; IoU is computed at full level-0 resolution.

Reported per mode: NoC@80/85/90 (up to ``max_clicks``, 50), mIoU per click, seconds to the first
mask (encoder included), encoder calls, a seam measure: IoU inside a band around the inner
borders of the final object's tiles against IoU elsewhere (pixels pooled over regions), the
collapses (clicks after which the IoU fell below half the best before it, ``metrics.collapses``,
and the regions with one) and the tile decodes that showed an alternative to SAM's usual one
because it broke the clicks (``engine.session``).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, write_csv, write_png, write_text
from ..errors import InputError
from .clicker import next_click
from .metrics import DEFAULT_THRESHOLDS, collapses, iou, miou_per_click, noc

MODES = ("level0", "auto", "refine", "level0+grow")
DEFAULT_MODES = ("level0", "auto", "refine")
GROWING = ("auto", "refine", "level0+grow")
VIEW = (1280, 960)  # the canvas, in screen pixels, napari leaves beside two docks on a 1920x1080 screen
VIEW_MARGIN = 1.05
SEAM_BAND = 0.02  # half-width of the seam band, as a fraction of a tile's side (level-0 px)
CLICK_GRID = 4  # the clicker works on every 4th level-0 pixel (see the module)


@dataclass
class Region:
    stem: str
    image: Path
    mask: Path
    mpp: float | None


@dataclass
class RegionRun:
    stem: str
    mode: str
    ious: list[float] = field(default_factory=list)
    downsamples: list[float] = field(default_factory=list)  # the working level of each click
    first_mask_s: float = 0.0
    seconds: float = 0.0
    encoder_calls: int = 0
    seam: dict = field(default_factory=dict)  # band / rest intersections and unions
    fallbacks: int = 0  # the final object's tile decodes that show an alternative (``engine.session``)
    grown: int = 0  # tiles the final object grew into by itself (continuation)
    views: list = field(default_factory=list)  # the level-0 view (x0, y0, x1, y1) set before each click
    final_mask: np.ndarray | None = None  # level-0 prediction after the last click (for the figure)
    final_boxes: tuple = ()


def find_regions(folder: str | Path, stride: int = 1) -> list[Region]:
    """A region dataset's pairs (``evaluation.dataset.find_pairs``: images/ + masks/ or a manifest),
    every ``stride``-th; the pixel size from a manifest's ``mpp`` column when it has one."""
    from .dataset import find_pairs

    folder = Path(folder)
    mpps = {}
    manifest = folder / "manifest.csv"
    if manifest.is_file():
        with open(manifest, newline="") as stream:
            mpps = {row["stem"]: float(row["mpp"]) for row in csv.DictReader(stream) if row.get("mpp")}
    return [Region(p.stem, p.image_path, p.mask_path, mpps.get(p.stem))
            for p in find_pairs(folder, stride=stride) if p.mask_path is not None]


def write_pyramid(path: Path, rgb: np.ndarray, mpp: float | None, downsamples=(1, 4), tile: int = 512) -> Path:
    """``rgb`` as a tiled pyramidal OME-TIFF with the given levels (atomically)."""
    import tifffile
    from PIL import Image

    levels = [rgb]
    for d in downsamples[1:]:
        height, width = rgb.shape[:2]
        levels.append(np.asarray(Image.fromarray(rgb).resize((max(width // d, 1), max(height // d, 1)),
                                                             Image.BILINEAR)))
    metadata = {"axes": "YXS"}
    if mpp:
        metadata.update(PhysicalSizeX=mpp, PhysicalSizeXUnit="µm", PhysicalSizeY=mpp, PhysicalSizeYUnit="µm")
    with atomic_path(path, overwrite=True) as tmp:
        with tifffile.TiffWriter(tmp, ome=True) as tif:
            for i, level in enumerate(levels):
                extra = {"subifds": len(levels) - 1, "metadata": metadata} if i == 0 else {"subfiletype": 1}
                tif.write(level, tile=(tile, tile), compression="zlib", photometric="rgb", **extra)
    return path


def level0_mask(state, shape: tuple[int, int]) -> np.ndarray:
    """The annotator state's mask rasterised at level 0 over a ``shape`` slide (nearest)."""
    out = np.zeros(shape, bool)
    if state.mask is None:
        return out
    (x, y), mask = state.mask
    d = state.downsample
    height, width = shape
    rows = np.floor((np.arange(height) + 0.5) / d - y).astype(np.int64)
    cols = np.floor((np.arange(width) + 0.5) / d - x).astype(np.int64)
    row_ok = (rows >= 0) & (rows < mask.shape[0])
    col_ok = (cols >= 0) & (cols < mask.shape[1])
    out[np.ix_(row_ok, col_ok)] = mask[np.ix_(rows[row_ok], cols[col_ok])]
    return out


def seam_band(boxes, shape: tuple[int, int], tile: int) -> np.ndarray:
    """Level-0 pixels within ``SEAM_BAND`` of a tile side of an inner border of ``boxes``."""
    height, width = shape
    band = np.zeros(shape, bool)
    for box in boxes:
        d = box.downsample
        x0, y0, w, h = box.x * d, box.y * d, box.width * d, box.height * d
        half = max(int(round(SEAM_BAND * tile * d)), 2)
        ys, ye = int(max(y0, 0)), int(min(y0 + h, height))
        xs, xe = int(max(x0, 0)), int(min(x0 + w, width))
        for edge in (x0, x0 + w):
            if half < edge < width - half:
                band[ys:ye, int(edge) - half: int(edge) + half] = True
        for edge in (y0, y0 + h):
            if half < edge < height - half:
                band[int(edge) - half: int(edge) + half, xs:xe] = True
    return band


def _region_view(shape: tuple[int, int]) -> tuple[float, float]:
    """A view (level-0 width, height) of the canvas' aspect that shows a ``shape`` (height, width)
    area with a margin."""
    height, width = shape
    scale = max(width / VIEW[0], height / VIEW[1]) * VIEW_MARGIN
    return VIEW[0] * scale, VIEW[1] * scale


def _centred(x: float, y: float, width: float, height: float) -> tuple[float, float, float, float]:
    """The level-0 box (x0, y0, x1, y1) of a ``width x height`` view centred on (x, y)."""
    return x - width / 2, y - height / 2, x + width / 2, y + height / 2


def _error_extent(target: np.ndarray, prediction: np.ndarray, row: int, col: int, positive: bool) -> float:
    """The larger side (level-0 px) of the error region under the clicker's point."""
    from scipy import ndimage

    error = (target & ~prediction) if positive else (~target & prediction)
    labels, _ = ndimage.label(error)
    index = labels[row, col]
    if index == 0:
        return 1.0
    rows, cols = ndimage.find_objects((labels == index).astype(np.int32))[0]
    return float(max(rows.stop - rows.start, cols.stop - cols.start))


def run_region(annotator, target: np.ndarray, mode: str, max_clicks: int = 50,
               stop_iou: float | None = 0.9, region: tuple[float, float, float, float] | None = None) -> RegionRun:
    """Click on one region in ``mode`` until ``stop_iou`` or ``max_clicks`` (see the module).
    ``region``: the level-0 box (x0, y0, x1, y1) of the area the pathologist opens (default: all of
    ``target``); the overview view shows it whole. The object grows by itself when the annotator's
    ``continuation`` is on (``run_benchmark`` turns it on for ``GROWING``)."""
    if mode not in MODES:
        raise InputError(f"Unknown mode {mode!r}; choose one of {', '.join(MODES)}.")
    run = RegionRun(stem=annotator.source.name, mode=mode)
    shape = target.shape
    if region is None:
        region = (0.0, 0.0, float(shape[1]), float(shape[0]))
    region_size = _region_view((region[3] - region[1], region[2] - region[0]))
    region_view = _centred((region[0] + region[2]) / 2, (region[1] + region[3]) / 2, *region_size)
    prediction = np.zeros(shape, bool)
    g = CLICK_GRID
    coarse_target = target[g // 2::g, g // 2::g]
    clicked = np.zeros(coarse_target.shape, bool)
    overview = annotator.level_for_view(*region_size).downsample if annotator.auto else None
    calls = annotator.predictor.encoder_calls
    started = time.perf_counter()
    state = None
    for index in range(max_clicks):
        coarse = next_click(coarse_target, prediction[g // 2::g, g // 2::g], clicked)
        if coarse is None:
            break
        clicked[coarse.row, coarse.col] = True
        row, col = coarse.row * g + g // 2, coarse.col * g + g // 2
        downsample, view = overview, region_view
        if mode == "refine" and index > 0:
            extent = _error_extent(target, prediction, row, col, coarse.positive)
            zoomed_size = _region_view((2 * extent, 2 * extent))
            zoomed = annotator.level_for_view(*zoomed_size).downsample
            downsample = min(zoomed, overview)
            if zoomed_size[0] < region_size[0]:  # zoomed in on the error; never out past the region
                view = _centred(col + 0.5, row + 0.5, *zoomed_size)
        annotator.view = view
        run.views.append(view)
        t0 = time.perf_counter()
        state = annotator.click(col + 0.5, row + 0.5, coarse.positive, downsample=downsample)
        if index == 0:
            run.first_mask_s = time.perf_counter() - t0
        if annotator.continuation:
            annotator.wait_continuation()
            state = annotator.state()
        prediction = level0_mask(state, shape)
        run.ious.append(iou(prediction, target))
        run.downsamples.append(float(downsample) if downsample is not None else annotator.grid.downsample)
        if stop_iou is not None and run.ious[-1] >= stop_iou:
            break
    if not run.ious:  # nothing to click (an empty or too thin target): as the prediction stands
        run.ious.append(iou(prediction, target))
    run.seconds = time.perf_counter() - started
    run.encoder_calls = annotator.predictor.encoder_calls - calls
    run.fallbacks = sum(session.fallbacks for session in annotator.snapshot().sessions.values())
    run.grown = annotator.grown
    run.final_mask, run.final_boxes = prediction, tuple(state.boxes) if state is not None else ()
    band = seam_band(run.final_boxes, shape, annotator.tile_size)
    for name, where in (("band", band), ("rest", ~band)):
        run.seam[f"{name}_intersection"] = int((prediction & target & where).sum())
        run.seam[f"{name}_union"] = int(((prediction | target) & where).sum())
    return run


def summarize_runs(runs: list[RegionRun], max_clicks: int, thresholds=DEFAULT_THRESHOLDS) -> dict:
    """Per mode: NoC@t, mIoU per click, first-mask seconds, encoder calls, seam IoUs, collapses
    (clicks; regions with one) and fallbacks (tile decodes; mean per region)."""
    out = {}
    for mode in dict.fromkeys(r.mode for r in runs):
        mine = [r for r in runs if r.mode == mode]
        entry = {"n_regions": len(mine)}
        for t in thresholds:
            entry[f"noc@{round(t * 100)}"] = float(np.mean([noc(r.ious, t, max_clicks) for r in mine]))
        entry["miou_per_click"] = miou_per_click([r.ious for r in mine], max_clicks)
        entry["first_mask_s"] = float(np.mean([r.first_mask_s for r in mine]))
        entry["encoder_calls"] = float(np.mean([r.encoder_calls for r in mine]))
        entry["seconds"] = float(np.mean([r.seconds for r in mine]))
        counts = [collapses(r.ious[:max_clicks]) for r in mine]
        entry["collapses"] = int(sum(counts))
        entry["collapsed_regions"] = sum(c > 0 for c in counts)
        entry["fallbacks"] = float(np.mean([r.fallbacks for r in mine]))
        for name in ("band", "rest"):
            union = sum(r.seam[f"{name}_union"] for r in mine)
            entry[f"iou_{name}"] = (sum(r.seam[f"{name}_intersection"] for r in mine) / union) if union else None
        out[mode] = entry
    return out


def format_table(summary: dict) -> str:
    lines = [("| mode | n | NoC@80 | NoC@85 | NoC@90 | mIoU@1 | mIoU@5 | mIoU@10 | mIoU@20 | first mask (s) | "
              "encoder calls | seam-band IoU | IoU elsewhere | collapses (regions) | fallbacks |"),
             "| --- " + "| ---: " * 14 + "|"]
    for mode, e in summary.items():
        curve = e["miou_per_click"]

        def at(k, curve=curve):
            return f"{curve[k - 1]:.3f}" if len(curve) >= k else "–"

        def ratio(v):
            return "–" if v is None else f"{v:.3f}"

        lines.append(f"| {mode} | {e['n_regions']} | {e['noc@80']:.1f} | {e['noc@85']:.1f} | {e['noc@90']:.1f} | "
                     f"{at(1)} | {at(5)} | {at(10)} | {at(20)} | {e['first_mask_s']:.1f} | "
                     f"{e['encoder_calls']:.1f} | {ratio(e['iou_band'])} | {ratio(e['iou_rest'])} | "
                     f"{e['collapses']} ({e['collapsed_regions']}) | {e['fallbacks']:.1f} |")
    return "\n".join(lines)


def load_region(region: Region, upscale: float = 1.0) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(RGB, bool mask, µm/px) of a region, enlarged ``upscale`` times (bilinear; the mask's
    smooth upscaled edge thresholded at one half): a composed region that spans many tiles."""
    import imageio.v3 as iio
    from PIL import Image

    rgb = np.asarray(iio.imread(region.image))
    rgb = np.repeat(rgb[..., None], 3, axis=2) if rgb.ndim == 2 else rgb[..., :3]
    target = np.asarray(iio.imread(region.mask))
    target = (target[..., 0] if target.ndim == 3 else target) > 127
    if target.shape != rgb.shape[:2]:
        raise InputError(f"{region.mask.name} is {target.shape[1]}x{target.shape[0]} px, its image "
                         f"{rgb.shape[1]}x{rgb.shape[0]}.")
    mpp = region.mpp
    if upscale != 1:
        size = (int(round(rgb.shape[1] * upscale)), int(round(rgb.shape[0] * upscale)))
        rgb = np.asarray(Image.fromarray(np.ascontiguousarray(rgb.astype(np.uint8))).resize(size, Image.BILINEAR))
        target = np.asarray(Image.fromarray(target.astype(np.uint8) * 255).resize(size, Image.BILINEAR)) > 127
        mpp = mpp / upscale if mpp else None
    return rgb.astype(np.uint8), target, mpp


def write_figure(path: Path, rgb: np.ndarray, target: np.ndarray, runs: list[RegionRun]) -> Path:
    """One panel per mode: the region (downsampled), the true outline (green), the object after
    the last click (yellow) and its tiles (cyan, thicker for coarser levels)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    step = max(1, max(rgb.shape[:2]) // 1000)
    fig = Figure(figsize=(4.2 * len(runs), 4.2 * rgb.shape[0] / rgb.shape[1] + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(runs))
    for ax, run in zip(np.atleast_1d(axes), runs):
        ax.imshow(rgb[::step, ::step])
        ax.contour(target[::step, ::step], levels=[0.5], colors="lime", linewidths=1.0)
        if run.final_mask is not None:
            ax.contour(run.final_mask[::step, ::step], levels=[0.5], colors="yellow", linewidths=1.2)
        for box in run.final_boxes:
            d = box.downsample
            ax.add_patch(Rectangle((box.x * d / step, box.y * d / step), box.width * d / step, box.height * d / step,
                                   fill=False, edgecolor="cyan", linewidth=0.6 + 0.4 * np.log2(max(d, 1))))
        ax.set_title(f"{run.mode}: IoU {run.ious[-1]:.2f} after {len(run.ious)} clicks", fontsize=9)
        ax.set_axis_off()
    return write_png(path, fig)


def run_benchmark(regions_dir: str | Path, out_dir: str | Path, model: str = "vit_t", decoder: str = "sam",
                  device: str = "cpu", modes=DEFAULT_MODES, max_clicks: int = 50, tile_size: int = 1024,
                  limit: int | None = None, stride: int = 1, upscale: float = 1.0, log=print,
                  honour_clicks: bool = True) -> dict:
    """Write the regions (every ``stride``-th, the first ``limit``, enlarged ``upscale`` times) as
    pyramids under ``out_dir/slides``, run every mode on each, write ``summary.json``, ``runs.csv``
    and ``table.md``; returns the summary. ``honour_clicks=False``: SAM's usual decode is shown even
    where it loses the object (``ClickSession``), to measure without the fallback."""
    from ..engine.annotator import Annotator
    from ..engine.embedding_cache import EmbeddingCache
    from ..engine.predictor import Predictor
    from ..models.registry import load_model
    from ..slides.reader import open_image

    out = Path(out_dir)
    (out / "slides").mkdir(parents=True, exist_ok=True)
    regions = find_regions(regions_dir, stride)[:limit]
    loaded = load_model(model, device) if isinstance(model, str) else model  # or a model already loaded
    runs: list[RegionRun] = []
    for region in regions:
        rgb, target, mpp = load_region(region, upscale)
        slide = write_pyramid(out / "slides" / f"{region.stem}.ome.tif", rgb, mpp)
        for mode in modes:
            source = open_image(slide)
            predictor = Predictor(loaded, decoder, cache=EmbeddingCache())  # nothing cached between modes
            annotator = Annotator(predictor, source, level=0 if mode.startswith("level0") else "auto",
                                  tile_size=tile_size, honour_clicks=honour_clicks, continuation=mode in GROWING)
            try:
                run = run_region(annotator, target, mode, max_clicks=max_clicks)
            finally:
                annotator.close(wait=True)
                source.close()
            run.stem = region.stem
            runs.append(run)
            reached = next((i + 1 for i, v in enumerate(run.ious) if v >= 0.85), None)
            log(f"{region.stem} {mode}: {len(run.ious)} clicks, IoU {run.ious[-1]:.3f}, NoC@85 "
                f"{reached or max_clicks}, levels {sorted(set(run.downsamples))}, {run.encoder_calls} encoder calls, "
                f"{collapses(run.ious)} collapses, {run.fallbacks} fallbacks, {run.seconds:.0f} s")
        if region is regions[0]:  # a picture of the first region, every mode
            write_figure(out / f"figure-{region.stem}.png", rgb, target, [r for r in runs if r.stem == region.stem])
        for r in runs:
            r.final_mask = None  # a region's masks are large: keep only the figures
    summary = {"regions": [r.stem for r in regions], "source": str(regions_dir), "upscale": upscale,
               "model": loaded.name, "decoder": decoder, "tile_size": tile_size, "max_clicks": max_clicks,
               "modes": summarize_runs(runs, max_clicks)}
    write_text(out / "summary.json", json.dumps(summary, indent=1))
    write_csv(out / "runs.csv", ["region", "mode", "click", "iou", "downsample"],
              ([r.stem, r.mode, i, f"{value:.4f}", d] for r in runs
               for i, (value, d) in enumerate(zip(r.ious, r.downsamples), start=1)))
    write_text(out / "table.md", format_table(summary["modes"]) + "\n")
    return summary
