"""A project's training set: every object a pathologist accepted (or imported) on the slides of a
project, kept as training examples across slides and sessions (``docs/project.md``).

A project is a folder (the slides' folder, or one the user picks); its store is the hidden folder
``<project>/.sam-histo-project/``::

    project.json          the manifest: {"format": "napari-sam-histo-project", "version": 1, ...}
    objects/<entry>.json  one accepted object: class, slide, provenance, its tiles (box, embedding key, clicks)
                          (``project_records``)
    objects/<entry>.<n>.npz  its masks, one per tile at the tile's resolution (compressed; named by its .json)
    embeddings/           the tiles' embeddings (``EmbeddingCache`` store, float16), keyed as the annotator keys them

One file per object, no journal: an object is written as its embeddings, then its masks, then its
``.json``, each by an atomic rename, so the ``.json`` is the commit. A crash at any point leaves
either the whole object (its ``.json`` names only files already written) or no object (masks or
embeddings nobody names, removed once older than ``ORPHAN_AGE_S``); the manifest is written once,
when the project is created, and never again, so no crash can break it. Listing the store is a scan
of ``objects/`` (hundreds of small files, read once per ``ProjectStore`` and kept), which another
process adding objects at the same time cannot corrupt; a journal with compaction would need a lock
between processes and a recovery step for nothing more.

An object added again (same slide and id) gets masks under a new name and then its new ``.json``:
until that rename the old version stays whole. Removing an object deletes its ``.json`` first (the
commit of the removal), then its masks, then the embeddings no other object uses.

``training.project_import`` fills the store from existing annotations; ``examples`` feeds training;
``training.project_split`` holds out whole slides (or, with one slide, its last-accepted objects)
for the never-worse check.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, write_text
from ..engine.embedding_cache import Embedding, EmbeddingCache, EmbeddingKey
from ..engine.predictor import Predictor
from ..errors import InputError
from .examples import AdaptationExample
from .project_objects import SlideRef, StoredObject, TileExample
from .project_records import VERSION, object_record, read_object_record

FORMAT = "napari-sam-histo-project"
FOLDER = ".sam-histo-project"
MANIFEST = "project.json"
OBJECTS = "objects"
EMBEDDINGS = "embeddings"
# masks and embeddings no object names (a crash between writing them and the object's .json) are
# removed when they are older than this: younger ones may belong to an object another process is
# writing now
ORPHAN_AGE_S = 3600.0
MEMORY_BYTES = 64 << 20  # embeddings read back are handed to the caller; the store keeps few
ORIGINS = ("accepted", "imported")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _entry_name(slide_identity: str, object_id: str) -> str:
    return hashlib.sha256(f"{slide_identity}|{object_id}".encode()).hexdigest()[:24]


class ProjectStore:
    """The training set of the project folder ``root`` (see the module). Thread-safe; several
    processes may add objects at the same time (each object is its own files)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"Project folder {self.root} does not exist or is not a folder.")
        self.folder = self.root / FOLDER
        self.manifest_path = self.folder / MANIFEST
        self.objects_dir = self.folder / OBJECTS
        self.manifest = self._read_manifest()
        self.cache = EmbeddingCache(MEMORY_BYTES, store_dir=self.folder / EMBEDDINGS, store_dtype="float16",
                                    max_disk_bytes=None)  # training data: never evicted
        self._lock = threading.RLock()  # the objects read (readers take only this one, briefly)
        # adding and removing (held while files are written: an embedding that an object being added
        # names is never removed as unused by a removal at the same moment)
        self._write_lock = threading.RLock()
        self._last_time = ""
        self.problems: list[str] = []  # object files that could not be read, in words
        self._objects: dict[str, StoredObject] = {}
        self.refresh()

    # -- the manifest --------------------------------------------------------------------------
    def _read_manifest(self) -> dict | None:
        """The manifest, or None for a folder with no store yet; ``InputError`` naming it when it is
        not ours, unreadable, or of a newer version."""
        if not self.manifest_path.exists():
            # (hidden files are a creation cut short: a probe, a temporary manifest)
            if self.folder.is_dir() and any(not p.name.startswith(".") for p in self.folder.iterdir()):
                raise InputError(f"{self.folder} holds no {MANIFEST}: it is not a napari-sam-histo project "
                                 "store (or it was damaged). Move it aside to start a new project here.")
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise InputError(f"Cannot read the project manifest {self.manifest_path} ({err}).") from err
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise InputError(f"{self.manifest_path} is not a napari-sam-histo project manifest "
                             f"(its format is not {FORMAT!r}).")
        version = manifest.get("version")
        if not isinstance(version, int) or version < 1:
            raise InputError(f"{self.manifest_path}: version {version!r} is not a valid project format version.")
        if version > VERSION:
            raise InputError(f"{self.manifest_path} was written by a newer napari-sam-histo (project format "
                             f"version {version}; this one reads up to {VERSION}). Update napari-sam-histo "
                             "to use this project.")
        return manifest

    def check_writable(self) -> None:
        """Create the store if needed; ``InputError`` naming the folder when it cannot be written."""
        with self._lock:
            try:
                self.folder.mkdir(exist_ok=True)
                probe = self.folder / f".probe-{uuid.uuid4().hex}"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as err:
                raise InputError(f"The project folder {self.root} is not writable ({err.strerror or err}); "
                                 "choose a folder you can write to for the project.") from err
            if self.manifest is None:  # first the manifest: a store is never without one
                manifest = {"format": FORMAT, "version": VERSION, "created": _now()}
                write_text(self.manifest_path, json.dumps(manifest, indent=1))
                self.manifest = manifest
            try:
                self.objects_dir.mkdir(exist_ok=True)
            except OSError as err:
                raise InputError(f"Cannot create {self.objects_dir} ({err.strerror or err}).") from err

    # -- reading -------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Read the objects from disk again (another process may have added or removed some), and
        remove what a crashed write left (``ORPHAN_AGE_S``)."""
        found, problems = {}, []
        try:
            records = sorted(self.objects_dir.glob("*.json")) if self.objects_dir.is_dir() else []
        except OSError as err:
            raise InputError(f"Cannot read the project's objects in {self.objects_dir} "
                             f"({err.strerror or err}).") from err
        if records:
            for path in records:
                if path.name.startswith("."):
                    continue  # a record being written (or left by a killed writer): not an object
                try:
                    found[path.stem] = read_object_record(path)
                except InputError as err:
                    problems.append(str(err))
        with self._lock:
            self._objects, self.problems = found, problems
        self._remove_orphans(ORPHAN_AGE_S)

    def objects(self, slides=None, classes=None) -> list[StoredObject]:
        """The objects, oldest accepted first; ``slides`` (names or identities) and ``classes``
        (names) keep only those."""
        with self._lock:
            found = list(self._objects.values())
        if slides is not None:
            wanted = set(slides)
            found = [o for o in found if o.slide.name in wanted or o.slide.identity in wanted]
        if classes is not None:
            wanted = set(classes)
            found = [o for o in found if o.class_name in wanted]
        return sorted(found, key=lambda o: (o.accepted_at, o.entry))

    def __len__(self) -> int:
        return len(self._objects)

    def counts(self) -> dict[tuple[str, str], tuple[int, int]]:
        """{(slide name, class): (objects, tiles)}, sorted."""
        out: dict[tuple[str, str], list[int]] = {}
        for obj in self.objects():
            row = out.setdefault((obj.slide.name, obj.class_name), [0, 0])
            row[0] += 1
            row[1] += len(obj.tiles)
        return {key: (n, t) for key, (n, t) in sorted(out.items())}

    def summary(self) -> str:
        """The objects per slide and class, in words (a CLI's or a dock's listing)."""
        counts = self.counts()
        lines = [f"{self.root}: {len(self)} object(s) on {len(self.slides())} slide(s)"
                 + ("" if counts else "; accept objects on a slide or import annotations to add some")]
        width = max((len(slide) for slide, _ in counts), default=0)
        cwidth = max((len(name) for _, name in counts), default=0)
        lines += [f"  {slide:<{width}}  {name:<{cwidth}}  {n} object(s), {tiles} tile(s)"
                  for (slide, name), (n, tiles) in counts.items()]
        lines += [f"  left out: {problem}" for problem in self.problems]
        return "\n".join(lines)

    def slides(self) -> list[SlideRef]:
        """The project's slides, in the order their first object was accepted."""
        seen: dict[str, SlideRef] = {}
        for obj in self.objects():
            seen.setdefault(obj.slide.identity, obj.slide)
        return list(seen.values())

    def masks(self, obj: StoredObject) -> list[np.ndarray]:
        """The object's masks, one per tile (bool, at the tile's resolution)."""
        path = self.objects_dir / obj.masks
        try:
            with np.load(path) as data:
                return [np.asarray(data[f"tile{i}"], bool) for i in range(len(obj.tiles))]
        except (OSError, KeyError, ValueError) as err:
            raise InputError(f"{path}: the masks of object {obj.object_id} on {obj.slide.name} cannot be read "
                             f"({err}); remove the object and accept or import it again.") from err

    def embedding(self, key: EmbeddingKey) -> Embedding | None:
        """The stored embedding of ``key`` (float32), or None when the store has none."""
        if not self.cache.stored(key):
            return None

        def missing():
            raise LookupError(key)

        try:
            return self.cache.get_or_compute(key, missing)
        except LookupError:
            return None  # there but unreadable, or of another model

    def examples(self, objects: list[StoredObject] | None = None, *, slides=None, classes=None,
                 predictor: Predictor | None = None) -> list[AdaptationExample]:
        """Training examples (one per tile of each object; oldest object first) of ``objects``
        (default: every object, or those of ``slides``/``classes``). ``predictor``: keep only the
        objects embedded by its model (name, weights, preprocessing); the others need their tiles
        encoded again. No encoder runs: every embedding comes from the store. An embedding or mask
        that cannot be read is an ``InputError`` naming the object."""
        chosen = self.objects(slides, classes) if objects is None else list(objects)
        if predictor is not None:
            chosen = [o for o in chosen if self.embedded_with(o, predictor)]
        out = []
        for obj in chosen:
            for tile, mask in zip(obj.tiles, self.masks(obj)):
                embedding = self.embedding(tile.embedding_key)
                if embedding is None:
                    raise InputError(f"The embedding of object {obj.object_id} on {obj.slide.name} (tile "
                                     f"{tile.box.key()}) is missing from {self.cache.store_dir}; remove the "
                                     "object, or import its slide's annotations again.")
                out.append(AdaptationExample(embedding, mask, tile.clicks))
        return out

    @staticmethod
    def embedded_with(obj: StoredObject, predictor: Predictor) -> bool:
        """Whether ``obj``'s embeddings are ``predictor``'s (same model, weights and preprocessing)."""
        return all(tile.embedding_key == predictor.key_for(tile.embedding_key.image, tile.embedding_key.tile)
                   for tile in obj.tiles)

    def find(self, slide_identity: str, object_id: str | None = None, signature: tuple | None = None):
        """The stored object of ``slide_identity`` with ``object_id`` (or, given, the same
        ``signature``), or None."""
        entry = self._objects.get(_entry_name(slide_identity, object_id)) if object_id is not None else None
        if entry is not None or signature is None:
            return entry
        wanted = tuple(signature)
        return next((o for o in self.objects() if o.slide.identity == slide_identity and o.signature == wanted), None)

    # -- writing -------------------------------------------------------------------------------
    def _accepted_at(self) -> str:
        """Now, strictly after the previous object this store wrote (objects keep their order)."""
        now = _now()
        with self._lock:
            if now <= self._last_time:
                last = datetime.fromisoformat(self._last_time)
                now = datetime.fromtimestamp(last.timestamp() + 1e-6, UTC).isoformat(timespec="microseconds")
            self._last_time = now
        return now

    def add_object(self, object_id: str, class_name: str, slide: SlideRef, tiles: list[TileExample],
                   predictor: Predictor, origin: str = "accepted", decoder: dict | None = None,
                   signature: tuple = ()) -> StoredObject | None:
        """Keep an object (``tiles``: ``accepted_tiles`` of an accepted object, or the tile an import
        centred on it); an object of the same slide and id is replaced. None when no tile has a
        mask (nothing to learn from). ``predictor``: the one that made the embeddings (model name,
        weights hash, keys). ``decoder``: what drew it (``Provenance.properties()``). Atomic: see
        the module; ``InputError`` (``DiskFullError`` for a full disk) naming the file when it cannot
        be written, and then nothing of the object is kept."""
        if origin not in ORIGINS:
            raise ValueError(f"origin must be one of {ORIGINS}, not {origin!r}")
        tiles = [t for t in tiles if np.any(t.target)]
        if not tiles:
            return None
        with self._write_lock:
            return self._add(object_id, class_name, slide, tiles, predictor, origin, decoder, signature)

    def _add(self, object_id, class_name, slide, tiles, predictor, origin, decoder, signature) -> StoredObject:
        self.check_writable()
        entry = _entry_name(slide.identity, object_id)
        keys = [predictor.key_for(slide.identity, t.box.key()) for t in tiles]
        written: list[EmbeddingKey] = []
        try:
            for key, tile in zip(keys, tiles):  # first: an object never names an embedding not on disk
                if self.cache.stored(key, verify=True):
                    continue
                if not self.cache.store(key, tile.embedding):
                    raise InputError(f"Cannot keep object {object_id} of {slide.name} in the project: its tile "
                                     f"embedding could not be written to {self.cache.store_dir} "
                                     f"({self.cache.save_error}). Nothing of the object was kept.")
                written.append(key)
            return self._commit(entry, object_id, class_name, slide, tiles, keys, predictor, origin, decoder,
                                signature)
        except BaseException:
            self._remove_unused_embeddings(written)
            raise

    def _commit(self, entry, object_id, class_name, slide, tiles, keys, predictor, origin, decoder,
                signature) -> StoredObject:
        """The object's masks, then its record (the commit), its embeddings being stored already."""
        record = object_record(object_id, class_name, origin, self._accepted_at(), slide, predictor, decoder,
                               signature, tiles, keys)
        masks_name = f"{entry}.{uuid.uuid4().hex[:8]}.npz"  # a new name each time: a replaced object's
        record["masks"] = masks_name  # old masks stay whole until the record naming the new ones is in place
        masks_path, json_path = self.objects_dir / masks_name, self.objects_dir / f"{entry}.json"
        with atomic_path(masks_path) as tmp, open(tmp, "wb") as stream:
            np.savez_compressed(stream, **{f"tile{i}": np.asarray(t.target, bool) for i, t in enumerate(tiles)})
        try:
            _write_record(json_path, record)
        except BaseException:
            masks_path.unlink(missing_ok=True)
            raise
        stored = read_object_record(json_path)
        with self._lock:
            replaced = self._objects.get(entry)
            self._objects[entry] = stored
        if replaced is not None:
            (self.objects_dir / replaced.masks).unlink(missing_ok=True)
            self._remove_unused_embeddings([t.embedding_key for t in replaced.tiles])
        return stored

    def remove_object(self, object_id: str, slide_identity: str | None = None) -> int:
        """Remove the object ``object_id`` (of ``slide_identity``, or of any slide); returns how many
        objects went."""
        gone = [o for o in self.objects() if o.object_id == object_id
                and (slide_identity is None or o.slide.identity == slide_identity)]
        return self._remove(gone)

    def remove_slide(self, slide: str) -> int:
        """Remove every object of ``slide`` (its name or identity); returns how many went."""
        return self._remove(self.objects(slides=[slide]))

    def _remove(self, gone: list[StoredObject]) -> int:
        with self._write_lock:
            for obj in gone:
                (self.objects_dir / f"{obj.entry}.json").unlink(missing_ok=True)  # the commit of the removal
                with self._lock:
                    self._objects.pop(obj.entry, None)
                (self.objects_dir / obj.masks).unlink(missing_ok=True)
            self._remove_unused_embeddings([t.embedding_key for o in gone for t in o.tiles])
        return len(gone)

    def _used_digests(self) -> set[str]:
        with self._lock:
            return {t.embedding_key.digest() for o in self._objects.values() for t in o.tiles}

    def _remove_unused_embeddings(self, keys: list[EmbeddingKey]) -> None:
        used = self._used_digests()
        for key in keys:
            if key.digest() not in used:
                _remove_folder(self.cache.store_dir / f"{key.digest()}.zarr")

    def _remove_orphans(self, min_age_s: float) -> None:
        """Masks and embeddings no object names, older than ``min_age_s`` (a crashed write's)."""
        if not self.folder.is_dir():
            return
        now, used = time.time(), self._used_digests()
        with self._lock:
            named = {o.masks for o in self._objects.values()}
        candidates = []
        if self.objects_dir.is_dir():
            candidates += [p for p in self.objects_dir.glob("*.npz") if p.name not in named]
            candidates += list(self.objects_dir.glob(".*.json"))  # records a killed writer left half-written
        if self.cache.store_dir.is_dir():
            candidates += [p for p in self.cache.store_dir.glob("*.zarr") if p.stem not in used]
        for path in candidates:
            try:
                if now - path.stat().st_mtime < min_age_s:
                    continue
            except OSError:
                continue
            if path.suffix == ".zarr":
                _remove_folder(path)
            else:
                with contextlib.suppress(OSError):  # a project on a read-only share: what is left stays, harmless
                    path.unlink(missing_ok=True)


def _write_record(path: Path, record: dict) -> None:
    """An object's .json (the commit of the object; atomic)."""
    write_text(path, json.dumps(record, indent=1))


def _remove_folder(path: Path) -> None:
    """Remove an embedding entry: renamed aside first (atomic), so a reader sees all or nothing."""
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.removed.tmp")
    try:
        os.replace(path, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)
