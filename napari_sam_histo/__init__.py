"""napari-sam-histo: click-based tumor-region segmentation in whole-slide images with SAM.

The core (models, engine, slides) imports no Qt; napari widgets live in ``_napari``.
"""

__version__ = "0.1.0"
