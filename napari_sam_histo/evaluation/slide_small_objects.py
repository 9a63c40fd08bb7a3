"""The slide-scale benchmark of small objects next to each other (``napari-sam-histo
slide-benchmark --small-objects``), through the Annotator as ``slide_benchmark`` drives it.

Small objects next to each other (``run_small_objects``): several regions (e.g. GlaS images, whose
glands lie close together) are tiled side by side into one composed slide; each connected component
of a region's mask is one object, clicked at auto on its own (RITM's clicker on that object alone,
IoU against that object alone) in a view showing its region, once with growth off and once with
growth on; reported per setting: NoC, mIoU per click, how often the final object spilled into
another object, and per object where growth on ends below growth off.

Each object is one ``slide_benchmark.run_region`` at auto (its clicker, view and continuation),
summarised by ``slide_benchmark.summarize_runs``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import write_csv, write_text
from ..errors import InputError
from .metrics import DEFAULT_THRESHOLDS, noc
from .slide_benchmark import Region, RegionRun, find_regions, load_region, run_region, summarize_runs, write_pyramid

SMALL_SETTINGS = (("growth off", False), ("growth on", True))  # the annotator's ``continuation``
MIN_OBJECT_PX = 1000  # a mask's components smaller than this (at the dataset's resolution) are not clicked


@dataclass
class ComposedSlide:
    """Regions tiled side by side: ``labels`` numbers every connected component of their masks
    (0: background), ``objects`` are the ones clicked, as (label, region stem, the region's level-0
    box (x0, y0, x1, y1))."""

    name: str
    rgb: np.ndarray
    labels: np.ndarray
    objects: list[tuple[int, str, tuple[float, float, float, float]]]
    mpp: float | None


@dataclass
class ObjectRun:
    slide: str
    region: str
    label: int
    area: int
    setting: str
    run: RegionRun
    overlap: int  # level-0 pixels of the final object inside other objects (a spill into a neighbour)


def compose_regions(regions: list[Region], name: str, upscale: float = 1.0,
                    min_object_px: int = MIN_OBJECT_PX) -> ComposedSlide:
    """``regions`` (each enlarged ``upscale`` times) tiled row by row into one slide, as square a
    grid as their number allows, each in a cell of the largest region's size on white; each
    connected component of a region's mask is one object (numbered in ``labels``), and those of at
    least ``min_object_px`` (times ``upscale``²) are to be clicked."""
    from scipy import ndimage

    if not regions:
        raise InputError(f"{name}: no regions to compose.")
    loaded = [load_region(region, upscale) for region in regions]
    columns = int(np.ceil(np.sqrt(len(loaded))))
    rows = int(np.ceil(len(loaded) / columns))
    cell_h = max(rgb.shape[0] for rgb, _, _ in loaded)
    cell_w = max(rgb.shape[1] for rgb, _, _ in loaded)
    rgb_out = np.full((rows * cell_h, columns * cell_w, 3), 255, np.uint8)
    labels = np.zeros(rgb_out.shape[:2], np.int32)
    objects, count = [], 0
    smallest = min_object_px * upscale * upscale
    for i, (region, (rgb, target, _)) in enumerate(zip(regions, loaded)):
        y, x = (i // columns) * cell_h, (i % columns) * cell_w
        height, width = target.shape
        rgb_out[y:y + height, x:x + width] = rgb
        components, n = ndimage.label(target)
        areas = np.bincount(components.ravel(), minlength=n + 1)
        labels[y:y + height, x:x + width] = np.where(components > 0, components + count, 0)
        box = (float(x), float(y), float(x + width), float(y + height))
        objects += [(count + k, region.stem, box) for k in range(1, n + 1) if areas[k] >= smallest]
        count += n
    return ComposedSlide(name, rgb_out, labels, objects, loaded[0][2])


def click_small_objects(annotator, slide: ComposedSlide, setting: str, max_clicks: int = 20,
                        log=None) -> list[ObjectRun]:
    """Every object of ``slide``, one after another on one annotator (a level "auto" one), each a new
    object clicked at auto in the view showing its region (``run_region``: RITM's clicker on that
    object alone, IoU against that object alone); the spill into the other objects is measured on the
    final object."""
    out = []
    anything = slide.labels > 0
    for label, stem, box in slide.objects:
        target = slide.labels == label
        run = run_region(annotator, target, "auto", max_clicks=max_clicks, region=box)
        annotator.clear()
        run.stem, run.mode = stem, f"auto, {setting}"
        overlap = int((run.final_mask & anything & ~target).sum())
        run.final_mask = None
        out.append(ObjectRun(slide.name, stem, label, int(target.sum()), setting, run, overlap))
        if log is not None:
            log(f"{slide.name} {stem} #{label} {setting}: {len(run.ious)} clicks, IoU {run.ious[-1]:.3f}, "
                f"{run.grown} grown tiles, spill {overlap} px")
    return out


def summarize_small(objects: list[ObjectRun], max_clicks: int, thresholds=DEFAULT_THRESHOLDS) -> dict:
    """Per setting: ``summarize_runs``' NoC and mIoU per click, the objects that spilled into another
    object and that grew; and, per object, growth on against growth off (final IoU)."""
    out = summarize_runs([o.run for o in objects], max_clicks, thresholds)
    for mode, entry in out.items():
        mine = [o for o in objects if o.run.mode == mode]
        entry["spilled"] = sum(o.overlap > 0 for o in mine)
        entry["grew"] = sum(o.run.grown > 0 for o in mine)
        entry["grown_tiles"] = float(np.mean([o.run.grown for o in mine])) if mine else 0.0
    finals = {}
    for o in objects:
        finals.setdefault((o.slide, o.label), {})[o.setting] = o.run.ious[-1]
    pairs = [(v["growth on"], v["growth off"]) for v in finals.values() if len(v) == 2]
    drops = [off - on for on, off in pairs if on < off - 1e-3]
    out["paired"] = {"objects": len(pairs), "lower_with_growth": len(drops),
                     "higher_with_growth": sum(on > off + 1e-3 for on, off in pairs),
                     "worst_drop": max(drops, default=0.0),
                     "mean_difference": float(np.mean([on - off for on, off in pairs])) if pairs else 0.0}
    return out


def format_small_table(summary: dict) -> str:
    lines = [("| clicked at auto | objects | NoC@80 | NoC@85 | NoC@90 | mIoU@1 | mIoU@5 | mIoU@10 | spilled into "
              "another object | objects that grew (grown tiles, mean) | encoder calls (per object) |"),
             "| --- " + "| ---: " * 10 + "|"]
    for mode, e in summary.items():
        if mode == "paired":
            continue

        def at(k, curve=e["miou_per_click"]):
            return f"{curve[k - 1]:.3f}" if len(curve) >= k else "–"

        lines.append(f"| {mode} | {e['n_regions']} | {e['noc@80']:.1f} | {e['noc@85']:.1f} | {e['noc@90']:.1f} | "
                     f"{at(1)} | {at(5)} | {at(10)} | {e['spilled']} | {e['grew']} ({e['grown_tiles']:.2f}) | "
                     f"{e['encoder_calls']:.2f} |")
    paired = summary.get("paired")
    if paired and paired["objects"]:
        lines.append("")
        lines.append(f"Per object (final IoU), growth on against growth off: {paired['lower_with_growth']} of "
                     f"{paired['objects']} lower (worst by {paired['worst_drop']:.3f}), "
                     f"{paired['higher_with_growth']} higher, mean difference {paired['mean_difference']:+.4f}.")
    return "\n".join(lines)


def run_small_objects(regions_dir: str | Path, out_dir: str | Path, model: str = "vit_t", decoder: str = "sam",
                      device: str = "cpu", per_slide: int = 9, max_clicks: int = 20, tile_size: int = 1024,
                      limit: int | None = None, stride: int = 1, upscale: float = 1.0, log=print,
                      honour_clicks: bool = True) -> dict:
    """Small objects next to each other (see the module): the regions (every ``stride``-th, the first
    ``limit``, enlarged ``upscale`` times) composed ``per_slide`` at a time into slides written as
    pyramids under ``out_dir/slides``, every object clicked with growth off and on; writes
    ``summary.json``, ``objects.csv`` and ``table.md``; returns the summary."""
    from ..engine.annotator import Annotator
    from ..engine.embedding_cache import EmbeddingCache
    from ..engine.predictor import Predictor
    from ..models.registry import load_model
    from ..slides.reader import open_image

    if per_slide < 1:
        raise InputError(f"per_slide {per_slide}: compose at least one region per slide.")
    out = Path(out_dir)
    (out / "slides").mkdir(parents=True, exist_ok=True)
    regions = find_regions(regions_dir, stride)[:limit]
    if not regions:
        raise InputError(f"{regions_dir}: no image/mask pairs found.")
    loaded = load_model(model, device) if isinstance(model, str) else model  # or a model already loaded
    objects: list[ObjectRun] = []
    slides = []
    for start in range(0, len(regions), per_slide):
        slide = compose_regions(regions[start:start + per_slide], f"small-{start // per_slide + 1}", upscale)
        path = write_pyramid(out / "slides" / f"{slide.name}.ome.tif", slide.rgb, slide.mpp)
        slides.append({"name": slide.name, "regions": [r.stem for r in regions[start:start + per_slide]],
                       "width": int(slide.rgb.shape[1]), "height": int(slide.rgb.shape[0]),
                       "objects": len(slide.objects)})
        for setting, growth in SMALL_SETTINGS:
            source = open_image(path)
            predictor = Predictor(loaded, decoder, cache=EmbeddingCache())  # nothing cached between settings
            annotator = Annotator(predictor, source, level="auto", tile_size=tile_size, honour_clicks=honour_clicks,
                                  continuation=growth)
            try:
                objects += click_small_objects(annotator, slide, setting, max_clicks, log)
            finally:
                annotator.close(wait=True)
                source.close()
    summary = {"source": str(regions_dir), "upscale": upscale, "per_slide": per_slide, "slides": slides,
               "model": loaded.name, "decoder": decoder, "tile_size": tile_size, "max_clicks": max_clicks,
               "settings": summarize_small(objects, max_clicks)}
    write_text(out / "summary.json", json.dumps(summary, indent=1))
    write_csv(out / "objects.csv", ["slide", "region", "object", "area", "growth", "clicks", "final_iou", "noc@85",
                                    "spill_px", "grown_tiles", "ious"],
              ([o.slide, o.region, o.label, o.area, o.setting, len(o.run.ious), f"{o.run.ious[-1]:.4f}",
                noc(o.run.ious, 0.85, max_clicks), o.overlap, o.run.grown, " ".join(f"{v:.4f}" for v in o.run.ious)]
               for o in objects))
    write_text(out / "table.md", format_small_table(summary["settings"]) + "\n")
    return summary
