"""A project's class table: each class name has one pixel value (id) and one colour in every export.

The table is a small JSON file, ``sam-histo-classes.json``, in the slide's folder, so the slides of
one folder share it (as the classes of a QuPath project do). An id, once given to a name, never
changes and is never given to another name: a new class gets the next free id (``next_id`` in the
file, so an id stays used even if its line is deleted by hand). Every addition is written at once
(atomically, ``atomic.py``), after re-reading the file so that classes added meanwhile by another
window or program are kept.

A table that cannot be read is an ``InputError`` naming the file: nothing is renumbered silently.
When the slide's folder cannot be written (a read-only share), the table lives in the user cache
under the folder's name (``fallback_path``), seeded from the folder's table when there is one; the
table's ``notice`` says so (for the caller to show: the writers warn with it).

File layout::

    {"format": "napari-sam-histo-classes", "format_version": 1, "next_id": 3,
     "classes": [{"id": 1, "name": "Tumor", "color": [200, 0, 0]},
                 {"id": 2, "name": "Stroma", "color": [150, 200, 150]}]}
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_path
from ..errors import DiskFullError, InputError
from .objects import DEFAULT_CLASSES, next_class_color

TABLE_NAME = "sam-histo-classes.json"
FORMAT = "napari-sam-histo-classes"
FORMAT_VERSION = 1
MAX_ID = 65535  # label images are uint8 or uint16; 0 is the background


@dataclass(frozen=True)
class ClassEntry:
    id: int
    name: str
    colour: tuple[int, int, int]


def _writable(folder: Path) -> bool:
    """Whether files can be created in ``folder`` (or, when it does not exist yet, in the nearest
    existing folder above it, where it would be created)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def fallback_path(folder: str | Path) -> Path:
    """Where the table of ``folder`` is kept when ``folder`` cannot be written: the user cache,
    under the folder's name and a hash of its full path."""
    from ..models.weights import cache_dir

    folder = Path(folder).expanduser().absolute()
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", folder.name)[:60] or "folder"
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    return cache_dir() / "class-tables" / f"{safe}-{digest}-{TABLE_NAME}"


def class_table_path(place: str | Path) -> Path:
    """The class table of a slide (or of a file being written: the table of its folder), or of a
    folder given as such: ``<folder>/sam-histo-classes.json`` when the folder can be written; else
    the user-cache copy (``fallback_path``) when one was made; else the folder's own table (read
    where it is; its first addition goes to the cache)."""
    place = Path(place).expanduser()
    folder = place if place.is_dir() else place.parent
    path = folder / TABLE_NAME
    if _writable(folder):  # the table is replaced by a rename: the folder's permission is what counts
        return path
    fallback = fallback_path(folder)
    return fallback if fallback.exists() else path


def _colour(value, where: str) -> tuple[int, int, int]:
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)):
        raise ValueError(f"{where}: colour {value!r} is not three integers 0..255")
    return tuple(value)


