"""The Annotator dock (``dock``) and its parts, one concept each: the working layers it draws on
(``working_layers``), the mouse, keys and napari events it hooks (``canvas_input``), the click queue
(``click_queue``), clicks, Accept and the object's state drawn (``clicking``), the edits and their
undo (``edits``), the undo history (``history``), the class picker (``classes``), the accepted
objects' layer and list (``accepted``), the view (``view``), embedding progress and prefetching
(``progress``), autosave and resume (``resume``), the session started and stopped (``session``), and
import and export (``transfer``)."""
