"""A project's training set (training.project_store, training.project_import): accepted and
imported objects kept across slides and sessions, never lost or half-written on a crash, removable,
and bad input refused with a message naming the file, the store left as it was (tiny random SAM:
mechanics)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from napari_sam_histo.annotations.geojson import write_geojson
from napari_sam_histo.annotations.geometry import Polygon, polygon_area
from napari_sam_histo.annotations.objects import AnnotatedObject
from napari_sam_histo.engine.annotator import Annotator
from napari_sam_histo.engine.embedding_cache import EmbeddingCache, EmbeddingKey
from napari_sam_histo.engine.predictor import Predictor
from napari_sam_histo.errors import DiskFullError, InputError
from napari_sam_histo.slides.reader import open_image
from napari_sam_histo.training import project_store
from napari_sam_histo.training.project_import import SLIDE_IDENTITY, SLIDE_NAME, import_annotations
from napari_sam_histo.training.project_objects import ProjectRecorder, SlideRef
from napari_sam_histo.training.project_split import split_by_slide
from napari_sam_histo.training.project_store import ProjectStore

TILE = 256
CENTRES = [(130, 120), (380, 140), (140, 380), (390, 390)]


def _slide(path, seed=0, size=512):
    """A small slide (PNG) with four purple discs of radius 40 on pink."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    inside = np.zeros((size, size), bool)
    for cx, cy in CENTRES:
        inside |= (yy - cy) ** 2 + (xx - cx) ** 2 < 40 ** 2
    image = np.where(inside[..., None], [120, 50, 150], [235, 200, 220]) + rng.normal(0, 8, (size, size, 3))
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
    return path


def _disc(centre, radius=40, class_name="Tumor", id=None, **properties):  # noqa: A002 - callers pass id=, as AnnotatedObject names it
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    ring = np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], axis=1)
    return AnnotatedObject([Polygon(ring)], class_name, properties=dict(properties), **({"id": id} if id else {}))


def _files(store):
    """Every file of the store with its size and content hash: what 'unchanged' means."""
    found = {}
    for folder, _, names in os.walk(store.folder):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as stream:
                found[os.path.relpath(path, store.folder)] = hash(stream.read())
    return found


@pytest.fixture
def predictor(tiny_model):
    return Predictor(tiny_model, "sam", cache=EmbeddingCache(), precision="fp32")


