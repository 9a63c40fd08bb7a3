"""What a dask worker runs for ``embed``: tile batches through SAM's image encoder into the store.

Each worker builds the model once (``EncoderPlugin``, registered on every worker, holds one
``Predictor`` per ``ModelRecipe`` and a few open slides); a task is a batch of tiles of one slide.
Embeddings are computed by ``Predictor.embed`` and keyed by ``Predictor.key_for``, and written
through ``EmbeddingCache.store``: the annotator's own code, so its keys, layout and precision are
the store's. A tile already stored (another run, or an annotator working on the slide) is skipped;
every entry is written whole by rename, so a worker killed mid-batch leaves only invisible
temporary folders.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from distributed import WorkerPlugin, get_worker

PLUGIN_NAME = "napari-sam-histo-encoder"
_OPEN_SLIDES = 4  # slides a worker keeps open between batches


@dataclass(frozen=True)
class ModelRecipe:
    """What a worker needs to build the model (picklable): a registry name or checkpoint path on
    ``device`` ("cpu", "cuda", "auto"). ``random_weights`` builds random-init weights of that
    architecture ("tiny" for our test SAM): for tests and timing only, and keyed apart."""

    model: str = "vit_t"
    device: str = "cpu"
    random_weights: bool = False

    def load(self):
        from ..models.registry import get_spec, load_model, random_model

        if self.random_weights:
            arch = "tiny" if self.model.startswith("tiny") else get_spec(self.model).arch
            return random_model(arch, self.device)
        return load_model(self.model, self.device)


@dataclass
class BatchResult:
    tiles: int = 0
    already: int = 0  # found in the store (skipped)
    computed: int = 0
    failed: int = 0
    encode_s: float = 0.0
    errors: list[str] = field(default_factory=list)


class EncoderPlugin(WorkerPlugin):
    """Per worker: the model (built at its first batch) and the slides open there."""

    idempotent = True  # registering again (a second run on the same cluster) keeps the loaded model

    def __init__(self) -> None:
        self._predictors: dict[ModelRecipe, object] = {}
        self._sources: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()  # a worker may run several threads

    def __getstate__(self) -> dict:
        return {}  # sent to the workers empty: each builds its own model and opens its own slides

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def setup(self, worker) -> None:
        pass

    def teardown(self, worker) -> None:
        for source in self._sources.values():
            source.close()
        self._sources.clear()

    def predictor(self, recipe: ModelRecipe):
        from ..engine.predictor import Predictor

        with self._lock:
            if recipe not in self._predictors:
                # the decoder is never run here; an untrained one (random weights) is fine
                predictor = Predictor(recipe.load(), "sam", allow_untrained=True)
                # before the first batch, not during it: the worker's one encoder copy (one
                # runtime session, shared by its threads; read from the disk cache after the first
                # worker built it); never the decoder's, which never runs here
                predictor.prepare_encoder(background=False, decoder=False)
                self._predictors[recipe] = predictor
            return self._predictors[recipe]

    def source(self, path: str):
        from ..slides.reader import open_image

        with self._lock:
            if path in self._sources:
                self._sources.move_to_end(path)
                return self._sources[path]
            source = self._sources[path] = open_image(path)
            while len(self._sources) > _OPEN_SLIDES:
                self._sources.popitem(last=False)[1].close()
            return source


def _plugin() -> EncoderPlugin:
    plugin = get_worker().plugins.get(PLUGIN_NAME)
    if plugin is None:
        raise RuntimeError(f"the {PLUGIN_NAME} worker plugin is not registered (run through cohort.embed)")
    return plugin


def key_template(recipe: ModelRecipe):
    """``Predictor.key_for`` with blank image and tile: the driver fills them in (and learns early,
    from one worker, whether the model loads at all)."""
    return _plugin().predictor(recipe).key_for("", "")


def embed_batch(recipe: ModelRecipe, path: str, identity: str, store_dir: str, boxes) -> BatchResult:
    """Embed ``boxes`` of the slide at ``path`` into ``store_dir``, skipping stored ones."""
    from ..engine.embedding_cache import EmbeddingCache

    plugin = _plugin()
    predictor = plugin.predictor(recipe)
    result = BatchResult(tiles=len(boxes))
    cache = EmbeddingCache(max_bytes=0, store_dir=store_dir, max_disk_bytes=None)
    try:
        source = plugin.source(path)
        if source.identity != identity:
            raise RuntimeError(f"{path} is not the slide that was planned (changed since, or another file at that "
                               "path on this worker); workers must see the slides at the same paths")
    except Exception as err:  # noqa: BLE001 - a slide this worker cannot open costs its batch only
        result.failed = len(boxes)
        result.errors.append(f"{path}: {err}")
        return result
    for box in boxes:
        key = predictor.key_for(identity, box.key())
        if cache.stored(key, verify=True):
            result.already += 1
            continue
        started = time.perf_counter()
        try:
            embedding = predictor.embed(source.read_region(box))
        except Exception as err:  # noqa: BLE001 - one bad tile (damaged data) costs that tile only
            result.failed += 1
            result.errors.append(f"{source.name} {box.key()}: {type(err).__name__}: {err}")
            continue
        result.encode_s += time.perf_counter() - started
        if cache.store(key, embedding):
            result.computed += 1
        else:
            result.failed += 1
            result.errors.append(cache.save_error or f"could not write {box.key()} to {store_dir}")
    return result
