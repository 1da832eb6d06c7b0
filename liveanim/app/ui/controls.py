"""Small reusable controls: a slider row with a numeric entry, sliders in a grid, and a
collapsible section."""

from __future__ import annotations

from PyQt6.QtCore import QObject, Qt, pyqtSignal
from PyQt6.QtGui import QMouseEvent
from PyQt6.QtWidgets import (
    QDoubleSpinBox,
    QGridLayout,
    QLabel,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)


class ResettableSlider(QSlider):
    """A horizontal slider that asks to be reset when double-clicked."""

    reset_requested = pyqtSignal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(Qt.Orientation.Horizontal, parent)

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        self.reset_requested.emit()
        event.accept()


class SliderRow(QObject):
    """A label, a slider and a spin box that edit one number together, placed as one row of
    a grid so that the sliders of a panel line up.

    label:    text before the slider.
    minimum:  smallest value.
    maximum:  largest value.
    default:  the value a double-click (or `reset`) restores.
    decimals: precision of the spin box; the slider moves in steps of 10**-decimals.
    """

    value_changed = pyqtSignal(float)

    def __init__(self, label: str, minimum: float, maximum: float, default: float = 0.0,
                 decimals: int = 3, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.default = default
        self._scale = 10 ** decimals
        self.label = QLabel(label)
        self.slider = ResettableSlider()
        self.slider.setRange(round(minimum * self._scale), round(maximum * self._scale))
        self.slider.setPageStep(max(1, self._scale // 20))
        self.slider.setMinimumWidth(80)
        self.spin = QDoubleSpinBox()
        self.spin.setRange(minimum, maximum)
        self.spin.setDecimals(decimals)
        self.spin.setSingleStep(5 / self._scale)
        self.spin.setAccelerated(True)
        self.set_tooltip("")
        self.set_value(default)
        self.slider.valueChanged.connect(self._slider_moved)
        self.spin.valueChanged.connect(self._spin_edited)
        self.slider.reset_requested.connect(self.reset)

    def place(self, grid: QGridLayout, row: int) -> None:
        """Put the label, slider and spin box in columns 0, 1 and 2 of `row`."""
        grid.addWidget(self.label, row, 0)
        grid.addWidget(self.slider, row, 1)
        grid.addWidget(self.spin, row, 2)

    def set_tooltip(self, text: str) -> None:
        """One tooltip for the whole row; the slider also says how to reset it."""
        self.label.setToolTip(text)
        self.spin.setToolTip(text)
        self.slider.setToolTip(f"{text}\nDouble-click to reset" if text else "Double-click to reset")

    def value(self) -> float:
        return self.spin.value()

    def set_value(self, value: float) -> None:
        """Show `value` without emitting `value_changed` (for loads and syncing)."""
        for widget in (self.slider, self.spin):
            widget.blockSignals(True)
        self.spin.setValue(value)
        self.slider.setValue(round(self.spin.value() * self._scale))
        for widget in (self.slider, self.spin):
            widget.blockSignals(False)

    def reset(self) -> None:
        if self.value() != self.default:
            self.set_value(self.default)
            self.value_changed.emit(self.value())

    def _slider_moved(self, position: int) -> None:
        self.spin.blockSignals(True)
        self.spin.setValue(position / self._scale)
        self.spin.blockSignals(False)
        self.value_changed.emit(self.value())

    def _spin_edited(self, value: float) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(round(value * self._scale))
        self.slider.blockSignals(False)
        self.value_changed.emit(value)


class CollapsibleSection(QWidget):
    """A header button that shows or hides its content; collapsed at first."""

    def __init__(self, title: str, content: QWidget, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.content = content
        self.toggle = QToolButton()
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.toggle.setStyleSheet("QToolButton { border: none; font-weight: bold; }")
        self.toggle.toggled.connect(self.set_expanded)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.toggle)
        layout.addWidget(content)
        content.setVisible(False)

    def set_expanded(self, expanded: bool) -> None:
        self.toggle.setChecked(expanded)
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        self.content.setVisible(expanded)


def slider_grid(rows: list[SliderRow]) -> QGridLayout:
    """The rows in one grid; the slider column takes the spare width."""
    grid = QGridLayout()
    grid.setColumnStretch(1, 1)
    for index, row in enumerate(rows):
        row.place(grid, index)
    return grid
