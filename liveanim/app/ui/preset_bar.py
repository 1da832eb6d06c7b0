"""A row of controls to save, load and delete dial presets."""

from __future__ import annotations

from typing import Callable

from PyQt6.QtCore import pyqtSignal
from PyQt6.QtWidgets import QComboBox, QHBoxLayout, QInputDialog, QMessageBox, QPushButton, QWidget

from liveanim.app.ui.messages import show_warning, window_text
from liveanim.app.ui.presets import Preset, PresetError, PresetStore


class PresetBar(QWidget):
    """Lists the store's presets; `loaded` carries the preset the user loaded.

    store:   where presets live.
    current: gives the dial state to save.
    """

    loaded = pyqtSignal(object)  # Preset

    def __init__(self, store: PresetStore, current: Callable[[], Preset], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self._current = current
        self.combo = QComboBox()
        self.combo.setPlaceholderText("Presets")
        self.combo.setToolTip("Saved dial presets")
        buttons = {"Save...": self._ask_save, "Load": self._load_selected, "Delete": self._ask_delete}
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo, 1)
        for text, slot in buttons.items():
            button = QPushButton(text)
            button.clicked.connect(slot)
            layout.addWidget(button)
        self.refresh()

    def refresh(self, select: str | None = None) -> None:
        self.combo.clear()
        self.combo.addItems(self.store.names())
        self.combo.setCurrentIndex(self.combo.findText(select) if select else -1)

    def save_as(self, name: str) -> bool:
        return self._guarded(lambda: self.store.save(name, self._current()), select=name.strip())

    def load(self, name: str) -> bool:
        return self._guarded(lambda: self.loaded.emit(self.store.load(name)), select=name)

    def delete(self, name: str) -> bool:
        return self._guarded(lambda: self.store.delete(name), select=None)

    def _guarded(self, action: Callable[[], object], select: str | None) -> bool:
        """Run a store action; a PresetError is shown to the user instead of raised."""
        try:
            action()
        except PresetError as error:
            show_warning(self, "Preset", window_text(error))
            return False
        self.refresh(select)
        return True

    def _ask_save(self) -> None:
        name, ok = QInputDialog.getText(self, "Save preset", "Preset name:", text=self.combo.currentText())
        if ok and name.strip():
            self.save_as(name)

    def _load_selected(self) -> None:
        if self.combo.currentText():
            self.load(self.combo.currentText())

    def _ask_delete(self) -> None:
        name = self.combo.currentText()
        if name and QMessageBox.question(self, "Delete preset", f"Delete the preset {name!r}?") \
                == QMessageBox.StandardButton.Yes:
            self.delete(name)