def _parse(data, path: Path) -> tuple[list[ClassEntry], int]:
    """(entries, next_id) of a table file's JSON; ``ValueError`` saying what is wrong."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f'not a class table (expected "format": "{FORMAT}")')
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"format version {data.get('format_version')!r}; this version reads {FORMAT_VERSION}")
    rows = data.get("classes")
    if not isinstance(rows, list):
        raise ValueError('"classes" is not a list')
    entries, ids, names = [], set(), set()
    for n, row in enumerate(rows, 1):
        where = f"class {n}"
        if not isinstance(row, dict):
            raise ValueError(f"{where} is not an object")
        number, name = row.get("id"), row.get("name")
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= MAX_ID:
            raise ValueError(f"{where}: id {number!r} is not an integer 1..{MAX_ID}")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}: name {name!r} is not a non-empty text")
        if number in ids:
            raise ValueError(f"id {number} is given to two classes")
        if name in names:
            raise ValueError(f"class {name!r} is listed twice")
        ids.add(number)
        names.add(name)
        entries.append(ClassEntry(number, name, _colour(row.get("color"), f"{where} ({name})")))
    next_id = data.get("next_id", 1)
    if not isinstance(next_id, int) or isinstance(next_id, bool) or next_id < 1:
        raise ValueError(f'"next_id" {next_id!r} is not an integer >= 1')
    return entries, max([next_id] + [e.id + 1 for e in entries])


def _read(path: Path) -> tuple[list[ClassEntry], int] | None:
    """The table in ``path``; ``None`` when there is no file; ``InputError`` naming it when it
    cannot be read or is not a class table."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except IsADirectoryError as err:
        raise InputError(f"Class table {path} is a folder, not a file.") from err
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"Class table {path} cannot be read ({getattr(err, 'strerror', None) or err}). "
                         "Class ids are never renumbered silently: make the file readable and try again.") from err
    try:
        return _parse(json.loads(text), path)
    except ValueError as err:  # json.JSONDecodeError is a ValueError
        raise InputError(f"Class table {path} is not usable: {err}. Class ids are never renumbered "
                         "silently: repair the file (or restore it from a backup) and try again.") from err


