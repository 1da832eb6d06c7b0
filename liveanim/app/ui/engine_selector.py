"""Pick the inference backend and precision; the controller rebuilds the engine in the background."""

from __future__ import annotations

from PyQt6.QtCore import pyqtSignal
from PyQt6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QWidget

from liveanim.engines import ENGINE_CHOICES, PRECISIONS


class EngineSelector(QWidget):
    """Two combos; `changed(backend, precision)` when the person picks another one."""

    changed = pyqtSignal(str, str)

    def __init__(self, backend: str, precision: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.backend = QComboBox()
        self.backend.addItems(ENGINE_CHOICES)
        self.backend.setToolTip("Inference backend ('auto' picks the fastest this machine has)")
        self.precision = QComboBox()
        self.precision.addItems(PRECISIONS)
        self.precision.setToolTip("fp16 needs a GPU; bf16 a GPU or a CPU with bf16 instructions, "
                                  "where it takes half the time")
        self.show_choice(backend, precision)
        self.backend.currentTextChanged.connect(self._picked)
        self.precision.currentTextChanged.connect(self._picked)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("Engine"))
        layout.addWidget(self.backend)
        layout.addWidget(QLabel("Precision"))
        layout.addWidget(self.precision)

    def choice(self) -> tuple[str, str]:
        return self.backend.currentText(), self.precision.currentText()

    def show_choice(self, backend: str, precision: str) -> None:
        """Show a choice without emitting `changed` (restoring settings, or a failed build)."""
        for combo, value in ((self.backend, backend), (self.precision, precision)):
            combo.blockSignals(True)
            combo.setCurrentIndex(max(0, combo.findText(value)))
            combo.blockSignals(False)

    def _picked(self, _: str) -> None:
        self.changed.emit(*self.choice())
