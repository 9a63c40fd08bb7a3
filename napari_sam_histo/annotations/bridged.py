"""A polygon with holes as one ring with zero-width bridges, and back.

napari's Shapes layer (0.5 and later) draws a polygon with holes when each hole is reached from the
exterior along an edge that the ring walks twice, there and back: napari drops edges walked twice
before triangulating the face and drawing the outline, so neither the fill nor the outline shows
the bridge, and the hole stays empty. ``to_bridged_ring`` writes a ``Polygon`` that way (holes
wound against the exterior, as napari's docs ask); ``from_bridged_ring`` splits such a ring back
into an exterior and holes (for the writers), and leaves a ring without repeated vertices as it is.
"""

from __future__ import annotations

import numpy as np

from .geometry import Polygon, signed_area


def to_bridged_ring(polygon: Polygon) -> np.ndarray:
    """One (N, 2) ring of (x, y): the exterior with each hole spliced in at its nearest exterior
    vertex (there and back along the same edge)."""
    exterior = np.asarray(polygon.exterior, float)
    if not polygon.holes:
        return exterior
    sign = np.sign(signed_area(exterior))
    attached: dict[int, list[np.ndarray]] = {}
    for hole in polygon.holes:
        hole = np.asarray(hole, float)
        if len(hole) < 3:
            continue
        if np.sign(signed_area(hole)) == sign:
            hole = hole[::-1]
        distances = ((hole[:, None, :] - exterior[None, :, :]) ** 2).sum(axis=2)
        j, i = np.unravel_index(int(np.argmin(distances)), distances.shape)
        attached.setdefault(int(i), []).append(np.concatenate([hole[j:], hole[:j], hole[j:j + 1]]))
    parts = []
    for i, vertex in enumerate(exterior):
        parts.append(vertex[None])
        for hole in attached.get(i, []):
            parts += [hole, vertex[None]]
    return np.concatenate(parts)


def from_bridged_ring(ring) -> list[Polygon]:
    """The polygons of a ring that may hold bridged holes: every stretch that comes back to a vertex
    already walked closes a sub-ring; sub-rings wound against the outer ring are its holes, others
    are separate parts, and two-vertex stretches (the bridges) are dropped."""
    ring = np.asarray(ring, float)
    if len(ring) > 3 and np.array_equal(ring[0], ring[-1]):
        ring = ring[:-1]
    stack: list[np.ndarray] = []
    index: dict[tuple[float, float], int] = {}
    closed: list[np.ndarray] = []
    for vertex in ring:
        key = (float(vertex[0]), float(vertex[1]))
        if key in index:
            start = index[key]
            sub = np.array(stack[start:])
            for v in stack[start + 1:]:
                index.pop((float(v[0]), float(v[1])), None)
            del stack[start + 1:]
            if len(sub) >= 3:
                closed.append(sub)
            continue
        index[key] = len(stack)
        stack.append(vertex)
    if not closed:
        return [Polygon(ring)]
    outer = np.array(stack) if len(stack) >= 3 else closed.pop()
    sign = np.sign(signed_area(outer))
    holes = [c for c in closed if np.sign(signed_area(c)) != sign]
    parts = [Polygon(c) for c in closed if np.sign(signed_area(c)) == sign]
    return [Polygon(outer, holes)] + parts
