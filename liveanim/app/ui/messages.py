"""Messages to the person: in the window's own words, and shown without blocking the event
loop, so frames keep coming."""

from __future__ import annotations

from PyQt6.QtCore import Qt
from PyQt6.QtWidgets import QMessageBox, QWidget

from liveanim.errors import Fix, LiveAnimError

# Each `Fix` as the window offers it: its menus, lists and buttons, never a command-line
# option. '' where the window has no such choice (it always finds the face; it picks the device
# and whether to compile).
WINDOW_FIXES: dict[Fix, str] = {
    Fix.WEIGHTS_FILE: "If you have the weights file elsewhere, choose it with File > Get the LIA-X weights... > "
                      "Choose file...",
    Fix.NO_CROP: "",
    Fix.OTHER_CAMERA: "Pick another camera or a video file under Input (the refresh button looks for cameras "
                      "again).",
    Fix.CPU_DEVICE: "",
    Fix.FP32: "On the CPU choose fp32 in the toolbar's Precision list.",
    Fix.FP16: "Or choose fp16 in the toolbar's Precision list (half the memory).",
    Fix.TORCH_ENGINE: "Choose torch in the toolbar's Engine list.",
    Fix.OTHER_ENGINE: "Or choose onnxruntime or torch in the toolbar's Engine list.",
    Fix.BUILD_FOR_OTHER_GPUS: "",
    Fix.NO_COMPILE: "",
    Fix.TENSORRT_OR_TORCH: "Choose tensorrt or torch in the toolbar's Engine list.",
}


def window_text(error: BaseException) -> str:
    """What the window says about `error`: LiveAnim's own errors with their fix in the window's
    words, anything else as it is."""
    if isinstance(error, LiveAnimError):
        return error.worded(WINDOW_FIXES[error.fix] if error.fix else "")
    return str(error)


def show_warning(parent: QWidget, title: str, text: str) -> QMessageBox:
    """A window-modal warning shown with `open()` (not `exec()`); it deletes itself when closed."""
    box = QMessageBox(QMessageBox.Icon.Warning, title, text, QMessageBox.StandardButton.Ok, parent)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    box.open()
    return box