@pytest.fixture
def slides(tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    return [_slide(folder / "a.png", 0), _slide(folder / "b.png", 1)]


def _exported(path, slide_path, objects):
    """A GeoJSON as our exporter writes it for ``slide_path``: each object records its slide."""
    source = open_image(slide_path)
    for obj in objects:
        obj.properties.update({SLIDE_NAME: source.name, SLIDE_IDENTITY: source.identity})
    return write_geojson(path, objects)


class _Capture:
    """The annotator's slide-learning slot (``engine.protocols.SlideLearning``), keeping what
    Accept hands over (the same as the project's recorder gets)."""

    enabled = refine_borders = True

    def __init__(self, predictor):
        self._predictor = predictor
        self.accepted = []

    def predictor(self):
        return self._predictor

    def refiner(self):
        return None

    def add_object(self, sessions, blended, edited=None, key=None, read_tile=None, tile_colour=None):
        self.accepted.append((list(sessions), blended, edited))
        return 1

    def take_turn(self, timeout=None):
        return False

    def close(self, wait=True):
        pass


@pytest.mark.slow
def test_an_accepted_object_is_kept_with_its_tile_embedding_and_survives_a_restart(tmp_path, slides, predictor):
    source = open_image(slides[0])
    annotator = Annotator(predictor, source, level=0, tile_size=TILE)
    capture = _Capture(predictor)
    annotator.adaptation = capture
    store = ProjectStore(tmp_path / "slides")
    queued = []  # a UI's writer thread: the recorder returns at once, the writing waits its turn
    annotator.recorder = ProjectRecorder(store, SlideRef.of(source, slides[0]), predictor, submit=queued.append)
    try:
        annotator.submit_click(130, 120, True).result(timeout=120)
        annotator.submit_click(100, 60, False).result(timeout=120)
        obj = annotator.submit_accept("Stroma").result(timeout=60)
    finally:
        annotator.close(wait=True)
    assert (obj.properties["slide"], obj.properties["slide_identity"]) == ("a.png", source.identity)
    sessions, blended, edited = capture.accepted[0]
    assert len(queued) == 1 and len(store) == 0  # handed over at Accept, not written yet
    stored = queued.pop()()
    assert stored is not None and stored.class_name == "Stroma" and stored.origin == "accepted"
    assert stored.decoder["decoder"] == "sam" and stored.weights_hash == predictor.model.weights_hash
    box = sessions[0].box
    clicks = ((130.0 - box.x, 120.0 - box.y, True), (100.0 - box.x, 60.0 - box.y, False))  # in the tile's pixels
    assert len(stored.tiles) == len(sessions) and stored.tiles[0].clicks == clicks and stored.tiles[0].box == box
    assert store.counts() == {("a.png", "Stroma"): (1, len(sessions))}
    manifest = json.loads((tmp_path / "slides" / ".sam-histo-project" / "project.json").read_text())
    assert (manifest["format"], manifest["version"]) == ("napari-sam-histo-project", 1)

    calls = predictor.encoder_calls
    reopened = ProjectStore(tmp_path / "slides")  # a restart
    assert [o.object_id for o in reopened.objects()] == [obj.id]
    examples = reopened.examples(predictor=predictor)
    assert predictor.encoder_calls == calls  # no encoder run: the embeddings are in the store
    assert len(examples) == len(sessions)
    session = sessions[0]
    level = np.zeros((1024, 1024), bool)  # the accepted mask on the level, cut to the tile
    mask = blended.mask()
    level[blended.y:blended.y + mask.shape[0], blended.x:blended.x + mask.shape[1]] = mask
    assert examples[0].target.any()
    assert np.array_equal(examples[0].target, level[box.y:box.y + box.height, box.x:box.x + box.width])
    assert examples[0].clicks == clicks
    assert tuple(examples[0].embedding.original_size) == (TILE, TILE)
    assert np.allclose(examples[0].embedding.features, session.embedding.features, rtol=1e-2, atol=1e-3)  # float16
    other_model = Predictor(predictor.model, "sam", cache=EmbeddingCache(), precision="fp32")
    other_model.key_for = lambda image, tile: EmbeddingKey(image, tile, "other", "h", "p")
    assert reopened.examples(predictor=other_model) == []  # embedded by another model: left out
    annotator.recorder.forget(obj.id)  # its Accept undone
    queued.pop()()
    assert len(store) == 0 and len(ProjectStore(tmp_path / "slides")) == 0
    assert not list(store.cache.store_dir.glob("*.zarr"))  # its tile's embedding went with it


_KILLED_WRITER = """
import os, signal, sys
from napari_sam_histo.engine.embedding_cache import EmbeddingCache, EmbeddingKey
from napari_sam_histo.engine.predictor import Predictor
from napari_sam_histo.models.registry import random_model
from napari_sam_histo.training import project_store
from napari_sam_histo.training.project_import import import_annotations

def killed(path, record):  # the process dies after the masks file, before the object's record
    os.kill(os.getpid(), signal.SIGKILL)

project_store._write_record = killed
predictor = Predictor(random_model("tiny", "cpu"), "sam", cache=EmbeddingCache(), precision="fp32")
import_annotations(project_store.ProjectStore(sys.argv[1]), sys.argv[2], sys.argv[3], predictor, 256)
"""


@pytest.mark.slow
def test_a_crash_mid_write_leaves_every_whole_object_and_no_half_one(tmp_path, slides, predictor, monkeypatch):
    import signal
    import subprocess
    import sys

    store = ProjectStore(tmp_path / "slides")
    import_annotations(store, slides[0], _exported(tmp_path / "a.geojson", slides[0], [_disc(CENTRES[0], id="one")]),
                       predictor, TILE)
    manifest = store.manifest_path.read_bytes()
    before = _files(store)
    # a process killed between writing an object's masks and its record
    second = _exported(tmp_path / "b.geojson", slides[0], [_disc(CENTRES[1], id="two")])
    run = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(store.root), str(slides[0]), str(second)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == -signal.SIGKILL, run.stderr
    leftovers = set(_files(store)) - set(before)
    assert any(name.endswith(".npz") for name in leftovers) and any(".zarr" in name for name in leftovers)
    # and a record being written when a process was killed: a hidden temporary file, half of it
    entry = next(iter(store._objects))
    (store.objects_dir / f".{entry}.x1y2.json").write_text('{"version": 1, "object_id": "tw')
    reopened = ProjectStore(tmp_path / "slides")
    assert [o.object_id for o in reopened.objects()] == ["one"] and reopened.problems == []
    assert store.manifest_path.read_bytes() == manifest
    assert reopened.examples()[0].target.any()
    # what the crash left (masks and an embedding nobody names) goes once it is old enough
    monkeypatch.setattr(project_store, "ORPHAN_AGE_S", 0.0)
    cleaned = ProjectStore(tmp_path / "slides")
    assert set(_files(cleaned)) == set(before) and [o.object_id for o in cleaned.objects()] == ["one"]
    # a write that fails (rather than a killed process) removes its masks at once
    monkeypatch.setattr(project_store, "_write_record", lambda path, record: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        import_annotations(cleaned, slides[0], second, predictor, TILE)
    assert not [p for p in cleaned.objects_dir.glob("*.npz") if p.name != cleaned.objects()[0].masks]
    assert [o.object_id for o in ProjectStore(tmp_path / "slides").objects()] == ["one"]


def test_objects_are_removed_one_by_one_and_per_slide_with_their_unused_embeddings(tmp_path, slides, predictor):
    store = ProjectStore(tmp_path / "slides")
    for i, slide in enumerate(slides):
        objects = [_disc(c, id=f"{i}-{j}", class_name="Tumor" if j < 3 else "Stroma") for j, c in enumerate(CENTRES)]
        report = import_annotations(store, slide, _exported(tmp_path / f"{i}.geojson", slide, objects), predictor, TILE)
        assert (report.added, report.already_there) == (4, 0)
    assert store.counts() == {("a.png", "Stroma"): (1, 1), ("a.png", "Tumor"): (3, 3),
                              ("b.png", "Stroma"): (1, 1), ("b.png", "Tumor"): (3, 3)}
    embeddings = lambda: sorted(p.name for p in store.cache.store_dir.glob("*.zarr"))  # noqa: E731
    assert len(embeddings()) == 8  # one tile centred on each object
    assert store.remove_object("0-1") == 1
    assert len(store.objects(slides=["a.png"])) == 3 and len(embeddings()) == 7
    assert store.remove_slide("b.png") == 4
    assert [o.object_id for o in ProjectStore(tmp_path / "slides").objects()] == ["0-0", "0-2", "0-3"]
    assert len(embeddings()) == 3
    assert len(store.examples(classes=["Tumor"])) == 2
    assert store.summary().splitlines()[1:] == ["  a.png  Stroma  1 object(s), 1 tile(s)",
                                                "  a.png  Tumor   2 object(s), 2 tile(s)"]


def test_a_geojson_our_exporter_wrote_becomes_examples_once(tmp_path, slides, predictor):
    store = ProjectStore(tmp_path / "slides")
    objects = [_disc(CENTRES[0], 40), _disc(CENTRES[1], 30, "Stroma"), _disc(CENTRES[2], 5),  # too small
               _disc((256, 256), 200, downsample=1.0)]  # accepted at full resolution, larger than a tile there
    path = _exported(tmp_path / "a.geojson", slides[0], objects)
    report = import_annotations(store, slides[0], path, predictor, TILE)
    assert (report.added, report.too_small, report.too_large) == (2, 1, 1)
    stored = store.objects()
    assert {o.class_name for o in stored} == {"Tumor", "Stroma"} and all(o.origin == "imported" for o in stored)
    examples = store.examples(stored)
    area = polygon_area(objects[0].polygons[0])
    assert abs(int(examples[0].target.sum()) - area) < 0.02 * area
    x, y, positive = examples[0].clicks[0]
    assert positive and examples[0].target[int(y), int(x)]  # the clicker's first click: inside
    again = import_annotations(store, slides[0], path, predictor, TILE)
    assert (again.added, again.already_there, again.too_small + again.too_large) == (0, 2, 2) and len(store) == 2
    # QuPath's own file (no napari-sam-histo block, no ids): its objects are recognised by their region
    qupath = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [objects[0].polygons[0].exterior.tolist()]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
        {"type": "Feature",
         "geometry": {"type": "Polygon", "coordinates": [_disc(CENTRES[3]).polygons[0].exterior.tolist()]},
         "properties": {"objectType": "annotation"}}]}
    (tmp_path / "qupath.geojson").write_text(json.dumps(qupath))
    report = import_annotations(store, slides[0], tmp_path / "qupath.geojson", predictor, TILE)
    assert (report.added, report.already_there) == (1, 1)
    assert store.counts()[("a.png", "Unclassified")] == (1, 1)


