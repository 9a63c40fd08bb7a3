"""How long napari's GUI thread stalls while the Annotator dock is used: a scripted session in a
real viewer, timed by a 20 ms heartbeat.

A QTimer ticks every 20 ms on the GUI thread; each action of a scripted session (open the dock,
open the slide, Start, clicks, Accept, exports, import, undo, delete) is triggered as a user's
button press or click would, then the event loop runs until the action's result is on screen, and
0.3 s more. The longest gap between two ticks inside that window, less the 20 ms period, is the
action's stall:
how long napari could not repaint or take a key. Needs a display (under Xvfb on a server).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..annotations.geojson import write_geojson
from ..errors import InputError
from .annotator.view import camera

HEARTBEAT_MS = 20
TRAILING_S = 0.3  # after an action's result is on screen, its stall window stays open this long
SAMPLE = Path(__file__).resolve().parent.parent / "resources" / "cmu-1-small-region.svs"


@dataclass
class Stall:
    action: str
    seconds: float  # until the result was on screen
    longest_stall_ms: float  # the longest heartbeat gap, less the period
    where: str = ""  # with explain=True: the GUI thread's most frequent stack lines inside that gap


class StackSampler:
    """Samples the GUI thread's stack every 5 ms from another thread, to say where a stall went
    (a stretch with no sample at all is C code holding the GIL)."""

    def __init__(self) -> None:
        import sys
        import threading

        self.samples: list[tuple[float, tuple[str, ...]]] = []
        self._main = threading.main_thread().ident
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.005):
                frame = sys._current_frames().get(self._main)
                stack = []
                while frame is not None:
                    code = frame.f_code
                    stack.append(f"{code.co_filename.rsplit('site-packages/', 1)[-1]}:{frame.f_lineno} {code.co_name}")
                    frame = frame.f_back
                self.samples.append((time.perf_counter(), tuple(stack)))

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def explain(self, t0: float, t1: float, depth: int = 6) -> str:
        from collections import Counter

        inside = [stack for t, stack in self.samples if t0 <= t <= t1]
        if not inside:
            return "no sample: C code held the GIL"
        frames = Counter(f for stack in inside for f in set(stack[:depth]))
        return "; ".join(f"{f} ({n * 5} ms)" for f, n in frames.most_common(4))

    def stop(self) -> None:
        self._stop.set()


class Heartbeat:
    """Timestamps of a 20 ms QTimer on the GUI thread."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.beats: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(HEARTBEAT_MS)
        self.timer.timeout.connect(lambda: self.beats.append(time.perf_counter()))
        self.timer.start()

    def longest_gap(self, t0: float, t1: float) -> tuple[float, float, float]:
        """(length, start, end) of the longest gap between beats in [t0, t1]."""
        beats = [b for b in self.beats if t0 <= b <= t1]
        edges = np.array([t0, *beats, t1])
        i = int(np.argmax(np.diff(edges)))
        return float(edges[i + 1] - edges[i]), float(edges[i]), float(edges[i + 1])


