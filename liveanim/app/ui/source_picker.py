"""Choosing the driving input: a camera (listed in the background) or a video file."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PyQt6.QtCore import pyqtSignal
from PyQt6.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QPushButton, QStyle, QToolButton, QWidget

from liveanim.app.ui.workers import TaskRunner
from liveanim.pipeline.sources import CameraConfig, CameraSource, FrameSource, VideoFileSource

log = logging.getLogger(__name__)

VIDEO_FILTER = "Videos (*.mp4 *.mov *.mkv *.webm *.avi);;All files (*)"


@dataclass(frozen=True)
class SourceSpec:
    """A driving input the person chose.

    kind:  'camera' or 'file'.
    value: the camera's index or device path, or the video file's path.
    label: what the picker shows (not part of the identity: a camera keeps its label's changes).
    """

    kind: str
    value: str
    label: str = field(default="", compare=False)

    @classmethod
    def camera(cls, device: int | str, label: str = "") -> SourceSpec:
        return cls("camera", str(device), label or f"Camera {device}")

    @classmethod
    def file(cls, path: Path) -> SourceSpec:
        return cls("file", str(path), f"Video: {Path(path).name}")

    @classmethod
    def from_setting(cls, text: str) -> SourceSpec | None:
        """The inverse of `setting`; None for an empty or unknown entry."""
        kind, _, value = text.partition(":")
        if not value:
            return None
        if kind == "camera":
            return cls.camera(value)
        return cls.file(Path(value)) if kind == "file" else None

    @property
    def setting(self) -> str:
        return f"{self.kind}:{self.value}"

    def open(self) -> FrameSource:
        """The frame source (a video file is checked now; a camera opens on the capture thread)."""
        if self.kind == "file":
            return VideoFileSource(Path(self.value), loop=True)
        device: int | str = int(self.value) if self.value.isdigit() else self.value
        return CameraSource(CameraConfig(device=device))


CameraLister = Callable[[], list[SourceSpec]]


class SourcePicker(QWidget):
    """A combo of inputs, a refresh button (cameras are probed off the GUI thread) and 'Video file...'.

    list_cameras: finds the cameras; slow, so it runs on `runner`.
    """

    source_changed = pyqtSignal(object)  # SourceSpec

    def __init__(self, list_cameras: CameraLister, runner: TaskRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._list_cameras = list_cameras
        self._runner = runner
        self.combo = QComboBox()
        self.combo.setMinimumContentsLength(12)
        self.combo.setToolTip("Driving input")
        self.combo.setPlaceholderText("No camera found: use Video file...")
        self.combo.currentIndexChanged.connect(self._picked)
        self.refresh_button = QToolButton()
        self.refresh_button.setIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_BrowserReload))
        self.refresh_button.setToolTip("Look for cameras again")
        self.refresh_button.clicked.connect(self.refresh)
        video = QPushButton("Video file...")
        video.clicked.connect(self._ask_video)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo, 1)
        layout.addWidget(self.refresh_button)
        layout.addWidget(video)

    def current(self) -> SourceSpec | None:
        return self.combo.currentData()

    def refresh(self) -> None:
        """List the cameras again in the background; the current choice is kept."""
        self.refresh_button.setEnabled(False)
        self._runner.start(lambda context: self._list_cameras(), "camera search",
                           on_done=self._show_cameras, on_error=self._search_failed)

    def select(self, spec: SourceSpec) -> None:
        """Make `spec` the current input, adding it to the list if it is new."""
        index = next((i for i in range(self.combo.count()) if self.combo.itemData(i) == spec), -1)
        if index < 0:
            self.combo.addItem(spec.label, spec)
            index = self.combo.count() - 1
        self.combo.setCurrentIndex(index)

    def _show_cameras(self, cameras: list[SourceSpec]) -> None:
        self.refresh_button.setEnabled(True)
        current = self.current()
        files = [self.combo.itemData(i) for i in range(self.combo.count()) if self.combo.itemData(i).kind == "file"]
        self.combo.blockSignals(True)
        self.combo.clear()
        for spec in cameras + files:
            self.combo.addItem(spec.label, spec)
        self.combo.blockSignals(False)
        if current is not None:
            self.select(current)
        elif self.combo.count():
            self._picked(self.combo.currentIndex())
        log.info("%d camera(s) found", len(cameras))

    def _search_failed(self, message: str) -> None:
        self.refresh_button.setEnabled(True)
        log.warning("camera search failed: %s", message)

    def _ask_video(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self, "Drive with a video file", "", VIDEO_FILTER)
        if name:
            self.select(SourceSpec.file(Path(name)))

    def _picked(self, index: int) -> None:
        if index >= 0:
            self.source_changed.emit(self.combo.itemData(index))