class ClassTable:
    """Class name -> id (pixel value) and colour, kept in one file (``path``).

    ``load`` reads it (a missing file is an empty table); ``id_of`` and ``colour_of`` add an unknown
    name and write the table at once; ``notice`` is non-empty when the table had to be kept
    somewhere other than where it was asked for (a read-only folder)."""

    def __init__(self, path: str | Path | None = None, entries=(), next_id: int = 1) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, ClassEntry] = {}
        self._next_id = next_id
        self.notice = ""
        for entry in entries:
            self._put(entry)

    @classmethod
    def load(cls, path: str | Path) -> ClassTable:
        """The table in file ``path`` (empty when the file does not exist yet)."""
        path = Path(path).expanduser()
        found = _read(path)
        entries, next_id = found if found is not None else ([], 1)
        return cls(path, entries, next_id)

    @classmethod
    def for_slide(cls, place: str | Path) -> ClassTable:
        """The table shared by the slides of ``place``'s folder (``class_table_path``); a slide in a
        read-only folder whose table was copied to the cache gets the copy."""
        path = class_table_path(place)
        table = cls.load(path)
        home = (Path(place).expanduser() if Path(place).expanduser().is_dir() else Path(place).expanduser().parent)
        if path != home / TABLE_NAME:
            table.notice = (f"{home} cannot be written; its class table is kept in {path} (for this "
                            "user only).")
        return table

    # -- reading ---------------------------------------------------------------------------------
    def _put(self, entry: ClassEntry) -> None:
        self._entries[entry.name] = entry
        self._next_id = max(self._next_id, entry.id + 1)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[ClassEntry]:
        """Every class, by id."""
        return sorted(self._entries.values(), key=lambda e: e.id)

    def names(self) -> list[str]:
        """Every class name, by id."""
        return [e.name for e in self.entries()]

    def ids(self) -> dict[str, int]:
        """name -> id of every class, by id."""
        return {e.name: e.id for e in self.entries()}

    def colours(self) -> dict[str, tuple[int, int, int]]:
        return {e.name: e.colour for e in self.entries()}

    def get(self, name: str) -> ClassEntry | None:
        """The class ``name``, or ``None`` (adds nothing)."""
        return self._entries.get(name)

    # -- adding ----------------------------------------------------------------------------------
    def id_of(self, name: str, colour=None) -> int:
        """The id of ``name``; an unknown name is added (with ``colour``, else its default colour)
        under the next free id, and the table is written."""
        return self.add(name, colour).id

    def ids_for(self, objects) -> dict[str, int]:
        """``ids()`` after adding the class of each of ``objects`` (with the object's colour)."""
        for obj in objects:
            self.add(obj.class_name, obj.color)
        return self.ids()

    def colour_of(self, name: str) -> tuple[int, int, int]:
        """The colour of ``name``; an unknown name is added (with its default colour)."""
        return self.add(name).colour

    def add(self, name: str, colour=None) -> ClassEntry:
        """The entry of ``name``, added and written when new. An existing class keeps its id and
        colour whatever ``colour`` says (``set_colour`` changes a colour)."""
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"A class name must be a non-empty text, not {name!r}.")
        if name in self._entries:
            return self._entries[name]
        self._merge_file()  # classes another window added meanwhile keep their ids
        if name not in self._entries:
            if self._next_id > MAX_ID:
                raise InputError(f"Class table {self.path}: no free id left for class {name!r} "
                                 f"(ids go up to {MAX_ID}).")
            used = [e.colour for e in self._entries.values()]
            chosen = tuple(int(c) for c in colour[:3]) if colour is not None else (
                DEFAULT_CLASSES.get(name) or next_class_color(used))
            self._put(ClassEntry(self._next_id, name, chosen))
            self.save()
        return self._entries[name]

    def set_colour(self, name: str, colour) -> ClassEntry:
        """Give class ``name`` (added when new) the colour ``colour`` (RGB 0..255); its id stays."""
        entry = self.add(name, colour)
        colour = tuple(int(c) for c in colour[:3])
        if entry.colour != colour:
            self._merge_file()
            entry = ClassEntry(entry.id, name, colour)
            self._put(entry)
            self.save()
        return entry

    def _merge_file(self) -> None:
        """Take in the classes the file holds now; a name or an id that the file gives differently
        from this table (the file was edited meanwhile) is an ``InputError``: never a renumbering."""
        if self.path is None:
            return
        found = _read(self.path)
        if found is None:
            return
        entries, next_id = found
        by_id = {e.id: e for e in self._entries.values()}
        for entry in entries:
            mine = self._entries.get(entry.name)
            other = by_id.get(entry.id)
            if (mine is not None and mine.id != entry.id) or (other is not None and other.name != entry.name):
                raise InputError(
                    f"Class table {self.path} was changed while in use: it gives id {entry.id} to "
                    f"{entry.name!r}, but this table gives "
                    + (f"{entry.name!r} id {mine.id}" if mine is not None and mine.id != entry.id
                       else f"id {entry.id} to {other.name!r}")
                    + ". Class ids are never renumbered silently: restore the file, or reopen the slide to use it.")
            if mine is None:
                self._put(entry)
        self._next_id = max(self._next_id, next_id)

    # -- writing ---------------------------------------------------------------------------------
    def as_dict(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "next_id": self._next_id,
                "classes": [{"id": e.id, "name": e.name, "color": list(e.colour)} for e in self.entries()]}

    def save(self) -> Path | None:
        """Write the table atomically to ``path``; nothing for a table without a path. A folder that
        cannot be written sends the table to the user cache (``fallback_path``): ``path`` then says
        where it is and ``notice`` what happened, for the caller to show. A full disk is a
        ``DiskFullError`` naming the file."""
        if self.path is None:
            return None
        text = json.dumps(self.as_dict(), indent=1)
        try:
            with atomic_path(self.path, overwrite=True) as tmp:
                tmp.write_text(text, encoding="utf-8")
            return self.path
        except DiskFullError:
            raise
        except (InputError, OSError) as err:
            wanted = self.path
            fallback = fallback_path(wanted.parent)
            if wanted.parent == fallback.parent:  # the cache itself cannot be written
                raise InputError(f"Cannot write the class table {wanted}: {err}") from err
            with atomic_path(fallback, overwrite=True) as tmp:
                tmp.write_text(text, encoding="utf-8")
            self.path = fallback
            self.notice = (f"Cannot write the class table {wanted} ({getattr(err, 'strerror', None) or err}); "
                           f"it is kept in {fallback} instead (for this user only), so class ids stay the "
                           "same in this user's exports from that folder.")
            return fallback
