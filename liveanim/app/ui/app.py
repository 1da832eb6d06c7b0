"""`python main.py` without a command: the desktop app."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

from PyQt6.QtCore import QTimer
from PyQt6.QtWidgets import QApplication

from liveanim.app.ui.main_window import MainWindow, WindowDeps
from liveanim.app.ui.model_source import ModelSource
from liveanim.app.ui.presets import PresetStore, default_presets_dir
from liveanim.app.ui.settings import APPLICATION, ORGANIZATION, AppSettings
from liveanim.app.ui.source_picker import SourceSpec
from liveanim.errors import LiveAnimError
from liveanim.weights import resolve_weights

log = logging.getLogger(__name__)

SIGNAL_POLL_MS = 200


def list_cameras() -> list[SourceSpec]:
    """The cameras that open, as picker entries (probing takes a moment per index)."""
    from liveanim.pipeline.sources import probe_cameras

    return [SourceSpec.camera(c.index, f"Camera {c.index}: {c.name or f'{c.width}x{c.height}'}")
            for c in probe_cameras(range(10))]


def default_deps() -> WindowDeps:
    """The real settings, presets and cameras; the model source from the environment."""
    return WindowDeps(model=ModelSource.from_environment(), settings=AppSettings(),
                      presets=PresetStore(default_presets_dir()), list_cameras=list_cameras)


def run_app(weights: Path | None = None) -> int:
    """Show the window and run until it is closed; the process exit code.

    weights: a weights file to use (`main.py --weights PATH`), remembered as when it is chosen
             with File > Get the LIA-X weights...
    """
    try:
        chosen = None if weights is None else resolve_weights(weights, download=False).absolute()
        app = QApplication.instance() or QApplication(sys.argv)
        app.setOrganizationName(ORGANIZATION)  # before default_deps: they name the presets folder
        app.setApplicationName(APPLICATION)
        deps = default_deps()
    except LiveAnimError as error:
        log.error("%s", error)
        return 2
    if chosen is not None:
        deps.settings.weights = chosen
    window = MainWindow(deps)
    window.show()
    window.start_up()
    signal.signal(signal.SIGINT, lambda *_: window.close())
    wake = QTimer(interval=SIGNAL_POLL_MS)  # Qt's loop holds the interpreter; wake it so Ctrl+C is seen
    wake.timeout.connect(lambda: None)
    wake.start()
    return app.exec()