def test_a_copied_slide_takes_the_annotations_made_on_it(tmp_path, slides, predictor):
    """A copy of a slide (another path and time, so another file identity, the same name) is the
    same slide: the objects exported from the original are imported."""
    import shutil

    copy = tmp_path / "copied" / "a.png"
    copy.parent.mkdir()
    shutil.copy(slides[0], copy)
    assert open_image(copy).identity != open_image(slides[0]).identity
    path = _exported(tmp_path / "a.geojson", slides[0], [_disc(CENTRES[0], 40)])
    report = import_annotations(ProjectStore(tmp_path / "copied"), copy, path, predictor, TILE)
    assert report.added == 1


def test_our_label_image_becomes_examples(tmp_path, slides, predictor):
    from napari_sam_histo.annotations.label_tiff import write_label_tiff

    store = ProjectStore(tmp_path / "slides")
    objects = [_disc(CENTRES[0]), _disc(CENTRES[1], class_name="Stroma"), _disc(CENTRES[2])]
    path = write_label_tiff(tmp_path / "labels.tif", objects, (512, 512), {"Tumor": 1, "Stroma": 2})
    report = import_annotations(store, slides[0], path, predictor, TILE)
    assert report.added == 3 and store.counts() == {("a.png", "Stroma"): (1, 1), ("a.png", "Tumor"): (2, 2)}
    area = polygon_area(objects[1].polygons[0])
    stroma = store.examples(classes=["Stroma"])[0]
    assert abs(int(stroma.target.sum()) - area) < 0.03 * area


