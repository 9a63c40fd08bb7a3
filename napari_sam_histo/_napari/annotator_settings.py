"""The Annotator dock's settings: image, model, decoder, device, level, tile size, cleaning, caches.

A foldable form (the dock must fit beside the Benchmark dock on a 1080-px screen) that knows the
viewer's image layers and their levels, and which layers it can annotate without loading a slide
whole (``source_spec``). The models whose weights are on disk are found on a worker thread by
``warm_up``, which also pays off the GUI thread what the first Start and click would otherwise pay
on it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..annotations.cleaning import DEFAULT_MIN_AREA_PX, DEFAULT_MIN_AREA_UM2
from ..assembly.annotating import AnnotatorConfig, SlideFile, SlidePixels
from ..errors import InputError, SamHistoError
from .gui_threads import GuiThreads

MAX_IN_MEMORY_BYTES = 1 << 30  # an image layer of another reader larger than this is not copied
OUR_READER = "File > Open File(s) with Plugin… > SAM Histo"


def warm_up() -> list[str]:
    """Import torch, dask, SciPy and scikit-image, compile napari's numba label colouring (when
    numba is installed) and build vispy's line dash patterns, off the GUI thread: they cost seconds on it
    otherwise (``gui-stalls``).
    Returns the models whose weights are on disk."""
    import dask.array

    # dask's first compute looks for a distributed client, importing dask.distributed (~0.25 s):
    # napari's first drawing of a slide would pay it on the GUI thread
    dask.array.ones(2, chunks=1).sum().compute()
    import scipy.ndimage  # noqa: F401
    import skimage.draw  # noqa: F401
    import skimage.measure  # noqa: F401

    from ..engine import annotator  # noqa: F401 (torch)

    try:
        from napari.layers import Labels, Shapes
        from napari.utils.colormaps import DirectLabelColormap
        from napari.utils.colormaps.colormap import _cast_labels_data_to_texture_dtype_direct

        colormap = DirectLabelColormap(color_dict={None: np.zeros(4), 0: np.zeros(4), 1: np.ones(4)})
        _cast_labels_data_to_texture_dtype_direct(np.zeros((4, 4), np.uint8), colormap)
        colormap.map(np.zeros(4, np.uint8))  # numba's typed dict, compiled on first use
        Labels(np.zeros((4, 4), np.uint8)).colormap = colormap  # layer models only: no Qt, no GL
        Shapes([np.array([[0, 0], [0, 8], [8, 8], [8, 0]], float)], shape_type="polygon")
        # vispy's line dash patterns (about 100 ms of pure numpy, cached for the process): the
        # first Labels layer's polygon overlay builds them on the GUI thread otherwise
        from vispy.visuals.line.dash_atlas import DashAtlas

        DashAtlas()
    except Exception:  # noqa: BLE001 - napari's private helpers moved: the first Start pays instead
        pass
    return available_models()


def available_models() -> list[str]:
    from ..models.registry import list_models
    from ..models.weights import find_weights

    names = []
    for spec in list_models():
        try:
            if find_weights(spec.weights) is not None:
                names.append(spec.name)
        except SamHistoError:
            pass
    return names


def source_spec(layer) -> SlideFile | SlidePixels:
    """What to open for an image layer: its file for our reader's layers, its pixels for a plain
    image; ``InputError`` for a layer whose whole level 0 would have to be loaded."""
    path = layer.metadata.get("slide_path")
    if path:
        return SlideFile(path)
    if layer.multiscale:
        raise InputError(
            f"'{layer.name}' was opened by another reader as a multiscale image; annotating it would load "
            f"its whole full-resolution level into memory. Open the file with napari-sam-histo's reader "
            f"({OUR_READER}), which reads it tile by tile.")
    data = layer.data
    size = int(np.prod(data.shape)) * np.dtype(data.dtype).itemsize
    if not isinstance(data, np.ndarray) and size > MAX_IN_MEMORY_BYTES:
        raise InputError(f"'{layer.name}' is a lazy array of {size / 2**30:.1f} GiB; open the file with "
                         f"napari-sam-histo's reader ({OUR_READER}), which reads it tile by tile.")
    return SlidePixels(data, layer.name)


class AnnotatorSettings(QWidget):
    def __init__(self, viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.toggle = QToolButton()
        self.toggle.setText("Settings")
        self.toggle.setCheckable(True)
        self.toggle.setChecked(True)
        self.toggle.setArrowType(Qt.ArrowType.DownArrow)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.toggled.connect(self._fold)
        layout.addWidget(self.toggle)
        self.form = QWidget()
        form = QFormLayout(self.form)
        form.setContentsMargins(0, 0, 0, 0)
        self.layer_combo = QComboBox()
        self.model_combo = QComboBox()
        self.model_combo.setEditable(True)  # a model name or a checkpoint path
        self.model_combo.addItem("vit_t")
        self.decoder_combo = QComboBox()
        self.decoder_combo.setEditable(True)
        # SAM's own, then the decoders shipped for MobileSAM; any decoder checkpoint path can be typed
        # (models.shipped: no torch import on the GUI thread)
        from ..models.shipped import decoder_note, decoder_tissue, shipped_decoders

        self.decoder_combo.addItems(shipped_decoders("vit_t"))
        for index in range(self.decoder_combo.count()):
            self.decoder_combo.setItemData(index, decoder_note(self.decoder_combo.itemText(index)),
                                           Qt.ItemDataRole.ToolTipRole)
        # what the chosen decoder was trained on, under the picker (its whole note as the tooltip)
        self.decoder_tissue = QLabel()
        self.decoder_tissue.setWordWrap(True)

        self._file_notes: dict[str, tuple[str, str]] = {}  # decoder files added or read: (tissue, note)
        self._threads = GuiThreads(self)

        def show_tissue(name: str) -> None:
            if name not in self._file_notes and name.endswith(".pt") and Path(name).is_file():
                self._read_decoder_file(name)
            tissue, note = self._file_notes.get(name, (decoder_tissue(name), decoder_note(name)))
            self.decoder_tissue.setText(tissue)
            self.decoder_tissue.setToolTip(note)
            self.decoder_combo.setToolTip(note)

        self.decoder_combo.currentTextChanged.connect(show_tissue)
        show_tissue(self.decoder_combo.currentText())
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        self.level_combo = QComboBox()
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(256, 4096)
        self.tile_spin.setSingleStep(256)
        self.tile_spin.setValue(1024)
        self.min_area_spin = QDoubleSpinBox()
        self.min_area_spin.setRange(0, 1e7)
        self.min_area_spin.setDecimals(1)
        self.min_area_spin.setToolTip("parts and holes smaller than this are dropped when an object is accepted")
        self.simplify_spin = QDoubleSpinBox()
        self.simplify_spin.setRange(0, 50)
        self.simplify_spin.setDecimals(1)
        self.simplify_spin.setValue(0.1)
        self.simplify_spin.setSuffix(" px")
        self.simplify_spin.setToolTip("outlines are simplified within this distance (working-level pixels)")
        self.prefetch_check = QCheckBox("prefetch tiles around the view when idle")
        self.prefetch_check.setChecked(True)
        self.grow_check = QCheckBox("grow objects past tile borders (up to 8 tiles)")
        self.grow_check.setChecked(True)
        self.grow_check.setToolTip("where an object reaches a tile's border, the next tile is computed and decoded "
                                   "in the background, so the object continues without a click there")
        self.disk_check = QCheckBox("keep embeddings on disk (per slide)")
        self.disk_check.setToolTip("reopening the slide later skips the encoder; stored in the user cache folder")
        for label, widget in (("Image", self.layer_combo), ("Model", self.model_combo),
                              ("Decoder", self.decoder_combo), ("", self.decoder_tissue),
                              ("Device", self.device_combo),
                              ("Working level", self.level_combo), ("Tile size", self.tile_spin),
                              ("Min. area", self.min_area_spin), ("Simplify", self.simplify_spin),
                              ("", self.prefetch_check), ("", self.grow_check), ("", self.disk_check)):
            form.addRow(label, widget)
        layout.addWidget(self.form)
        self.layer_combo.currentTextChanged.connect(self.fill_levels)
        self.show_min_area_unit(None)

    def _fold(self, shown: bool) -> None:
        self.form.setVisible(shown)
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)

    def show_min_area_unit(self, mpp) -> None:
        """µm² when the slide states its pixel size, level-0 px² otherwise (with that unit's default)."""
        unit = " µm²" if mpp else " px²"
        if self.min_area_spin.suffix() != unit:
            self.min_area_spin.setSuffix(unit)
            self.min_area_spin.setValue(DEFAULT_MIN_AREA_UM2 if mpp else DEFAULT_MIN_AREA_PX)

    def _read_decoder_file(self, name: str) -> None:
        """Read what a typed or chosen decoder file was trained on, off the GUI thread (a checkpoint
        of several MB); the label under the picker shows it when it is read."""
        self._file_notes[name] = ("reading the decoder file …", name)

        def read() -> tuple[str, str]:
            from ..models.decoder_checkpoint import decoder_file_note

            try:
                return decoder_file_note(name)
            except Exception as err:  # noqa: BLE001 - an unreadable file is said under the picker, never raised
                return "not a decoder file napari-sam-histo can read", str(err)

        self._threads.run(read, lambda note: self._decoder_file_read(name, note),
                          lambda err: self._decoder_file_read(name, ("not read", str(err))))

    def _decoder_file_read(self, name: str, note: tuple[str, str]) -> None:
        self._file_notes[name] = note
        if self.decoder_combo.currentText() == name:
            self.decoder_combo.currentTextChanged.emit(name)

    def add_decoder_file(self, path, tissue: str, note: str) -> None:
        """List a decoder file in the picker (once) with what it is for; the choice is the user's."""
        name = str(path)
        self._file_notes[name] = (tissue, note)
        if self.decoder_combo.findText(name) < 0:
            self.decoder_combo.addItem(name)
        self.decoder_combo.setItemData(self.decoder_combo.findText(name), note, Qt.ItemDataRole.ToolTipRole)
        if self.decoder_combo.currentText() == name:
            self.decoder_combo.currentTextChanged.emit(name)

    def config(self, learning: bool) -> AnnotatorConfig:
        """What the settings choose for the next Start (``learning``: the slide's, from the start)."""
        return AnnotatorConfig(self.model_combo.currentText(), self.decoder_combo.currentText(),
                               self.device_combo.currentText(), self.level_combo.currentData() or 0,
                               self.tile_spin.value(), embeddings_on_disk=self.disk_check.isChecked(),
                               continuation=self.grow_check.isChecked(), learning=learning)

    def add_trained_decoder(self, path, result) -> None:
        """A decoder trained on the project (``training.project_training``'s result): in the picker,
        with its tissue and held-out verdict."""
        held = result.held_out
        self.add_decoder_file(path, f"{result.provenance['tissue']}: {result.verdict.split(':')[0]}",
                              f"{result.provenance['training_data']}. On {held['objects']} held-out objects "
                              f"NoC@85 {held['decoder_noc']:.2f} against zero-shot SAM's "
                              f"{held['sam_noc']:.2f}: {result.verdict}.")

    def fill_models(self, names) -> None:
        if not names:
            return
        current = self.model_combo.currentText()
        self.model_combo.clear()
        self.model_combo.addItems(names)
        self.model_combo.setCurrentText(current if current else names[0])

    def image_layers(self):
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def chosen_layer(self):
        return next((lay for lay in self.image_layers() if lay.name == self.layer_combo.currentText()), None)

    def fill_layers(self, *_) -> None:
        try:
            self._fill_layers()
        except RuntimeError:  # napari deleted the dock with its window: stop listening to its layers
            for emitter in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
                with contextlib.suppress(TypeError, ValueError, RuntimeError):
                    emitter.disconnect(self.fill_layers)

    def _fill_layers(self) -> None:
        current = self.layer_combo.currentText()
        names = [layer.name for layer in self.image_layers()]
        if names == [self.layer_combo.itemText(i) for i in range(self.layer_combo.count())]:
            return
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        self.layer_combo.blockSignals(False)
        self.layer_combo.setCurrentText(current if current in names else (names[0] if names else ""))
        self.fill_levels(self.layer_combo.currentText())

    def fill_levels(self, name: str) -> None:
        self.level_combo.clear()
        layer = next((layer for layer in self.image_layers() if layer.name == name), None)
        if layer is None:
            return
        downsamples = layer.metadata.get("level_downsamples") or [1.0]
        mpp = layer.metadata.get("mpp")
        self.show_min_area_unit(mpp)  # µm² as soon as a slide with a pixel size is picked
        # "auto" (the default): each object's clicks use the level closest to what is on screen,
        # pyramid or virtual (engine.working_levels); a level can still be pinned
        self.level_combo.addItem("auto: follows the view", "auto")
        for i, d in enumerate(downsamples):
            text = f"level {i}: 1/{d:.3g}"
            if mpp:
                text += f" ({mpp[0] * d:.2f} µm/px, ~{10 / (mpp[0] * d):.1f}x)"
            self.level_combo.addItem(text, i)
