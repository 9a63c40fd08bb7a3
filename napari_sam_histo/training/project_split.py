"""Which of a project's objects train a decoder and which judge it (the never-worse check): whole
slides held out, the slides annotated last standing for the next slides the user will annotate; with
one slide only, its last-accepted objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .project_objects import StoredObject

HELD_OUT_FRACTION = 0.25  # of a project's objects, held out by default to judge its decoder


@dataclass(frozen=True)
class ProjectSplit:
    """Objects to train on and objects held out to judge the trained decoder. ``by``: "slide"
    (whole slides held out) or "last-accepted" (one slide: its newest objects held out)."""

    training: list
    held_out: list
    by: str

    @property
    def held_out_slides(self) -> list[str]:
        return sorted({o.slide.name for o in self.held_out})


def split_by_slide(objects: list[StoredObject], held_out_fraction: float = HELD_OUT_FRACTION,
                   min_held_out: int = 1, project: str | Path = "the project") -> ProjectSplit:
    """Hold out whole slides: the slides whose objects were accepted last (the newest work stands
    for the next slides) until at least ``held_out_fraction`` of the objects (and ``min_held_out``)
    are held out, at least one slide always left to train on. With one slide only, its
    last-accepted objects are held out instead. ``InputError`` naming ``project`` when there are
    too few objects to hold any out and train on the rest."""
    if not 0 < held_out_fraction < 1:
        raise InputError(f"held_out_fraction {held_out_fraction} must lie between 0 and 1.")
    objects = sorted(objects, key=lambda o: (o.accepted_at, o.entry))
    min_held_out = max(int(min_held_out), 1)
    wanted = max(min_held_out, math.ceil(held_out_fraction * len(objects)))
    by_slide: dict[str, list[StoredObject]] = {}
    for obj in objects:
        by_slide.setdefault(obj.slide.identity, []).append(obj)
    if len(by_slide) >= 2:
        newest_first = sorted(by_slide, key=lambda s: by_slide[s][-1].accepted_at, reverse=True)
        held: list[StoredObject] = []
        for identity in newest_first[:-1]:
            held += by_slide[identity]
            if len(held) >= wanted:
                break
        if len(held) >= min_held_out:
            chosen = {o.entry for o in held}
            return ProjectSplit([o for o in objects if o.entry not in chosen],
                                [o for o in objects if o.entry in chosen],
                                "slide")
    if len(by_slide) == 1 and len(objects) >= min_held_out + 1:
        cut = len(objects) - min(wanted, len(objects) - 1)
        return ProjectSplit(objects[:cut], objects[cut:], "last-accepted")
    raise InputError(f"Too few objects in {project} to hold any out: {len(objects)} object(s) on {len(by_slide)} "
                     f"slide(s); at least {min_held_out} must be held out and one left to train on. Accept or "
                     "import more objects.")