def _bad_inputs(tmp_path, slides, monkeypatch):
    """(file, what its message must say) for each kind of bad input."""
    outside = _exported(tmp_path / "outside.geojson", slides[0], [_disc(CENTRES[0]), _disc((600, 100))])
    other = _exported(tmp_path / "other.geojson", slides[1], [_disc(CENTRES[0])])
    (tmp_path / "empty.geojson").write_bytes(b"")
    (tmp_path / "broken.geojson").write_bytes(b"\x00\x01 not json")
    (tmp_path / "nothing.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    (tmp_path / "plain.tif").write_bytes(b"II*\x00garbage")
    from napari_sam_histo.annotations.label_tiff import write_label_tiff

    big = write_label_tiff(tmp_path / "big.tif", [_disc((700, 700))], (800, 800), {"Tumor": 1})
    # a label image whose objects record their slide (as the GeoJSON's do), made for the other slide
    made_on_b = {SLIDE_NAME: "b.png", SLIDE_IDENTITY: open_image(slides[1]).identity}
    other_labels = write_label_tiff(tmp_path / "other.tif", [_disc(CENTRES[0], **made_on_b)], (512, 512), {"Tumor": 1})
    return [(outside, "outside a.png"), (other, "made for slide b.png"), (tmp_path / "empty.geojson", "empty"),
            (tmp_path / "broken.geojson", "not valid JSON"), (tmp_path / "nothing.geojson", "no annotated region"),
            (tmp_path / "plain.tif", "no napari-sam-histo label metadata"), (big, "outside a.png"),
            (other_labels, "made for slide b.png"),
            (tmp_path / "missing.geojson", "not found")]


def test_bad_input_names_the_file_and_changes_nothing(tmp_path, slides, predictor, monkeypatch):
    store = ProjectStore(tmp_path / "slides")
    import_annotations(store, slides[0], _exported(tmp_path / "good.geojson", slides[0], [_disc(CENTRES[3])]),
                       predictor, TILE)
    before = _files(store)
    for path, says in _bad_inputs(tmp_path, slides, monkeypatch):
        with pytest.raises(InputError) as caught:
            import_annotations(store, slides[0], path, predictor, TILE)
        message = str(caught.value)
        assert path.name in message and says in message, message
        assert _files(store) == before and len(ProjectStore(tmp_path / "slides")) == 1
    fresh = tmp_path / "new project"
    fresh.mkdir()
    with pytest.raises(InputError, match="outside a.png"):
        import_annotations(ProjectStore(fresh), slides[0], tmp_path / "outside.geojson", predictor, TILE)
    assert list(fresh.iterdir()) == []  # not even an empty store
    with pytest.raises(InputError, match="not writable") as caught:  # a folder no one may create files in
        import_annotations(ProjectStore("/proc/self"), slides[0], tmp_path / "good.geojson", predictor, TILE)
    assert "/proc/self" in str(caught.value)
    with pytest.raises(InputError, match="does not exist"):
        ProjectStore(tmp_path / "nowhere")


def test_a_full_disk_half_way_through_an_import_leaves_the_project_as_it_was(tmp_path, slides, predictor, monkeypatch):
    store = ProjectStore(tmp_path / "slides")
    before = _files(store)
    writes = []
    original = project_store._write_record

    def second_fails(path, record):
        writes.append(path)
        if len(writes) == 2:
            raise DiskFullError(f"Cannot write {path}: the disk is full.")
        original(path, record)

    monkeypatch.setattr(project_store, "_write_record", second_fails)
    objects = [_disc(c, id=f"o{i}") for i, c in enumerate(CENTRES)]
    with pytest.raises(DiskFullError):
        import_annotations(store, slides[0], _exported(tmp_path / "a.geojson", slides[0], objects), predictor, TILE)
    assert len(writes) == 2 and len(store) == 0 and len(ProjectStore(tmp_path / "slides")) == 0
    assert not list(store.objects_dir.glob("*.json")) and not list(store.objects_dir.glob("*.npz"))
    assert set(_files(store)) - set(before) <= {"project.json"}  # the manifest of the new project only


def test_a_store_of_a_newer_version_or_of_something_else_is_refused_with_a_clear_message(tmp_path):
    folder = tmp_path / ".sam-histo-project"
    folder.mkdir()
    (folder / ".project.ab12.json").write_text('{"form')  # a creation cut short: a new, empty project
    assert len(ProjectStore(tmp_path)) == 0
    (folder / "objects").mkdir()
    with pytest.raises(InputError, match="holds no project.json"):
        ProjectStore(tmp_path)
    (folder / "project.json").write_text(json.dumps({"format": "napari-sam-histo-project", "version": 2}))
    with pytest.raises(InputError, match="newer napari-sam-histo") as caught:
        ProjectStore(tmp_path)
    assert str(folder / "project.json") in str(caught.value)
    (folder / "project.json").write_text(json.dumps({"format": "something-else", "version": 1}))
    with pytest.raises(InputError, match="not a napari-sam-histo project manifest"):
        ProjectStore(tmp_path)
    (folder / "project.json").write_text("{not json")
    with pytest.raises(InputError, match="Cannot read the project manifest"):
        ProjectStore(tmp_path)


def test_whole_slides_are_held_out_and_with_one_slide_its_last_accepted_objects(tmp_path, slides, predictor):
    store = ProjectStore(tmp_path / "slides")
    for i, slide in enumerate(slides):
        objects = [_disc(c, id=f"{i}-{j}") for j, c in enumerate(CENTRES)]
        import_annotations(store, slide, _exported(tmp_path / f"{i}.geojson", slide, objects), predictor, TILE)
    split = split_by_slide(store.objects())
    assert split.by == "slide" and split.held_out_slides == ["b.png"]  # the slide annotated last
    assert {o.slide.name for o in split.training} == {"a.png"} and len(split.held_out) == 4
    one = split_by_slide(store.objects(slides=["a.png"]), held_out_fraction=0.5)
    assert one.by == "last-accepted" and [o.object_id for o in one.held_out] == ["0-2", "0-3"]
    assert [o.object_id for o in one.training] == ["0-0", "0-1"]
    with pytest.raises(InputError, match="Too few objects in .*slides"):
        split_by_slide(store.objects()[:1], project=store.root)
