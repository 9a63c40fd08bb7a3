"""The dock's list of accepted objects: class, area, clicks, model; select one to zoom to it.

Thin: it shows what ``annotation_layer.layer_objects`` read from the Shapes layer and asks the
dock (through signals) to zoom, delete or reclassify; it holds no objects of its own.
"""

from __future__ import annotations

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..annotations.objects import AnnotatedObject

HEADERS = ("Class", "Area", "Clicks", "Model")


def area_text(obj: AnnotatedObject, mpp) -> str:
    area = obj.area_um2(mpp)
    return f"{area:,.0f} µm²" if area is not None else f"{obj.area_px:,.0f} px²"


class ObjectList(QWidget):
    zoom_requested = Signal(str)  # object id
    delete_requested = Signal(list)  # object ids
    class_requested = Signal(list)  # object ids to give the dock's current class

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.ids: list[str] = []
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.table = QTableWidget(0, len(HEADERS))
        self.table.setHorizontalHeaderLabels(HEADERS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setMinimumHeight(110)
        self.table.itemSelectionChanged.connect(self._selected)
        layout.addWidget(self.table)
        row = QHBoxLayout()
        self.delete_button = QPushButton("Delete")
        self.delete_button.setToolTip("delete the selected objects (Ctrl-Z brings them back)")
        self.delete_button.clicked.connect(lambda: self.selected_ids() and self.delete_requested.emit(self.selected_ids()))
        self.class_button = QPushButton("Set class")
        self.class_button.setToolTip("give the selected objects the class chosen above")
        self.class_button.clicked.connect(lambda: self.selected_ids() and self.class_requested.emit(self.selected_ids()))
        row.addWidget(self.delete_button)
        row.addWidget(self.class_button)
        layout.addLayout(row)

    def set_objects(self, objects: list[AnnotatedObject], mpp=None) -> None:
        """Show ``objects``, keeping the selection of those still there."""
        keep = set(self.selected_ids())
        self.table.blockSignals(True)
        self.ids = [obj.id for obj in objects]
        self.table.setRowCount(len(objects))
        for r, obj in enumerate(objects):
            for c, text in enumerate((obj.class_name, area_text(obj, mpp), str(obj.clicks), obj.model or "by hand")):
                self.table.setItem(r, c, QTableWidgetItem(text))
            if obj.id in keep:
                self.table.selectRow(r)
        self.table.blockSignals(False)

    def selected_ids(self) -> list[str]:
        rows = sorted({index.row() for index in self.table.selectionModel().selectedRows()})
        return [self.ids[r] for r in rows if r < len(self.ids)]

    def _selected(self) -> None:
        ids = self.selected_ids()
        if len(ids) == 1:
            self.zoom_requested.emit(ids[0])
