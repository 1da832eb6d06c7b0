"""The avatar gallery: thumbnails of the portraits, add (files, folder, drag and drop),
remove, switch, and the crop the model sees for the current one.

The gallery only shows what the avatar list holds (the controller's `AvatarList`); it asks for
changes through its signals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PyQt6.QtCore import QSize, pyqtSignal
from PyQt6.QtGui import QDragEnterEvent, QDragMoveEvent, QDropEvent, QIcon
from PyQt6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QListView,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from liveanim.app.ui.frame_view import FrameView, to_pixmap
from liveanim.pipeline.avatars import Portrait
from liveanim.pipeline.sources import IMAGE_SUFFIXES

THUMBNAIL = 88


def image_files(paths: list[Path]) -> list[Path]:
    """The image files among `paths`, with folders replaced by the images they hold (sorted)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            found.append(path)
    return found


class AvatarThumbnails(QListWidget):
    """Thumbnails in a wrapping row; accepts image files and folders dropped on it."""

    files_dropped = pyqtSignal(list)  # list[Path]

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setIconSize(QSize(THUMBNAIL, THUMBNAIL))
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setWrapping(True)
        self.setUniformItemSizes(True)
        self.setAcceptDrops(True)
        self.setMinimumHeight(THUMBNAIL + 40)
        self.setToolTip("Drop portrait images or folders here")

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = [Path(url.toLocalFile()) for url in event.mimeData().urls() if url.isLocalFile()]
        files = image_files(paths)
        if files:
            self.files_dropped.emit(files)
        event.acceptProposedAction()


class AvatarGallery(QWidget):
    """The gallery panel; index i is the avatar list's avatar i."""

    add_requested = pyqtSignal(list)  # list[Path]
    remove_requested = pyqtSignal(int)
    select_requested = pyqtSignal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.list = AvatarThumbnails()
        self.list.files_dropped.connect(self.add_requested)
        self.list.currentRowChanged.connect(self._row_changed)
        self.crop_view = FrameView("No avatar", minimum=96, preferred=160)
        self.crop_view.setToolTip("The crop of the current avatar that the model animates")
        self._crops: list[np.ndarray] = []
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.crop_view, 1)
        column = QVBoxLayout()
        column.addWidget(self.list, 1)
        column.addLayout(self._buttons())
        layout.addLayout(column, 3)

    def _buttons(self) -> QHBoxLayout:
        row = QHBoxLayout()
        buttons = (("Add...", "Add portrait images", self._ask_files),
                   ("Folder...", "Add every portrait in a folder", self._ask_folder),
                   ("Remove", "Remove the selected avatar", self._remove_current))
        for text, tip, slot in buttons:
            button = QPushButton(text)
            button.setToolTip(tip)
            button.clicked.connect(slot)
            row.addWidget(button)
        row.addStretch(1)
        return row

    def count(self) -> int:
        return self.list.count()

    def current(self) -> int:
        return self.list.currentRow()

    def show_avatars(self, portraits: list[Portrait]) -> None:
        """Show the avatar list as it now is (after avatars were added or removed); which one is
        current comes next, through `show_current`."""
        self.list.blockSignals(True)
        self.list.clear()
        for portrait in portraits:
            item = QListWidgetItem(QIcon(to_pixmap(portrait.crop)), portrait.name)
            item.setToolTip(portrait.name)
            self.list.addItem(item)
        self.list.blockSignals(False)
        self._crops = [portrait.crop for portrait in portraits]
        if not self._crops:
            self.crop_view.clear()

    def show_current(self, index: int) -> None:
        """Mark avatar `index` as the one being animated, without asking the session again."""
        self.list.blockSignals(True)
        self.list.setCurrentRow(index)
        self.list.blockSignals(False)
        if 0 <= index < len(self._crops):
            self.crop_view.set_frame(self._crops[index])

    def step(self, delta: int) -> None:
        """Ask for the previous (-1) or next (+1) avatar, wrapping around."""
        if self.count():
            self.select_requested.emit((max(self.current(), 0) + delta) % self.count())

    def _row_changed(self, row: int) -> None:
        if row >= 0:
            self.select_requested.emit(row)

    def _ask_files(self) -> None:
        pattern = " ".join(f"*{suffix}" for suffix in IMAGE_SUFFIXES)
        files, _ = QFileDialog.getOpenFileNames(self, "Add portraits", "", f"Images ({pattern})")
        if files:
            self.add_requested.emit([Path(f) for f in files])

    def _ask_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add every portrait in a folder")
        files = image_files([Path(folder)]) if folder else []
        if files:
            self.add_requested.emit(files)

    def _remove_current(self) -> None:
        if self.current() >= 0:
            self.remove_requested.emit(self.current())
