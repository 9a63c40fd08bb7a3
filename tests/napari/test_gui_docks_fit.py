"""The Annotator and Benchmark docks open together in a real napari window (Xvfb) at the screen
sizes pathologists use: every key control of both is on screen, whole, reachable as a user reaches
it (a click on the dock's tab, the scroll bar), and nothing is cut off on the right."""

import pytest

pytest.importorskip("napari")

from qtpy.QtCore import QPoint, QRect, QSettings, Qt  # noqa: E402
from qtpy.QtWidgets import QDockWidget, QScrollArea, QTabBar  # noqa: E402

from napari_sam_histo._napari.annotator.dock import AnnotatorDock  # noqa: E402
from napari_sam_histo._napari.benchmark_dock import BenchmarkDock  # noqa: E402
from napari_sam_histo._napari.dock_tabs import dock_of  # noqa: E402

SCREENS = [(1920, 1080), (1366, 768)]


def _rect_in(widget, ancestor) -> QRect:
    return QRect(widget.mapTo(ancestor, QPoint(0, 0)), widget.size())


def _show_tab(qtbot, window, dock: QDockWidget) -> None:
    """Click the dock's tab, as a user does, when it shares its area with another dock as tabs."""
    for bar in window.findChildren(QTabBar):
        for i in range(bar.count()):
            if bar.isVisible() and bar.tabText(i) == dock.windowTitle():
                qtbot.mouseClick(bar, Qt.MouseButton.LeftButton, pos=bar.tabRect(i).center())
                qtbot.waitUntil(lambda: not dock.visibleRegion().isEmpty(), timeout=5_000)
                return


def _assert_on_screen(window, scroll: QScrollArea, widgets: dict) -> None:
    """Each widget drawn (not covered), whole inside the scroll area's viewport (nothing cut off by
    it, right edge included) and inside the window."""
    viewport = scroll.viewport()
    for name, widget in widgets.items():
        assert widget.isVisible() and not widget.visibleRegion().isEmpty(), f"{name} is not drawn"
        assert viewport.rect().contains(_rect_in(widget, viewport)), (
            f"{name} is cut off by its dock: {_rect_in(widget, viewport)} in a viewport of {viewport.size()}")
        assert window.rect().contains(_rect_in(widget, window)), f"{name} lies outside the window"


@pytest.mark.parametrize("annotator_first", [True, False], ids=["annotator-first", "benchmark-first"])
@pytest.mark.parametrize("screen", SCREENS, ids=[f"{w}x{h}" for w, h in SCREENS])
def test_both_docks_are_usable_together(make_napari_viewer, qtbot, tmp_path, screen, annotator_first):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(*screen)
    annotator = AnnotatorDock(viewer)
    benchmark = BenchmarkDock(viewer, settings=QSettings(str(tmp_path / "benchmark.ini"), QSettings.Format.IniFormat))
    # docked as napari's Plugins menu docks them (no tabify asked for)
    for widget, name in ((annotator, "Annotator"), (benchmark, "Benchmark"))[::1 if annotator_first else -1]:
        viewer.window.add_dock_widget(widget, name=name)
        qtbot.wait(50)
    qtbot.waitUntil(lambda: dock_of(annotator) is not None and dock_of(benchmark) is not None, timeout=10_000)
    qtbot.wait(300)
    assert (window.width(), window.height()) == screen  # both docks fit: the window did not grow

    annotator_scroll = annotator.findChild(QScrollArea)
    _show_tab(qtbot, window, dock_of(annotator))
    # Start, Accept, the status and the object list at once, with the list scrolled into view
    annotator_scroll.ensureWidgetVisible(annotator.object_list, 0, 0)
    annotator_scroll.ensureWidgetVisible(annotator.start_button, 0, 0)
    qtbot.wait(50)
    _assert_on_screen(window, annotator_scroll, {
        "Start": annotator.start_button, "Accept": annotator.buttons["Accept"], "status": annotator.status,
        "object list": annotator.object_list})

    _show_tab(qtbot, window, dock_of(benchmark))
    browse = benchmark.out_edit.parentWidget()  # the report folder field with its … button
    benchmark.scroll.ensureWidgetVisible(browse, 0, 0)
    qtbot.wait(50)
    _assert_on_screen(window, benchmark.scroll, {"Run": benchmark.run_button, "report folder": browse})
    assert benchmark.scroll.widget().width() <= benchmark.scroll.viewport().width()  # no column cut off
