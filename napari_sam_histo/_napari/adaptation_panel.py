"""The Annotator dock's view of the decoder learning from this slide (``adaptation.slide_adaptation``):
a switch, what it has learned and whether the adapted copy is in use, Reset and Save.

Thin on purpose: the adaptation runs on its own thread and reports its state through
``on_change``; the panel relays that to the GUI thread and only ever reads state without a lock,
so nothing here waits for a training step.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QCheckBox, QFileDialog, QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

MIN_HELD_OUT = 3  # adaptation.settings.MIN_HELD_OUT (not imported: that would import torch on the GUI thread)
MIN_JUDGED = 3  # adaptation.slide_refinement.MIN_JUDGED (the same)

OFF_TEXT = "Off: every object is decoded by the decoder chosen above."


def describe(state) -> str:
    """What the learning is doing and what it has learned, in words a pathologist can read
    (``adaptation.settings.AdaptationState``)."""
    if not state.enabled:
        return OFF_TEXT
    objects = state.objects + state.queued
    if objects == 0 and not state.resumed_pending:
        return ("On: accepted objects teach a copy of the decoder in the background (none yet)."
                + _skipped(state))
    earlier = f", {state.resumed} of them from earlier work" if state.resumed else ""
    text = f"Learning from {_count(objects, 'accepted object')}{earlier}: {_now(state)}."
    if state.resumed_pending:
        text += f" {_count(state.resumed_pending, 'earlier object')} still to learn from."
    text += _skipped(state)
    if state.steps or state.owed:
        text += f" {state.steps} of {state.steps + state.owed} training steps done."
    if state.base_noc is None or state.held_out_objects < MIN_HELD_OUT:
        text += (f" In use: the chosen decoder (the copy is judged once {MIN_HELD_OUT} objects are kept aside; "
                 f"{state.held_out_objects} so far).")
    else:
        judged = (f"clicks to 85 % on the objects kept aside: adapted {state.adapted_noc:.1f}, "
                  f"chosen {state.base_noc:.1f}")
        if state.in_use:
            text += f" In use: the ADAPTED copy ({judged})."
        else:
            text += f" In use: the chosen decoder, the copy is not better yet ({judged})."
    return text + " " + describe_refiner(state)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _now(state) -> str:
    """What the background thread is doing now."""
    if state.activity == "waiting" or (not state.activity and (state.queued or state.owed or state.resumed_pending
                                                               or state.refiner_pending)):
        return "waiting for a quiet moment (no click or tile loading)"
    if state.activity == "preparing":
        return "loading the tile of an earlier object"
    if state.activity == "refining":
        return "the border refiner is re-clicking an accepted object"
    if state.activity == "training" and state.owed:
        return f"training step {state.steps + 1} of {state.steps + state.owed}"
    if state.activity == "judging":
        return f"judging the copy against the chosen decoder on {_count(state.held_out_objects, 'object')} kept aside"
    return "done for now"


def _skipped(state) -> str:
    """Earlier objects that could not be learned from."""
    parts = []
    if state.resumed_too_large:
        parts.append(f"{state.resumed_too_large} larger than a tile")
    if state.resumed_too_small:
        parts.append(f"{state.resumed_too_small} too small")
    return f" Earlier objects skipped: {', '.join(parts)}." if parts else ""


def describe_refiner(state) -> str:
    """The slide refiner's part of the line."""
    pending = f", {state.refiner_pending} object(s) to learn from" if state.refiner_pending else ""
    if not state.refiner_enabled:
        return f"Border refiner: switched off (it goes on learning{pending})."
    if not state.refiner_judged:
        return f"Border refiner: learning{pending}."
    judged = (f"clicks to 85 % on {state.refiner_judged} accepted object(s): refined {state.refiner_noc:.1f}, "
              f"without {state.refiner_base_noc:.1f}")
    if state.refiner_in_use:
        return f"Border refiner: ON where an object's clicks favour it ({judged}{pending})."
    if state.refiner_judged < MIN_JUDGED:
        return f"Border refiner: off until judged on {MIN_JUDGED} objects ({judged}{pending})."
    return f"Border refiner: off, not better yet ({judged}{pending})."


