"""npe2 hooks (declared in napari.yaml): sample data now; reader, writers and widgets later."""
