"""The Annotator dock's parts take the dock through the interfaces they declare (``SessionDock``,
``EditsDock``, ``ClickingDock``): the started dock is each of them, and so are the parts one part
reaches through it."""


def test_the_dock_is_what_each_of_its_parts_takes(dock):
    from napari_sam_histo._napari.annotator.clicking import ClickingDock
    from napari_sam_histo._napari.annotator.edits import Drawing, EditsDock
    from napari_sam_histo._napari.annotator.session import Painting, SessionDock, Suggesting

    assert isinstance(dock, SessionDock) and isinstance(dock, EditsDock) and isinstance(dock, ClickingDock)
    assert isinstance(dock.clicking, Painting) and isinstance(dock.clicking, Drawing)
    assert isinstance(dock.transfer, Suggesting)
    assert dock.session.dock is dock and dock.edits.dock is dock and dock.clicking.dock is dock

