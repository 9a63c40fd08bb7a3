"""An accepted annotation: its region in level-0 pixels and what QuPath and the user need to know."""

from __future__ import annotations

from dataclasses import dataclass, field

from .geometry import Polygon, polygon_area

DEFAULT_CLASSES = {"Tumor": (200, 0, 0), "Stroma": (150, 200, 150), "Necrosis": (50, 50, 50),
                   "Other": (255, 200, 0)}


@dataclass
class AnnotatedObject:
    polygons: list[Polygon]  # level-0 pixels; several when the region has separate parts
    class_name: str = "Tumor"
    color: tuple[int, int, int] = (200, 0, 0)
    model: str = ""
    clicks: int = 0
    properties: dict = field(default_factory=dict)

    @property
    def area_px(self) -> float:
        """Area in level-0 pixels."""
        return sum(polygon_area(p) for p in self.polygons)

    def area_um2(self, mpp: tuple[float, float] | None) -> float | None:
        return self.area_px * mpp[0] * mpp[1] if mpp else None
