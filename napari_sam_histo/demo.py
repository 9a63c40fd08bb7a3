"""The main job on the embedded default: MobileSAM on the CC0 H&E sample (OpenSlide's CMU-1 region).

With a screen it opens napari with the sample. Headless it runs a scripted click session on the
tile at the slide's centre: the clicks are placed by the RITM clicker against a simple tissue
mask (non-white pixels), so the demo needs no annotation and shows the real click loop; it writes
the mask and an overlay as PNG and prints one summary line.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

SAMPLE = Path(__file__).resolve().parent / "resources" / "cmu-1-small-region.svs"
DEMO_CLICKS = 5


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Stained tissue vs. white glass: colourful or dark pixels, small specks removed."""
    from skimage.morphology import remove_small_holes, remove_small_objects

    rgb = rgb.astype(np.int16)
    chroma = rgb.max(axis=-1) - rgb.min(axis=-1)
    mask = (chroma > 30) | (rgb.mean(axis=-1) < 180)
    mask = remove_small_objects(mask, max_size=256)
    return remove_small_holes(mask, max_size=256)


def _overlay(rgb: np.ndarray, mask: np.ndarray, clicks) -> np.ndarray:
    out = rgb.astype(np.float32)
    out[mask] = 0.55 * out[mask] + 0.45 * np.array([255, 200, 0])
    for click in clicks:
        colour = (0, 200, 0) if click.positive else (220, 0, 0)
        r, c = int(click.y), int(click.x)
        out[max(r - 6, 0): r + 7, max(c - 6, 0): c + 7] = colour
    return out.astype(np.uint8)


def run_headless(out_dir: str | Path = "out/demo", model: str = "vit_t", device: str = "auto") -> dict:
    import imageio.v3 as iio

    from .atomic import atomic_path
    from .engine.predictor import Predictor
    from .engine.session import ClickSession
    from .engine.tiles import TileGrid
    from .evaluation.click_loop import click_object
    from .models.registry import load_model
    from .slides.reader import open_image

    out_dir = Path(out_dir)
    source = open_image(SAMPLE)
    width, height = source.level_dimensions[0]
    grid = TileGrid(0, width, height, 1024)
    box = grid.tile_at(width / 2, height / 2)
    loaded = load_model(model, device, fetch=True)
    predictor = Predictor(loaded, "sam")

    started = time.perf_counter()
    session = ClickSession.on_tile(predictor, source, box)
    encoder_s = time.perf_counter() - started
    rgb = source.read_region(box)
    target = tissue_mask(rgb)

    clicked = click_object(lambda click: session.add_click(*click.xy, positive=click.positive).mask, target,
                           DEMO_CLICKS, stop_iou=None)
    click_times, ious = clicked.seconds, clicked.ious

    mask = session.mask()
    with atomic_path(out_dir / "mask.png") as tmp:
        iio.imwrite(tmp, (mask * 255).astype(np.uint8), extension=".png")
    with atomic_path(out_dir / "overlay.png") as tmp:
        iio.imwrite(tmp, _overlay(rgb, mask, session.clicks), extension=".png")
    summary = {
        "model": loaded.name,
        "device": str(loaded.device),
        "slide": SAMPLE.name,
        "tile": box.key(),
        "clicks": len(session.clicks),
        "positive_clicks": sum(c.positive for c in session.clicks),
        "iou_vs_tissue": ious,
        "mask_fraction": float(mask.mean()),
        "encoder_s": encoder_s,
        "click_p50_s": float(np.median(click_times)) if click_times else None,
        "encoder_calls": predictor.encoder_calls,
        "mask_png": str(out_dir / "mask.png"),
        "overlay_png": str(out_dir / "overlay.png"),
    }
    return summary


def summary_line(s: dict) -> str:
    ious = " ".join(f"{v:.2f}" for v in s["iou_vs_tissue"])
    return (
        f"demo: {s['model']} on {s['device']}, {s['slide']} tile {s['tile']}: {s['clicks']} clicks "
        f"({s['positive_clicks']} positive), IoU vs tissue per click [{ious}], mask covers "
        f"{100 * s['mask_fraction']:.0f}% of the tile; encoder {s['encoder_s']:.2f} s (ran "
        f"{s['encoder_calls']}x), click p50 {1000 * (s['click_p50_s'] or 0):.0f} ms -> {s['mask_png']}"
    )


def run_demo(headless: bool = False, out_dir: str | Path = "out/demo", model: str = "vit_t",
             device: str = "auto") -> int:
    if headless:
        print(summary_line(run_headless(out_dir, model, device)))
        return 0
    import napari

    viewer = napari.Viewer(title="napari-sam-histo demo")
    viewer.open_sample("napari-sam-histo", "cmu1_region")
    napari.run()
    return 0
