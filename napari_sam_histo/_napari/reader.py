"""napari reader: slides and pyramidal (OME-)TIFFs open as lazy multiscale images (``slides.lazy``),
plain images whole.

Layer metadata carries what the annotator needs: the slide path, its identity (the embedding-cache
key), microns per pixel and the level downsamples. The layer's scale is in µm when the slide
states its pixel size, so napari's scale bar and measurements are physical.
"""

from __future__ import annotations

from pathlib import Path

from ..slides.reader import PLAIN_SUFFIXES, SLIDE_SUFFIXES


def slide_stem(name: str) -> str:
    """A slide's file name without its extensions: ``a.ome.tif`` -> ``a``, ``b.svs`` -> ``b`` (the
    layer's name, and the start of the files suggested beside it)."""
    stem = Path(name).stem
    return stem[:-4] if stem.lower().endswith(".ome") else stem


def get_reader(path):
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    suffix = Path(str(path)).suffix.lower()
    if suffix not in SLIDE_SUFFIXES + PLAIN_SUFFIXES or Path(str(path)).is_dir():
        return None
    return read_image


def read_image(path):
    from ..slides.lazy import multiscale
    from ..slides.reader import open_image

    if isinstance(path, (list, tuple)):
        path = path[0]
    source = open_image(path)
    levels = multiscale(source)
    scale = (source.mpp[1], source.mpp[0]) if source.mpp else (1.0, 1.0)
    metadata = {
        "slide_path": str(Path(path).resolve()),
        "identity": source.identity,
        "mpp": source.mpp,
        "level0_size": tuple(source.level_dimensions[0]),
        "level_downsamples": [source.level_downsamples[0]] + [
            d for i, d in enumerate(source.level_downsamples[1:], start=1)
            if min(source.level_dimensions[i]) >= 256],
    }
    kwargs = {"name": slide_stem(Path(path).name), "rgb": True, "multiscale": len(levels) > 1, "scale": scale,
              "metadata": metadata}
    if source.mpp:
        kwargs["units"] = "µm"
    data = levels if len(levels) > 1 else levels[0]
    return [(data, kwargs, "image")]
