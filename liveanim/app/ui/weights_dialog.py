"""First start without weights: download them with progress, or pick a file by hand.

The hub download cannot be interrupted, so it runs on a detached thread: closing the app
mid-download does not wait for it, and the hub resumes the partial file next time.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PyQt6.QtCore import Qt, QTimer
from PyQt6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from liveanim import weights
from liveanim.app.ui.workers import TaskContext, TaskRunner
from liveanim.errors import CheckpointError
from liveanim.weights.download import HUB_SUBDIR

log = logging.getLogger(__name__)

POLL_MS = 500
MIB = 2**20


def missing_weights(path: Path | None, cache_dir: Path) -> bool:
    """Whether the model has no weights to load: neither `path` nor a cached file exists."""
    try:
        weights.resolve_weights(path, download=False, cache_dir=cache_dir)
    except CheckpointError:
        return True
    return False


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under `folder` (0 if it does not exist): download progress."""
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


class WeightsDialog(QDialog):
    """Gets the weights onto this computer; `weights_path` is the file once accepted.

    cache_dir: where the download goes (the weights package's cache folder).
    """

    def __init__(self, cache_dir: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("LiveAnim needs the LIA-X weights")
        self.cache_dir = cache_dir
        self.weights_path: Path | None = None
        self._poll = QTimer(self, interval=POLL_MS, timeout=self._show_progress)
        self._runner = TaskRunner(self, max_threads=1)
        release = weights.LIAX_RELEASE
        intro = QLabel(
            f"LiveAnim animates portraits with the LIA-X model. Its weights ({release.filename}, about "
            f"{release.approx_bytes / 1e9:.1f} GB) are not on this computer yet.\n\n"
            f"Download them once from {release.url} into {cache_dir}, or choose a weights file you "
            "already have (.pt or .safetensors)."
        )
        intro.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setRange(0, release.approx_bytes // MIB)
        self.progress.setFormat("%v of %m MiB (%p%)")
        self.progress.setVisible(False)
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.setStyleSheet("color: #c0392b;")
        self.download_button = QPushButton("Download")
        self.download_button.setDefault(True)
        self.download_button.clicked.connect(self.download)
        choose = QPushButton("Choose file...")
        choose.clicked.connect(self._ask_file)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        buttons.addButton(self.download_button, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.addButton(choose, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        for widget in (intro, self.progress, self.message, buttons):
            layout.addWidget(widget)
        self.setMinimumWidth(480)

    def download(self) -> None:
        """Start the download on a background thread; progress follows the growing file."""
        self.download_button.setEnabled(False)
        self.message.clear()
        self.progress.setVisible(True)
        self._poll.start()
        self._runner.start_detached(self._fetch, "weights download", self._downloaded, self._failed)

    def choose_file(self, path: Path) -> None:
        """Use a weights file the person already has (it is checked when the engine loads it)."""
        if not path.is_file():
            self.message.setText(f"{path} is not a file: choose the lia-x.pt or .safetensors weights file.")
            return
        self.weights_path = path
        self.accept()

    def _fetch(self, context: TaskContext) -> Path:
        return weights.download_weights(self.cache_dir)

    def _show_progress(self) -> None:
        self.progress.setValue(min(folder_bytes(self.cache_dir / HUB_SUBDIR) // MIB, self.progress.maximum()))

    def _downloaded(self, path: Path) -> None:
        self._poll.stop()
        log.info("weights downloaded to %s", path)
        self.weights_path = path
        self.accept()

    def _failed(self, message: str) -> None:
        self._poll.stop()
        self.progress.setVisible(False)
        self.download_button.setEnabled(True)
        self.download_button.setText("Try again")
        self.message.setText(message)
        self.adjustSize()

    def _ask_file(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self, "Choose the LIA-X weights", str(Path.home()),
                                              "Weights (*.pt *.pth *.safetensors);;All files (*)")
        if name:
            self.choose_file(Path(name))
