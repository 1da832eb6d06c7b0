"""Widgets that show video frames: scaled with their aspect ratio and smooth filtering.

They paint the pixmap themselves instead of using a QLabel, so that a large frame never
forces the window to grow and resizing stays fluid.
"""

from __future__ import annotations

import numpy as np
from PyQt6.QtCore import QRectF, QSize, Qt
from PyQt6.QtGui import QColor, QFont, QImage, QPainter, QPaintEvent, QPen, QPixmap
from PyQt6.QtWidgets import QSizePolicy, QWidget

from liveanim.face import CropBox

BACKGROUND = QColor(24, 24, 28)
BOX_COLOUR = QColor(80, 220, 120)
LOST_COLOUR = QColor(235, 80, 70)


def to_pixmap(rgb: np.ndarray) -> QPixmap:
    """uint8 RGB (H, W, 3) -> a QPixmap that owns its pixels."""
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, (rgb.dtype, rgb.shape)
    rgb = np.ascontiguousarray(rgb)
    height, width = rgb.shape[:2]
    image = QImage(rgb.data, width, height, 3 * width, QImage.Format.Format_RGB888)
    return QPixmap.fromImage(image.copy())


class FrameView(QWidget):
    """Shows one frame as large as fits, centred, on a dark background.

    placeholder: text shown until the first frame arrives.
    minimum:     the smallest side the view may be squeezed to, in pixels.
    preferred:   the side it asks for; layouts share any room beyond that by stretch.
    """

    def __init__(self, placeholder: str, minimum: int = 160, preferred: int = 512,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._pixmap: QPixmap | None = None
        self._placeholder = placeholder
        self._preferred = preferred
        self.setMinimumSize(minimum, minimum)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def pixmap(self) -> QPixmap | None:
        return self._pixmap

    def sizeHint(self) -> QSize:
        return QSize(self._preferred, self._preferred)

    def set_frame(self, rgb: np.ndarray) -> None:
        self._pixmap = to_pixmap(rgb)
        self.update()

    def clear(self) -> None:
        self._pixmap = None
        self.update()

    def image_rect(self) -> QRectF:
        """Where the frame is drawn inside the widget (aspect kept, centred)."""
        if self._pixmap is None:
            return QRectF()
        size = self._pixmap.size().scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio)
        left = (self.width() - size.width()) / 2
        top = (self.height() - size.height()) / 2
        return QRectF(left, top, size.width(), size.height())

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), BACKGROUND)
        if self._pixmap is None:
            painter.setPen(QColor(160, 160, 170))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap,
                             self._placeholder)
            return
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        painter.drawPixmap(self.image_rect(), self._pixmap, QRectF(self._pixmap.rect()))
        self.paint_overlay(painter)

    def paint_overlay(self, painter: QPainter) -> None:
        """Drawn over the frame; nothing here, subclasses add marks."""


class InputView(FrameView):
    """The camera preview, with the tracked face box and a 'face lost' badge."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("No input.\nPick a camera or a video file, then press Start.", 160, 300, parent)
        self._box: CropBox | None = None
        self._face_found = True

    @property
    def face_found(self) -> bool:
        return self._face_found

    def set_tracking(self, box: CropBox | None, found: bool) -> None:
        self._box = box
        self._face_found = found
        self.update()

    def paint_overlay(self, painter: QPainter) -> None:
        rect = self.image_rect()
        if self._box is not None:
            scale = rect.width() / self.pixmap().width()
            colour = BOX_COLOUR if self._face_found else LOST_COLOUR
            painter.setPen(QPen(colour, 2, Qt.PenStyle.SolidLine if self._face_found else Qt.PenStyle.DashLine))
            painter.drawRect(QRectF(rect.left() + self._box.left * scale, rect.top() + self._box.top * scale,
                                    self._box.size * scale, self._box.size * scale))
        if not self._face_found:
            self._paint_badge(painter, rect, "Face lost")

    def _paint_badge(self, painter: QPainter, rect: QRectF, text: str) -> None:
        font = QFont(painter.font())
        font.setBold(True)
        painter.setFont(font)
        metrics = painter.fontMetrics()
        badge = QRectF(rect.left() + 8, rect.top() + 8, metrics.horizontalAdvance(text) + 16,
                       metrics.height() + 8)
        painter.fillRect(badge, LOST_COLOUR)
        painter.setPen(Qt.GlobalColor.white)
        painter.drawText(badge, Qt.AlignmentFlag.AlignCenter, text)


class OutputView(FrameView):
    """The avatar, with a large centred caption over it (the calibration countdown)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("The animated avatar appears here.\nPress Start (Space).", 256, 512, parent)
        self._caption = ""

    @property
    def caption(self) -> str:
        return self._caption

    def set_caption(self, text: str) -> None:
        self._caption = text
        self.update()

    def paint_overlay(self, painter: QPainter) -> None:
        if not self._caption:
            return
        rect = self.image_rect()
        font = QFont(painter.font())
        font.setBold(True)
        font.setPixelSize(max(24, round(rect.height() / 4)))
        painter.setFont(font)
        painter.setPen(QColor(0, 0, 0, 160))
        painter.drawText(rect.translated(3, 3), Qt.AlignmentFlag.AlignCenter, self._caption)
        painter.setPen(Qt.GlobalColor.white)
        painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, self._caption)
