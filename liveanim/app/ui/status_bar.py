"""The status bar: engine, precision, FPS, latency, recording, virtual camera, and background work
(the window's tasks, and the engine optimizing itself for this GPU)."""

from __future__ import annotations

from pathlib import Path

from PyQt6.QtWidgets import QLabel, QProgressBar, QStatusBar, QWidget

from liveanim.app.ui.session_controller import EngineInfo
from liveanim.pipeline.events import Optimized, Optimizing
from liveanim.pipeline.metrics import LiveStats

MESSAGE_MS = 8000


class LiveStatusBar(QStatusBar):
    """Permanent fields on the right, passing messages on the left."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setVisible(False)
        self.busy_label = QLabel("")
        self.busy_label.setVisible(False)
        self.optimizing = QLabel("")
        self.optimizing.setVisible(False)
        self.optimizing.setToolTip("Frames come more slowly until this is done; later starts on this GPU are faster")
        self.engine = QLabel("Engine: none")
        self.precision = QLabel("")
        self.fps = QLabel("-- fps")
        self.latency = QLabel("latency --")
        self.vcam = QLabel("Virtual camera: off")
        self.recording = QLabel("")
        self.fps.setToolTip("Frames delivered per second")
        self.latency.setToolTip("Camera to output, median (95th percentile)")
        self.addPermanentWidget(self.busy)
        self.addPermanentWidget(self.busy_label)
        for label in (self.optimizing, self.engine, self.precision, self.fps, self.latency, self.recording, self.vcam):
            self.addPermanentWidget(label)

    def show_engine(self, info: EngineInfo) -> None:
        """A new engine: its own optimizing progress comes next, if it has any."""
        self.optimizing.setVisible(False)
        self.engine.setText(f"Engine: {info.description}")
        self.precision.setText(f"Precision: {info.precision}")

    def show_stats(self, stats: LiveStats) -> None:
        self.fps.setText(f"{stats.fps:.1f} fps")
        self.latency.setText(f"latency {stats.latency_ms_p50:.0f} ms (p95 {stats.latency_ms_p95:.0f})")
        stages = ", ".join(f"{name} {ms:.1f} ms" for name, ms in stats.stage_ms.items())
        self.fps.setToolTip(f"{stats.frames} frames, {stats.dropped} dropped; {stages}")

    def show_idle(self) -> None:
        """No session: no numbers (the engine's optimizing goes on, and stays shown)."""
        self.fps.setText("-- fps")
        self.latency.setText("latency --")

    def show_optimizing(self, event: Optimizing | Optimized) -> None:
        """The engine's progress while it optimizes for this GPU; at the end the field goes and
        the outcome passes as a message."""
        if isinstance(event, Optimizing):
            self.optimizing.setText(_sentence(event.message))
            self.optimizing.setVisible(True)
        else:
            self.optimizing.setVisible(False)
            self.show_message(_sentence(event.message))

    def show_recording(self, path: Path | None) -> None:
        """'Recording' with the file as its tooltip while a recording runs; nothing otherwise."""
        self.recording.setText("\u25cf Recording" if path is not None else "")
        self.recording.setToolTip(str(path) if path is not None else "")

    def show_vcam(self, active: bool, requested: bool) -> None:
        state = "on" if active else ("on when streaming" if requested else "off")
        self.vcam.setText(f"Virtual camera: {state}")

    def show_busy(self, label: str) -> None:
        """Show background work as a spinning bar and its label, in fields of their own: a passing
        message (a session's warning) stays readable however long the work takes; '' hides both."""
        self.busy.setVisible(bool(label))
        self.busy_label.setVisible(bool(label))
        self.busy_label.setText(f"{label}..." if label else "")

    def show_message(self, text: str) -> None:
        self.showMessage(text, MESSAGE_MS)


def _sentence(message: str) -> str:
    """An event's message (lower case, for the log) as the window's sentence."""
    return message[:1].upper() + message[1:]
