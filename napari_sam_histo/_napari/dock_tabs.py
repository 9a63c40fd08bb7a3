"""The Annotator and Benchmark docks share napari's right-hand dock area as tabs.

napari puts a second dock under the first and gives the new one most of the height, which left the
Annotator four rows high beside the Benchmark dock on a 1920x1080 screen, and neither usable at
1366x768. As two tabs, each dock has the whole height and the dock area's width, the user switches
with one click on the tab, and can still drag a tab out to stack or float the docks.
The dock opened last is the tab shown.
"""

from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QDockWidget, QMainWindow, QScrollArea, QWidget


def dock_of(widget: QWidget) -> QDockWidget | None:
    """The ``QDockWidget`` that holds ``widget`` (napari wraps a plugin's widget in one)."""
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent


def needed_width(widget: QWidget) -> int:
    """The width ``widget`` needs to show its contents whole: a scroll area's contents' minimum
    width with the vertical scroll bar beside them, else the widget's own minimum."""
    scroll = widget if isinstance(widget, QScrollArea) else widget.findChild(QScrollArea)
    if scroll is None or scroll.widget() is None:
        return max(widget.minimumSizeHint().width(), widget.minimumWidth())
    inner = (scroll.widget().minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width()
             + 2 * scroll.frameWidth())
    margins = widget.layout().contentsMargins() if scroll is not widget and widget.layout() is not None else None
    return inner + (margins.left() + margins.right() if margins is not None else 0)


def _docked_in(dock: QDockWidget) -> QMainWindow | None:
    window = dock.parentWidget()
    return window if isinstance(window, QMainWindow) and not dock.isFloating() else None


def tab_together(shown: QDockWidget, other: QDockWidget) -> bool:
    """Put ``shown`` in a tab beside ``other`` when both are docked in the same area of the same
    window, and show it; ``False`` (nothing changed) otherwise or when they are tabs already."""
    window = _docked_in(shown)
    if window is None or shown is other or _docked_in(other) is not window:
        return False
    if window.dockWidgetArea(shown) != window.dockWidgetArea(other) or other in window.tabifiedDockWidgets(shown):
        return False
    window.tabifyDockWidget(other, shown)
    # tabs share one width: neither may be narrower than what the other's contents need (a scroll
    # area's own minimum is tiny, so Qt would let the area shrink under the wider contents)
    wanted = max(needed_width(dock.widget()) for dock in (shown, other) if dock.widget() is not None)
    for dock in (shown, other):
        if dock.widget() is not None and dock.widget().minimumWidth() < wanted:
            dock.widget().setMinimumWidth(wanted)
    shown.show()
    shown.raise_()
    return True


class TabsWithPartners(QObject):
    """Keeps ``widget``'s dock in tabs with the docks that hold a widget of ``partner_types``:
    those open when ``widget`` is first shown, and those opened later (watched on the window)."""

    def __init__(self, widget: QWidget, partner_types: tuple[type, ...]) -> None:
        super().__init__(widget)
        self.widget, self.partner_types = widget, partner_types
        self._watching = False  # the window is looked up when needed, never held (napari frees it on close)

    def _partners(self, window: QMainWindow) -> list[QDockWidget]:
        return [d for d in window.findChildren(QDockWidget)
                if d.widget() is not None
                and (isinstance(d.widget(), self.partner_types)
                     or any(d.widget().findChild(kind) is not None for kind in self.partner_types))]

    def join(self) -> None:
        """Tab ``widget``'s dock with the partner docks open now (call once it is docked)."""
        mine = dock_of(self.widget)
        window = _docked_in(mine) if mine is not None else None
        if window is None:
            return
        for partner in self._partners(window):
            tab_together(mine, partner)
        if not self._watching:
            self._watching = True
            window.installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.ChildAdded and isinstance(event.child(), QDockWidget):
            new = event.child()
            QTimer.singleShot(0, lambda: self._welcome(new))  # once napari has finished docking it
        return False

    def _welcome(self, new: QDockWidget) -> None:
        mine = dock_of(self.widget)
        window = _docked_in(mine) if mine is not None else None
        try:
            if window is not None and new in self._partners(window):
                tab_together(new, mine)
        except RuntimeError:  # the new dock was closed again before this turn of the event loop
            pass