def mosaic_slide(folder: Path, repeat: int) -> Path:
    """A pyramidal tiled TIFF of the CC0 sample repeated ``repeat`` x ``repeat`` times (a larger
    slide, to show how a step grows with the slide). Written tile by tile, so a mosaic of 50,000 px
    and more (``repeat`` 17: 37,740 x 50,439 px) never needs the whole image in memory."""
    import tifffile

    from ..slides.boxes import TileBox
    from ..slides.reader import open_image

    source = open_image(SAMPLE)
    width, height = source.level_dimensions[0]
    pixels = source.read_region(TileBox(0, 0, 0, width, height))
    mpp = source.mpp[0]
    source.close()
    side = 256
    shapes = [(height * repeat, width * repeat)]
    while max(shapes[-1]) > 1024:  # each level every second pixel of the one above (as [::2, ::2])
        shapes.append(((shapes[-1][0] + 1) // 2, (shapes[-1][1] + 1) // 2))

    def tiles(level: int):
        step = 2 ** level
        rows_total, cols_total = shapes[level]
        for r0 in range(0, rows_total, side):
            rows = (np.arange(r0, min(r0 + side, rows_total)) * step) % height
            for c0 in range(0, cols_total, side):
                cols = (np.arange(c0, min(c0 + side, cols_total)) * step) % width
                tile = np.zeros((side, side, 3), np.uint8)
                tile[: len(rows), : len(cols)] = pixels[np.ix_(rows, cols)]
                yield tile

    path = folder / f"cmu-1-mosaic-{repeat}x{repeat}.ome.tif"
    big = shapes[0][0] * shapes[0][1] * 3 > 2**31
    with tifffile.TiffWriter(path, bigtiff=big) as tif:
        meta = {"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp}
        tif.write(tiles(0), shape=(*shapes[0], 3), dtype=np.uint8, tile=(side, side), subifds=len(shapes) - 1,
                  compression="zlib", metadata=meta, photometric="rgb")
        for level in range(1, len(shapes)):
            tif.write(tiles(level), shape=(*shapes[level], 3), dtype=np.uint8, tile=(side, side),
                      compression="zlib", subfiletype=1, photometric="rgb")
    return path


def large_objects(width: int, height: int, count: int = 3, vertices: int = 3000):
    """``count`` tumour-like objects with wavy outlines of ``vertices`` points, each spanning most of
    a ``width`` x ``height`` slide (the outlines a large accepted or imported region has)."""
    from ..annotations.geometry import Polygon
    from ..annotations.objects import AnnotatedObject

    t = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    objects = []
    for i in range(count):
        radius = 0.45 * min(width, height) * (1 + 0.1 * np.sin((7 + i) * t))
        ring = np.stack([width / 2 + radius * np.cos(t) * 0.9 ** i, height / 2 + radius * np.sin(t) * 0.9 ** i], 1)
        objects.append(AnnotatedObject([Polygon(ring)], "Tumor"))
    return objects


def slide_readers(viewer) -> set:
    """The chunk readers of the viewer's slide layers."""
    from .chunk_refresh import readers_of

    return set().union(*(readers_of(layer) for layer in viewer.layers))


def overviews_read(viewer) -> bool:
    """Every chunk the slide layers asked for is read (the layers are redrawn a poll later)."""
    return all(reader.idle() for reader in slide_readers(viewer))


def chunks_read(viewer) -> int:
    """Chunks read so far for the slide layers (``ChunkReader.generation``, summed)."""
    return sum(reader.generation for reader in slide_readers(viewer))


def run(slide: str | Path | None = None, model: str = "vit_t", device: str = "cpu", repeat: int = 1,
        timeout: float = 300.0, explain: bool = False, level: str | int = "auto",
        adapt: bool = False, refiner_offered: bool = False) -> list[Stall]:
    """Run the scripted session; returns one ``Stall`` per action (``explain``: with where the
    longest stall of each went, from a stack sampler; ``level``: the dock's working level, "auto"
    or a pyramid level; ``adapt``: "Learn from this slide" on, and the second object is clicked
    while the adaptation of the first is running; ``refiner_offered``: the border refiner learnt from
    the first object refines the second, as if its gate had passed, which needs three objects)."""
    import napari
    from qtpy.QtWidgets import QApplication

    from .annotator.dock import AnnotatorDock

    work = Path(tempfile.mkdtemp(prefix="napari-sam-histo-stalls-"))
    if slide is None:
        slide = mosaic_slide(work, repeat) if repeat > 1 else SAMPLE
    slide = Path(slide)
    copy = work / slide.name  # the autosave sidecar goes beside it, not beside the user's slide
    if not copy.exists():
        copy.write_bytes(slide.read_bytes())
    viewer = napari.Viewer()
    app = QApplication.instance()
    heartbeat = Heartbeat()
    sampler = StackSampler() if explain else None
    results: list[Stall] = []
    state: dict = {}

    def spin(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.002)

    def timed(name: str, trigger, done) -> None:
        spin(0.3)  # let earlier work settle
        t0 = time.perf_counter()
        trigger()
        while not done():
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"{name} did not finish within {timeout:.0f} s")
            app.processEvents()
            time.sleep(0.002)
        t1 = time.perf_counter()
        spin(TRAILING_S)  # steps an action leaves for later event-loop turns count too
        gap, g0, g1 = heartbeat.longest_gap(t0, t1 + TRAILING_S)
        where = sampler.explain(g0, g1) if sampler is not None else ""
        results.append(Stall(name, t1 - t0, max(gap * 1000 - HEARTBEAT_MS, 0.0), where))

    def open_dock():
        state["dock"] = dock = AnnotatorDock(viewer)
        viewer.window.add_dock_widget(dock, name="Annotator")

    timed("open the dock", open_dock, lambda: True)
    dock = state["dock"]
    # the dock imports torch and friends on a worker as it opens: their C start-up holds the GIL, so
    # napari stalls meanwhile whatever the user does; timed on its own, before the slide is opened
    timed("warm-up after opening the dock (imports on a worker)", lambda: None, lambda: dock.warmed_up)
    timed("open the slide", lambda: viewer.open(str(copy), plugin="napari-sam-histo"),
          lambda: dock.layer_combo.count() > 0 and overviews_read(viewer))
    slide_layer = viewer.layers[-1]
    home = (camera(viewer).zoom, tuple(camera(viewer).center))

    def look_at(zoom: float, centre: tuple) -> None:
        state["generation"], state["moved"] = chunks_read(viewer), time.perf_counter()
        camera(viewer).zoom, camera(viewer).center = zoom, centre

    def new_chunks_drawn() -> bool:
        """The chunks the new view asked for are read (napari asks when it draws, an event-loop
        turn or two after the camera moved; none where they were read before)."""
        asked = chunks_read(viewer) > state["generation"] or time.perf_counter() - state["moved"] > 0.5
        return asked and overviews_read(viewer)

    # a pathologist looks closer before clicking: level-0 chunks, read on threads as napari asks
    height, width = slide_layer.data[0].shape[:2]
    centre = np.array(slide_layer.data_to_world((height / 2, width / 2)))
    timed("zoom in to full resolution", lambda: look_at(home[0] * 8, tuple(centre)), new_chunks_drawn)
    timed("pan across the slide", lambda: look_at(home[0] * 8, tuple(centre * 0.4)), new_chunks_drawn)
    timed("zoom out to the whole slide", lambda: look_at(*home), lambda: True)
    dock.model_combo.setCurrentText(model)
    dock.device_combo.setCurrentText(device)
    index = dock.level_combo.findData(level if level == "auto" else int(level))
    if index < 0:
        raise InputError(f"The slide has no working level {level!r}; use auto or 0..{dock.level_combo.count() - 2}.")
    dock.level_combo.setCurrentIndex(index)
    dock.prefetch_check.setChecked(False)  # the clicks below are timed alone
    dock.adaptation_panel.check.setChecked(adapt)
    dock.confirm = lambda question: True
    timed("Start", dock.start_button.click, lambda: dock.annotator is not None and dock.autosave_path is not None)
    width, height = dock.source.level_dimensions[0]
    fragment = (min(2091, width - 1), min(615, height - 1))
    points = [fragment, (fragment[0] + 30, fragment[1] + 20), (fragment[0] - 25, fragment[1] + 10)]
    for i, (x, y) in enumerate(points):
        name = "first click (embedding computed)" if i == 0 else f"click {i + 1} (same tile)"
        timed(name, lambda x=x, y=y: dock.add_click(x, y), lambda: dock.pending == 0)
    if dock.grow_check.isChecked():  # the object grows into the next tiles by itself (when it is cut)
        timed("growth past tile borders (background)", lambda: None, lambda: not dock.annotator.continuing)

    def accept(name: str, objects: int) -> None:
        """Accept as the user does: when the object reaches beyond the view, the dock shows it whole
        first and a second Enter accepts it (timed apart)."""
        refused = "Not accepted yet"
        timed(name, dock.accept, lambda: dock.pending == 0 and (len(dock.object_list.ids) == objects
                                                                or dock.status.text().startswith(refused)))
        if len(dock.object_list.ids) != objects:
            timed(name + " again (the view showed it whole)", dock.accept,
                  lambda: dock.pending == 0 and len(dock.object_list.ids) == objects)

    accept("Accept", 1)
    strip = (min(500, width - 1), min(1040, height - 1))  # a second object, on another tile
    second = "first click on a second object"
    if adapt:  # the first object's adaptation is under way when the user clicks: the slide
        # refiner re-clicking it with the decoder (it comes first), then the decoder's steps
        adaptation = dock.annotator.adaptation
        end = time.perf_counter() + timeout
        while adaptation.state().examples + adaptation.state().held_out < 1 and time.perf_counter() < end:
            spin(0.05)
        if refiner_offered:  # wait for it to learn from the first object, then offer it (a diagnostic)
            while (adaptation.state().refiner_pending or adaptation.adapter.refinement.refiner is None) \
                    and time.perf_counter() < end:
                spin(0.05)
            learnt = adaptation.adapter.refinement.refiner
            if learnt is None:
                raise TimeoutError("the border refiner did not learn from the first object")
            adaptation.refiner = lambda: learnt
            second += " (refiner offered)"
        state_now = adaptation.state()
        if state_now.owed or state_now.refiner_pending:
            second += " (adaptation running)"
        elif not refiner_offered:
            raise TimeoutError("the adaptation finished (or never started) before the second object's click")
    timed(second, lambda: dock.add_click(*strip), lambda: dock.pending == 0)
    if refiner_offered:
        if not dock.annotator.state().refined:
            raise RuntimeError("the second object was not refined")
        timed("click 2 (second object, refined)", lambda: dock.add_click(strip[0] + 20, strip[1] + 10),
              lambda: dock.pending == 0)
    accept("Accept (second object)", 2)
    geojson, tiff = work / "objects.geojson", work / "labels.ome.tif"
    timed("export GeoJSON", lambda: state.update(f=dock.export_geojson(geojson, overwrite=True)),
          lambda: state["f"].done() and dock.status.text().startswith("Exported"))
    timed("export TIFF", lambda: state.update(f=dock.export_tiff(tiff, overwrite=True)),
          lambda: state["f"].done() and dock.status.text().startswith("Exported"))
    timed("undo Accept", dock.undo, lambda: dock.pending == 0 and len(dock.object_list.ids) == 1)
    timed("Clear (Escape)", dock.clear, lambda: dock.pending == 0 and not dock.annotator.clicks)
    timed("import GeoJSON (1 new, 1 already here)", lambda: state.update(f=dock.import_geojson(geojson)),
          lambda: state["f"].done() and len(dock.object_list.ids) == 2)
    timed("delete both objects", lambda: dock.delete_objects(list(dock.object_list.ids)),
          lambda: not dock.object_list.ids)
    timed("autosave", dock.autosave_now, lambda: dock.last_autosave is not None and dock.last_autosave.done())

    # large objects: outlines of 3,000 vertices spanning most of the slide, imported, then exported
    big = work / "large-objects.geojson"
    write_geojson(big, large_objects(width, height), mpp=dock.source.mpp)
    timed("import 3 large objects (3,000-vertex outlines across the slide)",
          lambda: state.update(f=dock.import_geojson(big)), lambda: state["f"].done() and len(dock.object_list.ids) == 3)
    timed("export GeoJSON (large objects)", lambda: state.update(f=dock.export_geojson(geojson, overwrite=True)),
          lambda: state["f"].done() and dock.status.text().startswith("Exported"))
    timed("export TIFF (large objects)", lambda: state.update(f=dock.export_tiff(tiff, overwrite=True)),
          lambda: state["f"].done() and dock.status.text().startswith("Exported"))
    state["second"] = mosaic_slide(work, 2)  # made before the timing: a file the user already has
    timed("open a second slide while annotating",
          lambda: viewer.open(str(state["second"]), plugin="napari-sam-histo"),
          lambda: dock.layer_combo.count() > 1 and dock.layer_combo.findText(state["second"].name.split(".")[0]) >= 0
          and overviews_read(viewer))
    dock.close_session(wait=True)
    heartbeat.timer.stop()
    if sampler is not None:
        sampler.stop()
    viewer.close()
    import shutil

    shutil.rmtree(work, ignore_errors=True)  # its copies and exports (a 50,000-px mosaic: gigabytes)
    return results


def format_table(results: list[Stall]) -> str:
    lines = ["| action | until on screen (s) | longest GUI stall (ms) |", "|---|---:|---:|"]
    lines += [f"| {r.action} | {r.seconds:.2f} | {r.longest_stall_ms:.0f} |" for r in results]
    lines += [f"{r.action}: {r.where}" for r in results if r.where]
    return "\n".join(lines)
