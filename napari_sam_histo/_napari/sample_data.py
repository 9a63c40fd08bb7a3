"""Sample data: OpenSlide's CMU-1 small region (Carnegie Mellon, CC0), shipped in resources/."""

from __future__ import annotations

from pathlib import Path

SAMPLE = Path(__file__).resolve().parent.parent / "resources" / "cmu-1-small-region.svs"


def cmu1_region():
    from ..slides.boxes import TileBox
    from ..slides.reader import open_image

    source = open_image(SAMPLE)
    width, height = source.level_dimensions[0]
    pixels = source.read_region(TileBox(0, 0, 0, width, height))  # 2220x2967: small enough to load whole
    scale = (source.mpp[1], source.mpp[0]) if source.mpp else (1.0, 1.0)
    metadata = {"slide_path": str(SAMPLE), "mpp": source.mpp, "identity": source.identity}
    source.close()
    return [(pixels, {"name": "CMU-1 small region", "rgb": True, "scale": scale, "units": "µm",
                      "metadata": metadata}, "image")]
