"""The class picker: the class the next object is accepted as (type a new one and press Enter to
add it: that Enter stays in the box and never accepts the object), its colour (click to change),
and the slide folder's class table (``annotations.class_table``), which gives every class its id in
every export."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QColorDialog, QComboBox, QHBoxLayout, QLabel, QPushButton, QWidget

from ...annotations.objects import DEFAULT_CLASSES, next_class_color
from ...errors import SamHistoError


class ClassPicker(QWidget):
    def __init__(self, on_error: Callable[[Exception], None], say: Callable[[str], None],
                 recoloured: Callable[[str], None], layer: Callable[[], object],
                 shown: Callable[[tuple[int, int, int]], None], chosen: Callable[[str, bool], None],
                 parent=None) -> None:
        """``on_error``/``say``: the dock's status; ``recoloured(name)``: class ``name`` has a new
        colour (the accepted objects follow); ``layer()``: the annotations layer, whose metadata
        names the class table (or None); ``shown(color)``: the chosen class's colour, for the object
        being clicked; ``chosen(name, added)``: the user picked class ``name`` from the list or
        typed it and pressed Enter (``added``: a new class)."""
        super().__init__(parent)
        self.on_error, self.say, self.recoloured, self.layer, self.shown = on_error, say, recoloured, layer, shown
        self.chosen = chosen
        self.classes: dict[str, tuple[int, int, int]] = dict(DEFAULT_CLASSES)  # the annotator shares it
        self.table = None  # the slide folder's class table: ids and colours
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.combo = QComboBox()
        self.combo.setEditable(True)
        self.combo.addItems(list(self.classes))
        self.color_button = QPushButton()
        self.color_button.setFixedWidth(32)
        self.color_button.setToolTip("the class's colour (click to change)")
        self.color_button.clicked.connect(self._pick_color)
        self.combo.currentTextChanged.connect(lambda text: self.show_color())
        self.combo.activated.connect(lambda index: self.chosen(self.name, False))
        # Enter in the box adds the typed class; unhandled, it would reach napari's Enter (accept)
        self.combo.lineEdit().installEventFilter(self)
        row.addWidget(QLabel("Class"))
        row.addWidget(self.combo, 1)
        row.addWidget(self.color_button)
        self.show_color()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        if (watched is self.combo.lineEdit() and event.type() == QEvent.Type.KeyPress
                and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)):
            self.choose_typed()
            return True
        return super().eventFilter(watched, event)

    def choose_typed(self) -> None:
        """The class typed in the box becomes the chosen one, added to the list if it is new."""
        name = self.name
        added = name not in self.classes
        self.color(name)
        self.combo.setCurrentIndex(self.combo.findText(name))
        self.show_color()
        self.chosen(name, added)

    @property
    def name(self) -> str:
        return self.combo.currentText().strip() or "Tumor"

    def color(self, name: str) -> tuple[int, int, int]:
        """The colour of class ``name``, adding the class to the list (and to the class table) if
        it is new."""
        if name not in self.classes:
            self.classes[name] = next_class_color(self.classes.values())
        if self.combo.findText(name) < 0:
            self.combo.addItem(name)
        if self.table is not None and name not in self.table:
            self._in_table(lambda table: table.add(name, self.classes[name]))
        return self.classes[name]

    def keep(self, name: str, color) -> None:
        """A class read from a file keeps its file's colour (unless the list has it already)."""
        if name not in self.classes:
            self.classes[name] = tuple(color)

    def _in_table(self, change) -> None:
        """Change the class table; a table that cannot be written is said, not raised (the objects
        stay; an export names the problem again)."""
        try:
            change(self.table)
        except (SamHistoError, OSError) as err:
            self.on_error(err)
            return
        if self.table.notice:
            self.say(self.table.notice)
        self.name_table()

    def name_table(self) -> None:
        """The annotations layer names the class table (exports find it there)."""
        layer = self.layer()
        if layer is not None and self.table is not None and self.table.path is not None:
            layer.metadata["class_table"] = str(self.table.path)

    def load_table(self, slide_path) -> None:
        """The class table of the slide's folder: its classes, with their colours, join the list."""
        from ...annotations.class_table import ClassTable

        try:
            self.table = ClassTable.for_slide(slide_path) if slide_path else ClassTable()
        except SamHistoError as err:  # unreadable: said now; exports into that folder refuse too
            self.table = None
            self.on_error(err)
            return
        for name, color in self.table.colours().items():
            self.classes[name] = color
            if self.combo.findText(name) < 0:
                self.combo.addItem(name)
        for name, color in list(self.classes.items()):  # the dock's own classes get their ids too
            if name not in self.table:
                self._in_table(lambda table, name=name, color=color: table.add(name, color))
        self.name_table()
        self.show_color()

    def show_color(self) -> None:
        color = self.classes.get(self.name) or next_class_color(self.classes.values())
        self.color_button.setStyleSheet("background-color: rgb({}, {}, {})".format(*color))
        self.shown(color)

    def _pick_color(self) -> None:
        name = self.name
        chosen = QColorDialog.getColor(QColor(*self.color(name)), self, f"Colour of {name}")
        if chosen.isValid():
            self.set_color(name, (chosen.red(), chosen.green(), chosen.blue()))

    def set_color(self, name: str, color) -> None:
        """Give class ``name`` a colour: the accepted objects of that class follow."""
        self.classes[name] = tuple(int(c) for c in color[:3])
        self.color(name)
        if self.table is not None:
            self._in_table(lambda table: table.set_colour(name, self.classes[name]))
        self.recoloured(name)
        self.show_color()
