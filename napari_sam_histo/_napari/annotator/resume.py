"""Nothing accepted is lost, and nothing being clicked either: after each change the accepted
objects are autosaved atomically to a sidecar beside the slide (``annotations.autosave``), and the
object being clicked is kept on disk too (``live_object``). Opening the slide again offers both
back; a file that cannot be read is set aside under another name, never overwritten."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...errors import InputError
from ..live_object import LiveObjectKeeper
from ..ordered_writes import OrderedWrites
from ..wording import count
from .accepted import AcceptedObjects

AUTOSAVE_DELAY_MS = 400  # edits within this time are saved together


@dataclass(frozen=True)
class LiveSettings:
    """How the object being clicked is kept (read on the GUI thread, used on the writer's)."""

    class_name: str = "Tumor"
    color: tuple = (200, 0, 0)
    min_area: float = 0.0  # level-0 px²
    tolerance: float = 0.0
    mpp: tuple | None = None


class Resume:
    def __init__(self, threads, accepted: AcceptedObjects, confirm: Callable[[str], bool],
                 say: Callable[[str], None], on_error: Callable[[Exception], None], add_loaded: Callable,
                 learn: Callable[[], None], parent=None) -> None:
        """``confirm(question)``: the dock asks the user; ``add_loaded``: ``Transfer.add_loaded``;
        ``learn()``: hand the layer's objects to the slide's learning."""
        self.threads, self.accepted, self.confirm, self.say, self.on_error = threads, accepted, confirm, say, on_error
        self.add_loaded, self.learn = add_loaded, learn
        self.path: Path | None = None  # the sidecar autosaved to (None: not yet, or off)
        self.resuming = False  # while the slide's earlier autosave is being read
        self._after_resume: list[Callable[[], None]] = []  # questions that wait for the resume question
        self.closed = False
        self.writes = OrderedWrites(threads, AUTOSAVE_DELAY_MS, self._job, on_error, "autosave", parent)
        self.live = LiveObjectKeeper(threads, on_error, parent)  # the object being clicked, on disk
        self.live_settings = LiveSettings()

    def new_layer(self) -> None:
        """Another slide's layer: the previous slide's last edits are written first (with its own
        pixel size); the new one is autosaved once it is resumed (or not)."""
        self.writes.flush()
        self.path, self.resuming = None, False
        self._after_resume.clear()

    def _resume_done(self) -> None:
        """The earlier objects are resumed (or not): what waited for that question runs now."""
        waiting, self._after_resume = self._after_resume, []
        for then in waiting:
            then()

    def changed(self) -> None:
        if self.path is not None:
            self.writes.schedule()

    def _job(self):
        """What the autosave writer runs: the layer as it is now (copied here, on the GUI thread),
        converted and written off it; None when nothing is to be saved."""
        if self.path is None or self.accepted.layer is None or self.closed:
            return None
        from ...annotations import autosave

        objects = self.accepted.snapshot()
        path, mpp = self.path, self.accepted.layer.metadata.get("mpp")

        def save():
            try:
                autosave.save(path, objects(), mpp)
            except Exception as err:
                raise InputError(f"Autosave to {path} failed: {err}. Export your objects now.") from err

        return save

    def close(self) -> None:
        """The last edits are written; nothing is autosaved after."""
        self.writes.flush()
        self.closed = True
        self.writes.close()

    def object_changed(self, state, settings: LiveSettings) -> None:
        """The object being clicked changed (``AnnotatorState``): kept on disk soon, as ``settings`` say."""
        self.live_settings = settings
        self.live.changed(bool(state.clicks))

    def offer(self, path: Path) -> None:
        """Autosave to ``path`` from now on; first offer the objects an earlier session saved there.
        Until they are in the layer (or set aside), nothing is autosaved: the sidecar stays whole."""
        from ...annotations import autosave

        layer = self.accepted.layer
        if not path.exists() or len(layer.data):
            self.path = path
            return
        self.resuming = True

        def resumed(n):
            if self.accepted.layer is layer:  # else another slide was started meanwhile: its sidecar is untouched
                self.resuming, self.path = False, path
                self.accepted.changed()
                if n:
                    self.learn()
                self._resume_done()

        def autosave_off(err) -> None:  # the sidecar stays as it is; nothing overwrites it
            self.resuming = False
            self.on_error(InputError(f"Autosave is off for this slide: {path} could not be set aside ({err}). "
                                     "Export your objects by hand."))
            self._resume_done()

        def unreadable(err):
            if self.accepted.layer is not layer:
                return
            try:
                aside = autosave.set_aside(path)
            except OSError as error:
                autosave_off(error)
                return
            self.on_error(InputError(f"The autosave {path} could not be read ({err}); it was kept as {aside.name}."))
            resumed(0)

        def loaded(objects):
            if self.accepted.layer is not layer:
                return
            try:
                if objects and self.confirm(f"{count(len(objects), 'object')} {'was' if len(objects) == 1 else 'were'} "
                                            f"saved for this slide in {path.name} ({path.parent}). Resume them?"):
                    self.add_loaded(objects, f"Resumed {count(len(objects), 'object')} from {path.name}.",
                                    then=resumed, failed=autosave_off)
                    return
                elif objects:
                    aside = autosave.set_aside(path)
                    self.say(f"Not resumed: the earlier objects were kept in {aside}. {self.accepted.count_text()}")
            except OSError as err:
                autosave_off(err)
                return
            resumed(0)

        self.threads.run(lambda: autosave.load(path), loaded, unreadable)

    def offer_live(self, annotator, path: Path, current: Callable[[], tuple]) -> None:
        """Keep ``annotator``'s object being clicked in ``path`` from now on; first offer back the one
        an earlier session left unaccepted (a crash, or napari closed while clicking).
        ``current()``: the running (annotator, layer): a Start meanwhile asks again itself."""
        from ...annotations import autosave

        layer = self.accepted.layer

        def snapshot():  # on the writer's thread; the settings were read on the GUI thread
            s = self.live_settings
            return (annotator.current_polygons(s.min_area, s.tolerance), s.class_name, s.color,
                    annotator.predictor.model.name, len(annotator.clicks), s.mpp)

        def still() -> bool:
            return current() == (annotator, layer)

        def unreadable(err):
            if not still():
                return
            try:
                aside = autosave.set_aside(path)
            except OSError as error:
                self.on_error(InputError(f"The object kept in {path} could not be set aside ({error})."))
                return  # never overwritten: not kept from now on
            self.on_error(InputError(f"The object kept in {path} could not be read ({err}); it was kept as "
                                     f"{aside.name}."))
            self.live.attach(path, snapshot)

        def loaded(objects):
            if not still():
                return
            if self.resuming:  # the accepted objects are offered first: asked after that question
                self._after_resume.append(lambda: loaded(objects))
                return
            try:
                if objects and self.confirm(
                        f"An object you had not accepted yet ({objects[0].class_name}, "
                        f"{count(objects[0].clicks, 'click')}) was kept when annotating stopped. Add it to the "
                        "accepted objects?"):
                    for obj in objects:
                        obj.properties.pop("unaccepted", None)
                        obj.properties["recovered"] = True
                    self.add_loaded(objects, "Added the object kept from before (Ctrl-Z does not remove it: "
                                             "delete it in the list if it is not wanted).")
                    autosave.remove(path)
                elif objects:
                    aside = autosave.set_aside(path)
                    self.say(f"Not added: the object kept from before is in {aside}. {self.accepted.count_text()}")
            except OSError as err:
                self.on_error(InputError(f"The object kept in {path} could not be set aside ({err})."))
                return  # never overwritten: not kept from now on
            self.live.attach(path, snapshot)

        self.live.attach(None)
        if not path.exists():
            self.live.attach(path, snapshot)
            return
        self.threads.run(lambda: autosave.load(path), loaded, unreadable)
