"""The 3-2-1 countdown before the neutral pose is taken, so the person can settle first."""

from __future__ import annotations

from PyQt6.QtCore import QObject, QTimer, pyqtSignal

COUNT_FROM = 3
TICK_MS = 1000


class CalibrationCountdown(QObject):
    """Counts down once a second; `tick(n)` shows n, `finished` means: take the pose now.

    count_from: the first number shown.
    tick_ms:    milliseconds between numbers.
    """

    tick = pyqtSignal(int)
    finished = pyqtSignal()

    def __init__(self, count_from: int = COUNT_FROM, tick_ms: int = TICK_MS, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._count_from = count_from
        self._left = 0
        self._timer = QTimer(self, interval=tick_ms, timeout=self._step)

    def start(self) -> None:
        """Begin (or begin again) at `count_from`."""
        self._left = self._count_from
        self.tick.emit(self._left)
        self._timer.start()

    def cancel(self) -> None:
        self._timer.stop()
        self.tick.emit(0)

    def _step(self) -> None:
        self._left -= 1
        self.tick.emit(self._left)
        if self._left <= 0:
            self._timer.stop()
            self.finished.emit()
