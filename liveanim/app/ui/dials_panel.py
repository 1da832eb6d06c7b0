"""The expression dials: 14 labelled directions by group, group intensities, all 40 raw
directions (advanced), motion smoothing and presets.

The panel holds the 40 offsets; a labelled dial and its raw twin in the advanced section
edit the same number, so the edit vector is simply the offsets.
"""

from __future__ import annotations

import numpy as np
from PyQt6.QtCore import pyqtSignal
from PyQt6.QtWidgets import QGroupBox, QHBoxLayout, QPushButton, QVBoxLayout, QWidget

from liveanim.app.ui.controls import CollapsibleSection, SliderRow, slider_grid
from liveanim.app.ui.preset_bar import PresetBar
from liveanim.app.ui.presets import Preset, PresetStore
from liveanim.motion.dials import DIALS, FOLLOW, GROUPS, MOTION_DIM
from liveanim.motion.limits import LIMITS

LABELS = {d.index: d.label for d in DIALS}


class DialsPanel(QWidget):
    """Edits the offsets, group intensities and smoothing; emits each change as it happens.

    store:     where presets are kept.
    smoothing: the motion smoothing shown at first (0..1).
    """

    edit_changed = pyqtSignal(object)  # (40,) float32 offsets
    intensity_changed = pyqtSignal(str, float)
    smoothing_changed = pyqtSignal(float)

    def __init__(self, store: PresetStore, smoothing: float, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._offsets = np.zeros(MOTION_DIM, dtype=np.float32)
        self.dial_rows: dict[int, SliderRow] = {}
        self.raw_rows: dict[int, SliderRow] = {}
        self.intensity_rows: dict[str, SliderRow] = {}
        self.smoothing_row = SliderRow("Motion smoothing", LIMITS.smoothing.low, LIMITS.smoothing.high, smoothing,
                                       decimals=2, parent=self)
        self.smoothing_row.set_tooltip("Steadies the avatar's motion; more smoothing adds a little lag")
        self.smoothing_row.value_changed.connect(self.smoothing_changed)
        self.presets = PresetBar(store, self.current_preset)
        self.presets.loaded.connect(self.apply_preset)
        layout = QVBoxLayout(self)
        layout.addWidget(self.presets)
        boxes = [self._group_box(group) for group in GROUPS]
        label_width = max(row.label.sizeHint().width() for row in (*self.dial_rows.values(),
                                                                    *self.intensity_rows.values()))
        for box in boxes:
            box.layout().setColumnMinimumWidth(0, label_width)  # the groups' sliders line up
            layout.addWidget(box)
        layout.addWidget(CollapsibleSection("Advanced: all 40 directions", self._raw_directions()))
        layout.addLayout(slider_grid([self.smoothing_row]))
        layout.addLayout(self._buttons())
        layout.addStretch(1)

    def _group_box(self, group: str) -> QGroupBox:
        box = QGroupBox(group.capitalize())
        intensity = SliderRow("Intensity", LIMITS.intensity.low, LIMITS.intensity.high, default=FOLLOW, decimals=2,
                              parent=self)
        intensity.label.setStyleSheet("font-style: italic;")
        intensity.set_tooltip(f"How much of the performer's {group} motion the avatar follows (0 freezes it)")
        intensity.value_changed.connect(lambda value, g=group: self.intensity_changed.emit(g, value))
        self.intensity_rows[group] = intensity
        rows = [intensity]
        for dial in (d for d in DIALS if d.group == group):
            row = self._offset_row(dial.index, dial.label)
            row.set_tooltip(f"Dictionary direction {dial.index} ('{dial.name}' in presets and the CLI)")
            self.dial_rows[dial.index] = row
            rows.append(row)
        box.setLayout(slider_grid(rows))
        return box

    def _raw_directions(self) -> QWidget:
        content = QWidget()
        for index in range(MOTION_DIM):
            label = f"{index}: {LABELS[index]}" if index in LABELS else f"{index}"
            self.raw_rows[index] = self._offset_row(index, label)
        grid = slider_grid(list(self.raw_rows.values()))
        grid.setContentsMargins(12, 0, 0, 0)
        content.setLayout(grid)
        return content

    def _offset_row(self, index: int, label: str) -> SliderRow:
        row = SliderRow(label, LIMITS.offset.low, LIMITS.offset.high, parent=self)
        row.value_changed.connect(lambda value, i=index: self._set_offset(i, value))
        return row

    def _buttons(self) -> QHBoxLayout:
        row = QHBoxLayout()
        reset = QPushButton("Reset all dials")
        reset.setToolTip("Set every direction to 0 and every intensity to 1 (Ctrl+0)")
        reset.clicked.connect(self.reset_all)
        row.addStretch(1)
        row.addWidget(reset)
        return row

    def offsets(self) -> np.ndarray:
        return self._offsets.copy()

    def intensity(self) -> dict[str, float]:
        return {group: row.value() for group, row in self.intensity_rows.items()}

    def smoothing(self) -> float:
        return self.smoothing_row.value()

    def current_preset(self) -> Preset:
        return Preset(offsets=self.offsets(), intensity=self.intensity())

    def set_offsets(self, offsets: np.ndarray) -> None:
        """Show these offsets and emit the new edit vector; they were checked where they entered
        (a preset, the settings), so the sliders show exactly the values in use."""
        self._offsets = np.asarray(offsets, dtype=np.float32).copy()
        for index, value in enumerate(self._offsets):
            self._show(index, float(value))
        self.edit_changed.emit(self.offsets())

    def set_intensity(self, intensity: dict[str, float]) -> None:
        for group, value in intensity.items():
            self.intensity_rows[group].set_value(value)
            self.intensity_changed.emit(group, self.intensity_rows[group].value())

    def apply_preset(self, preset: Preset) -> None:
        self.set_offsets(preset.offsets)
        self.set_intensity(preset.intensity)

    def reset_all(self) -> None:
        self.apply_preset(Preset(offsets=np.zeros(MOTION_DIM, dtype=np.float32)))

    def _set_offset(self, index: int, value: float) -> None:
        self._offsets[index] = value
        self._show(index, value)
        self.edit_changed.emit(self.offsets())

    def _show(self, index: int, value: float) -> None:
        for rows in (self.dial_rows, self.raw_rows):
            if index in rows:
                rows[index].set_value(value)
