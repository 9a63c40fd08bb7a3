"""A slide as napari layer data, without Qt: what the plugin's reader returns, and what
``slide-memory`` measures.

Layer metadata carries what the annotator needs: the slide path, its identity (the embedding-cache
key), microns per pixel and the level downsamples. The layer's scale is in µm when the slide
states its pixel size, so napari's scale bar and measurements are physical. The levels of a
multiscale slide are ``ProgressiveLevel``s, read on threads: the caller redraws the layer as their
chunks arrive.
"""

from __future__ import annotations

from pathlib import Path


def slide_stem(name: str) -> str:
    """A slide's file name without its extensions: ``a.ome.tif`` -> ``a``, ``b.svs`` -> ``b`` (the
    layer's name, and the start of the files suggested beside it)."""
    stem = Path(name).stem
    return stem[:-4] if stem.lower().endswith(".ome") else stem


def slide_layer_data(path) -> list[tuple]:
    """napari layer data for the slide or image at ``path`` (one image layer)."""
    from ..slides.lazy import level_array, level_plan
    from ..slides.progressive_level import ChunkReader, ProgressiveLevel
    from ..slides.reader import open_image

    if isinstance(path, (list, tuple)):
        path = path[0]
    source = open_image(path)
    plan = level_plan(source)
    if len(plan) > 1:
        # napari reads the chunks in view on its GUI thread: these levels answer at once and read
        # on threads, the coarsest one (napari's first drawing) whole from the start
        reader = ChunkReader(source)
        levels = [ProgressiveLevel(reader, i, level, downsample, read_all=i == len(plan) - 1)
                  for i, (level, downsample) in enumerate(plan)]
    else:  # one small level: napari reads it whole, once
        levels = [level_array(source, 0)]
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