class AdaptationPanel(QGroupBox):
    def __init__(self, threads, parent=None) -> None:
        super().__init__("Learn from this slide", parent)
        self.threads = threads
        self.adaptation = None
        self.slide = self.suggested = ""
        self.last_saved: Path | None = None
        layout = QVBoxLayout(self)
        self.check = QCheckBox("Adapt the decoder to the objects I accept")
        self.check.setToolTip("A copy of the decoder fine-tunes on accepted objects while you work (never while a "
                              "click runs) and replaces it only when it needs fewer clicks on objects kept aside.")
        self.check.toggled.connect(self._toggled)
        layout.addWidget(self.check)
        self.refiner_check = QCheckBox("Refine borders as my accepted objects draw them")
        self.refiner_check.setToolTip("The border refiner: once it needs fewer clicks on accepted objects, it moves "
                                      "the mask's border of the next objects to where this slide's accepted objects "
                                      "put it (where an object's own clicks favour it). Off: SAM's border.")
        self.refiner_check.setChecked(True)
        self.refiner_check.setEnabled(False)  # with the switch above
        self.refiner_check.toggled.connect(self._refiner_toggled)
        indented = QHBoxLayout()  # an option of the switch above: drawn under it, indented
        indented.addSpacing(20)
        indented.addWidget(self.refiner_check)
        layout.addLayout(indented)
        self.state_label = QLabel(OFF_TEXT)
        self.state_label.setWordWrap(True)
        layout.addWidget(self.state_label)
        self.note_label = QLabel("")  # what Save or Reset did (the state line keeps changing)
        self.note_label.setWordWrap(True)
        layout.addWidget(self.note_label)
        row = QHBoxLayout()
        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip("Forget what was learned: back to the chosen decoder (annotations stay)")
        self.reset_button.clicked.connect(self.reset)
        self.save_button = QPushButton("Save decoder…")
        self.save_button.setToolTip("Save the adapted copy as a decoder checkpoint, to choose on the next slides")
        self.save_button.clicked.connect(self._save_clicked)
        row.addWidget(self.reset_button)
        row.addWidget(self.save_button)
        layout.addLayout(row)
        self.attach(None)

    @property
    def wanted(self) -> bool:
        return self.check.isChecked()

    def relay(self, adaptation, state) -> None:
        """``on_change`` for the adaptation (any thread): shown on the GUI thread if ``adaptation``
        (the sender) is still the one attached."""
        self.threads.emit(self._show_if_current, (adaptation, state))

    def _show_if_current(self, item) -> None:
        adaptation, state = item
        if adaptation is self.adaptation and adaptation is not None:
            self.show_state(state)

    def attach(self, adaptation, slide: str = "", suggested: str = "") -> None:
        """The annotator's adaptation (None: not started); ``slide`` goes into a saved checkpoint's
        metadata, ``suggested`` is the save dialog's first answer."""
        self.adaptation, self.slide, self.suggested = adaptation, slide, suggested
        self.note_label.setText("")
        for button in (self.reset_button, self.save_button):
            button.setEnabled(adaptation is not None)
        if adaptation is None:
            self.state_label.setText("Starts with the annotator." if self.wanted else OFF_TEXT)
        else:
            if adaptation.enabled != self.wanted:  # the switch was changed while the annotator started
                adaptation.enabled = self.wanted
            if adaptation.refine_borders != self.refiner_check.isChecked():
                adaptation.refine_borders = self.refiner_check.isChecked()
            self.show_state(adaptation.state())

    def show_state(self, state) -> None:
        text = describe(state)
        if self.adaptation is not None and self.adaptation.worker.error:
            text += f" ⚠ The last learning step failed ({self.adaptation.worker.error}); the chosen decoder is safe."
        self.state_label.setText(text)
        self.save_button.setEnabled(self.adaptation is not None and state.steps > 0)

    def _toggled(self, on: bool) -> None:
        self.refiner_check.setEnabled(on)
        if self.adaptation is not None:
            self.adaptation.enabled = on  # reports its state through relay
        else:
            self.attach(None)

    def _refiner_toggled(self, on: bool) -> None:
        if self.adaptation is not None:
            self.adaptation.refine_borders = on  # reports its state through relay

    def reset(self) -> None:
        if self.adaptation is None:
            return
        adaptation = self.adaptation
        self.note_label.setText("Resetting…")

        def reset_done(note: str) -> None:
            self.note_label.setText(note)
            self._show_if_current((adaptation, adaptation.state()))

        self.threads.relay(adaptation.reset(), lambda result: reset_done("Reset: back to the chosen decoder, nothing "
                                                                         "learned."),
                           lambda err: reset_done(f"⚠ Reset failed: {err}"))

    def save_to(self, path: str | Path) -> None:
        """Write the adapted decoder (our checkpoint format) to ``path``; the label says where."""
        if self.adaptation is None:
            return
        path = Path(path)
        if path.suffix.lower() not in (".pt", ".pth"):
            path = path.with_suffix(".pt")
        self.threads.relay(self.adaptation.save(path, slide=self.slide), self._saved,
                           lambda err: self.note_label.setText(f"⚠ The adapted decoder was not saved: {err}"))

    def _saved(self, result) -> None:
        self.last_saved = Path(result)
        self.note_label.setText(f"Saved the adapted decoder to {result}: choose it as the decoder on the next "
                                "slides.")

    def _save_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the adapted decoder", self.suggested,
                                              "Decoder checkpoint (*.pt)")
        if path:
            self.save_to(path)
