"""Beyond live: edit a still portrait with the dials, and animate a portrait from a video.

Both run the offline modes on the controller's engine through background tasks; the dialogs
only collect paths and show results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PyQt6.QtCore import pyqtSignal
from PyQt6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from liveanim.app.ui.frame_view import FrameView
from liveanim.app.ui.offline_tasks import AnimateJob
from liveanim.app.ui.session_controller import SessionController
from liveanim.app.ui.source_picker import VIDEO_FILTER
from liveanim.app.ui.workers import Task
from liveanim.pipeline.offline import Written
from liveanim.pipeline.sources import IMAGE_SUFFIXES

IMAGE_FILTER = "Images (" + " ".join(f"*{s}" for s in IMAGE_SUFFIXES) + ")"
RENDERING = "Rendering..."


class PathField(QWidget):
    """A path entry with a Browse button.

    title:  the file dialog's title.
    filter: its name filter.
    save:   ask for a file to write rather than one to open.
    """

    path_changed = pyqtSignal()  # browsed to, or typed and confirmed

    def __init__(self, title: str, filter: str, save: bool = False, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.edit = QLineEdit()
        self.edit.editingFinished.connect(self.path_changed)
        self._title, self._filter, self._save = title, filter, save
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit, 1)
        layout.addWidget(browse)

    def path(self) -> Path | None:
        text = self.edit.text().strip()
        return Path(text).expanduser() if text else None

    def set_path(self, path: Path) -> None:
        self.edit.setText(str(path))
        self.path_changed.emit()

    def _browse(self) -> None:
        ask = QFileDialog.getSaveFileName if self._save else QFileDialog.getOpenFileName
        name, _ = ask(self, self._title, self.edit.text(), self._filter)
        if name:
            self.set_path(Path(name))


class StillEditDialog(QDialog):
    """Shows a portrait edited by the main window's dials, live, and saves it as a PNG.

    controller: runs the edits.
    offsets:    gives the current dial offsets.
    """

    def __init__(self, controller: SessionController, offsets: Callable[[], np.ndarray],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Edit a still portrait")
        self._controller = controller
        self._offsets = offsets
        self._task: Task | None = None
        self._stale = False
        self.source = PathField("Open a portrait", IMAGE_FILTER)
        self.source.path_changed.connect(self.refresh)
        self.preview = FrameView("Choose a portrait; the dials of the main window edit it.", minimum=256)
        self.message = QLabel()
        self.message.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.save_button = buttons.addButton("Save PNG...", QDialogButtonBox.ButtonRole.ActionRole)
        self.save_button.clicked.connect(self._ask_save)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        form = QFormLayout()
        form.addRow("Portrait:", self.source)
        layout.addLayout(form)
        layout.addWidget(self.preview, 1)
        layout.addWidget(self.message)
        layout.addWidget(buttons)

    def refresh(self) -> None:
        """Render the preview again with the current dials (at most one render at a time)."""
        if self.source.path() is None or not self.isVisible():
            return
        if self._task is not None:
            self._stale = True
            return
        self._stale = False
        self.message.setText(RENDERING)
        self._task = self._controller.edit_still(self.source.path(), self._offsets(), None,
                                                 self._rendered, self._failed)

    def save(self, out: Path) -> None:
        """Write the edited portrait to `out` through the offline edit."""
        if self.source.path() is None:
            self.message.setText("Choose a portrait first.")
            return
        self.message.setText(f"Saving {out.name}...")
        self._controller.edit_still(self.source.path(), self._offsets(), out,
                                    lambda _: self.message.setText(f"Saved {out}"), self.message.setText)

    def _rendered(self, image: np.ndarray) -> None:
        self._task = None
        self.preview.set_frame(image)
        if self.message.text() == RENDERING:
            self.message.clear()
        if self._stale:
            self.refresh()

    def _failed(self, message: str) -> None:
        self._task = None
        self.message.setText(message)

    def _ask_save(self) -> None:
        source = self.source.path()
        suggestion = str(source.with_name(f"{source.stem}_edited.png")) if source else ""
        name, _ = QFileDialog.getSaveFileName(self, "Save the edited portrait", suggestion, "PNG image (*.png)")
        if name:
            self.save(Path(name) if name.lower().endswith(".png") else Path(f"{name}.png"))


class AnimateDialog(QDialog):
    """Animates a portrait with the face in a video file, with progress and cancel.

    controller: runs the animation.
    offsets:    gives the current dial offsets (applied when the box is ticked).
    """

    def __init__(self, controller: SessionController, offsets: Callable[[], np.ndarray],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Animate a portrait from a video")
        self._controller = controller
        self._offsets = offsets
        self._task: Task | None = None
        self.source = PathField("Open a portrait", IMAGE_FILTER)
        self.driving = PathField("Open a driving video", VIDEO_FILTER)
        self.out = PathField("Save the animation", "MP4 video (*.mp4)", save=True)
        self._suggested: Path | None = None  # the output last suggested, while the person keeps it
        self.driving.edit.textChanged.connect(self._suggest_output)
        self.use_dials = QCheckBox("Apply the current dials")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.message = QLabel()
        self.message.setWordWrap(True)
        buttons = QDialogButtonBox()
        self.start_button = buttons.addButton("Animate", QDialogButtonBox.ButtonRole.AcceptRole)
        self.cancel_button = buttons.addButton("Cancel", QDialogButtonBox.ButtonRole.ActionRole)
        close = buttons.addButton(QDialogButtonBox.StandardButton.Close)
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        close.clicked.connect(self.reject)
        self.cancel_button.setEnabled(False)
        form = QFormLayout()
        form.addRow("Portrait:", self.source)
        form.addRow("Driving video:", self.driving)
        form.addRow("Output:", self.out)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        for widget in (self.use_dials, self.progress, self.message, buttons):
            layout.addWidget(widget)
        self.setMinimumWidth(520)

    def start(self) -> None:
        paths = (self.source.path(), self.driving.path(), self.out.path())
        if None in paths:
            self.message.setText("Choose a portrait, a driving video and where to save the result.")
            return
        edit = self._offsets() if self.use_dials.isChecked() else None
        self._task = self._controller.animate_video(AnimateJob(*paths, edit=edit), self._finished, self._failed)
        self._task.on("progress", self._progressed).on("cancelled", self._cancelled)
        self._set_running(True)
        self.message.setText("Starting...")

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self.message.setText("Cancelling after the current batch...")

    def reject(self) -> None:
        """Closing the dialog cancels a running animation."""
        self.cancel()
        super().reject()

    def _progressed(self, fraction: float, text: str) -> None:
        self.progress.setRange(0, 0 if fraction < 0 else 1000)
        self.progress.setValue(round(max(fraction, 0) * 1000))
        self.message.setText(text)

    def _finished(self, written: Written) -> None:
        self._set_running(False)
        self.progress.setRange(0, 1000)
        self.progress.setValue(1000)
        self.message.setText(f"Saved {written.out}" + (f", but {written.note}." if written.note else ""))

    def _failed(self, message: str) -> None:
        self._set_running(False)
        self.message.setText(message)

    def _cancelled(self) -> None:
        self._set_running(False)
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.message.setText("Cancelled; the partial file was removed.")

    def _set_running(self, running: bool) -> None:
        if not running:
            self._task = None
        self.start_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _suggest_output(self, text: str) -> None:
        """Suggest '<video>_animated.mp4' beside the driving video, and follow the video while the
        person has not chosen an output of their own. Only a path to an existing file counts:
        half-typed paths ('/', '/ho') suggest nothing."""
        driving = Path(text.strip()).expanduser()
        if not text.strip() or not driving.is_file():
            return
        if self.out.path() not in (None, self._suggested):
            return  # typed or browsed by the person: theirs to keep
        self._suggested = driving.with_name(f"{driving.stem}_animated.mp4")
        self.out.set_path(self._suggested)
