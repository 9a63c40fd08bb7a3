"""The Benchmark dock's settings: the dataset and report folder (remembered across openings and
napari sessions, ``benchmark_settings``), the models and decoders, the target IoUs, the click
budget, how masks are read, and where the models run; ``config`` reads them as a
``BenchmarkConfig``, naming the field that is wrong."""

from __future__ import annotations

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import InputError
from ..evaluation.benchmark_config import BenchmarkConfig
from .benchmark_settings import BenchmarkPaths


class BenchmarkForm(QWidget):
    def __init__(self, paths: BenchmarkPaths, parent=None) -> None:
        """``paths``: where the dataset and report folder are remembered."""
        super().__init__(parent)
        self.paths = paths
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)  # a narrow dock: fields under labels
        self.dataset_edit, dataset_row = self._path_row("folder with images/ + masks/, or a manifest .csv")
        self.out_edit, out_row = self._path_row("report folder")
        self.dataset_edit.setText(self.paths.dataset)
        self.out_edit.setText(self.paths.report_folder)
        self.dataset_edit.textChanged.connect(lambda text: self.paths.remember(dataset=text))
        self.out_edit.textChanged.connect(lambda text: self.paths.remember(report_folder=text))
        self.models_edit = QLineEdit("vit_t")
        self.models_edit.setToolTip("model names or checkpoint paths, separated by commas")
        self.sam_check, self.modified_check = QCheckBox("SAM's"), QCheckBox("modified (trained)")
        self.md_check = QCheckBox("md (fine-tuned SAM's)")
        self.sam_check.setChecked(True)
        decoders = QVBoxLayout()  # one under another: three in a row made the dock wider than its area
        decoders.setSpacing(0)
        decoders.addWidget(self.sam_check)
        decoders.addWidget(self.modified_check)
        decoders.addWidget(self.md_check)
        self.iou_edit = QLineEdit("0.80 0.85 0.90")
        self.clicks_spin = QSpinBox()
        self.clicks_spin.setRange(1, 100)
        self.clicks_spin.setValue(20)
        self.limit_spin = QSpinBox()
        self.limit_spin.setRange(0, 1_000_000)
        self.limit_spin.setSpecialValueText("all")
        self.instances_check = QCheckBox("masks are instance labels (one sample per label)")
        self.components_check = QCheckBox("each connected region is a sample")
        self.suffix_edit = QLineEdit()
        self.suffix_edit.setPlaceholderText("flat folder only, e.g. _label")
        self.ignore_edit = QLineEdit()
        self.ignore_edit.setPlaceholderText("none")
        self.mask_prompt_combo = QComboBox()
        self.mask_prompt_combo.addItems(["on", "off", "both"])
        self.mask_prompt_combo.setToolTip("previous logits as SAM's mask prompt (on), points only (off), or both")
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        for label, widget in (("Dataset", dataset_row), ("Report folder", out_row), ("Models", self.models_edit),
                              ("Decoders", decoders), ("Target IoUs", self.iou_edit),
                              ("Max clicks", self.clicks_spin), ("Images", self.limit_spin),
                              ("", self.instances_check), ("", self.components_check),
                              ("Mask suffix", self.suffix_edit),
                              ("Ignore value", self.ignore_edit), ("Mask prompt", self.mask_prompt_combo),
                              ("Device", self.device_combo)):
            form.addRow(label, widget)

    def _path_row(self, placeholder: str):
        edit = QLineEdit()
        edit.setPlaceholderText(placeholder)
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(lambda: edit.setText(QFileDialog.getExistingDirectory(self) or edit.text()))
        row = QWidget()
        row_layout = QHBoxLayout(row)
        row_layout.setContentsMargins(0, 0, 0, 0)
        row_layout.addWidget(edit)
        row_layout.addWidget(browse)
        return edit, row

    def config(self) -> BenchmarkConfig:
        """The form as a config; ``InputError`` naming the field that is wrong."""
        dataset = self.dataset_edit.text().strip()
        if not dataset:
            raise InputError("Choose a dataset folder or manifest.")
        if not self.out_edit.text().strip():
            raise InputError("Choose a report folder.")
        try:
            thresholds = tuple(float(v) for v in self.iou_edit.text().replace(",", " ").split())
        except ValueError as err:
            raise InputError(f"Target IoUs {self.iou_edit.text()!r}: give numbers like 0.80 0.85 0.90.") from err
        if not thresholds or not all(0 < t <= 1 for t in thresholds):
            raise InputError(f"Target IoUs {self.iou_edit.text()!r} must lie in (0, 1].")
        decoders = [d for d, box in (("sam", self.sam_check), ("modified", self.modified_check),
                    ("md", self.md_check)) if box.isChecked()]
        if not decoders:
            raise InputError("Tick at least one decoder.")
        ignore = self.ignore_edit.text().strip()
        try:
            ignore_value = int(ignore) if ignore else None
        except ValueError as err:
            raise InputError(f"Ignore value {ignore!r} is not a whole number.") from err
        models = [m.strip() for m in self.models_edit.text().split(",") if m.strip()]
        return BenchmarkConfig(
            dataset=dataset, out_dir=self.out_edit.text().strip(), models=models or ["vit_t"], decoders=decoders,
            thresholds=thresholds, max_clicks=self.clicks_spin.value(),
            instances=self.instances_check.isChecked(), components=self.components_check.isChecked(),
            ignore_value=ignore_value,
            mask_suffix=self.suffix_edit.text().strip() or None, limit=self.limit_spin.value() or None,
            device=self.device_combo.currentText(),
            mask_prompts={"on": (True,), "off": (False,), "both": (True, False)}[self.mask_prompt_combo.currentText()],
        )
