"""The main window: input and output previews, avatars, dials, and the live controls.

It wires widgets to the `SessionController` and keeps nothing of the pipeline itself.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PyQt6.QtCore import QStandardPaths, Qt
from PyQt6.QtGui import QAction, QCloseEvent, QKeySequence
from PyQt6.QtWidgets import (
    QGroupBox,
    QMainWindow,
    QScrollArea,
    QSplitter,
    QStyle,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from liveanim.app.ui.avatar_gallery import AvatarGallery
from liveanim.app.ui.avatar_library import DEFAULT_AVATAR
from liveanim.app.ui.calibration import CalibrationCountdown
from liveanim.app.ui.dials_panel import DialsPanel
from liveanim.app.ui.engine_selector import EngineSelector
from liveanim.app.ui.frame_view import InputView, OutputView
from liveanim.app.ui.messages import show_warning, window_text
from liveanim.app.ui.model_source import ModelSource
from liveanim.app.ui.offline_dialogs import AnimateDialog, StillEditDialog
from liveanim.app.ui.presets import PresetStore
from liveanim.app.ui.session_controller import EngineInfo, SessionController
from liveanim.app.ui.settings import AppSettings
from liveanim.app.ui.source_picker import CameraLister, SourcePicker, SourceSpec
from liveanim.app.ui.status_bar import LiveStatusBar
from liveanim.app.ui.weights_dialog import WeightsDialog, missing_weights
from liveanim.app.ui.workers import TaskRunner
from liveanim.pipeline.events import (Optimized, Optimizing, RecordingFailed, RecordingStarted, RecordingStopped,
                                      SessionEvent, SessionFailed, VirtualCameraFailed, VirtualCameraOff,
                                      VirtualCameraOn)
from liveanim.pipeline.live import LiveConfig, LiveFrame
from liveanim.weights import default_cache_dir

log = logging.getLogger(__name__)

FIRST_RUN_SHARE = 0.85  # of the screen, each way


@dataclass(frozen=True)
class WindowDeps:
    """What the window is built from; tests swap each part for a temporary or a fake one.

    model:        where the weights come from (the checkpoint, or seeded weights).
    settings:     the persisted settings.
    presets:      the dial preset folder.
    list_cameras: finds the cameras (slow; run in the background).
    live:         the settings of every live session.
    """

    model: ModelSource
    settings: AppSettings
    presets: PresetStore
    list_cameras: CameraLister
    live: LiveConfig = LiveConfig()


class MainWindow(QMainWindow):
    """LiveAnim's window. Call `start_up()` once it is shown."""

    def __init__(self, deps: WindowDeps) -> None:
        super().__init__()
        self.setWindowTitle("LiveAnim")
        self.deps = deps
        self.settings = deps.settings
        self.runner = TaskRunner(self)
        self.controller = SessionController(deps.model.seeded, deps.live, self)
        self.countdown = CalibrationCountdown(parent=self)
        self.weights_dialog: WeightsDialog | None = None
        self._dialogs: dict[str, QWidget] = {}
        self._build_widgets()
        self._build_actions()
        self._build_layout()
        self._connect()

    # ----- construction ----------------------------------------------------------------------

    def _build_widgets(self) -> None:
        settings = self.settings
        self.sources = SourcePicker(self.deps.list_cameras, self.runner)
        self.input_view = InputView()
        self.output_view = OutputView()
        self.gallery = AvatarGallery()
        self.dials = DialsPanel(self.deps.presets, settings.smoothing)
        self.engine_selector = EngineSelector(settings.backend, settings.precision)
        self.status = LiveStatusBar()
        self.setStatusBar(self.status)

    def _action(self, text: str, shortcut: str, slot: Callable[..., object], checkable: bool = False,
                tip: str = "") -> QAction:
        action = QAction(text, self)
        action.setShortcut(QKeySequence(shortcut))
        action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        action.setCheckable(checkable)
        action.setToolTip(f"{tip or text} ({QKeySequence(shortcut).toString()})" if shortcut else tip or text)
        action.triggered.connect(slot)
        self.addAction(action)
        return action

    def _build_actions(self) -> None:
        self.start_action = self._action("Start", "Space", self.controller.toggle, tip="Start or stop the stream")
        self.start_action.setIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_MediaPlay))
        self.calibrate_action = self._action("Calibrate neutral", "C", self.calibrate,
                                             tip="Hold a neutral face: 3-2-1, then it becomes the rest pose")
        self.record_action = self._action("Record", "R", self._toggle_record, checkable=True,
                                          tip="Record the output to an mp4 in your Videos folder")
        self.vcam_action = self._action("Virtual camera", "", self.controller.set_vcam, checkable=True,
                                        tip="Send the output to a virtual webcam for Zoom, Meet, OBS...")
        self.previous_action = self._action("Previous avatar", "Left", lambda: self.gallery.step(-1))
        self.next_action = self._action("Next avatar", "Right", lambda: self.gallery.step(1))
        self.reset_action = self._action("Reset dials", "Ctrl+0", self.dials.reset_all)
        self.edit_still_action = self._action("Edit a still portrait...", "", self.open_still_editor)
        self.animate_action = self._action("Animate a portrait from a video...", "", self.open_animator)
        self.weights_action = self._action("Get the LIA-X weights...", "", self.ask_for_weights)
        self.quit_action = self._action("Quit", "Ctrl+Q", self.close)
        menus = {
            "&File": (self.edit_still_action, self.animate_action, None, self.weights_action, None, self.quit_action),
            "&Live": (self.start_action, self.calibrate_action, self.record_action, self.vcam_action, None,
                      self.previous_action, self.next_action, self.reset_action),
        }
        for title, actions in menus.items():
            menu = self.menuBar().addMenu(title)
            for action in actions:
                if action is None:
                    menu.addSeparator()
                else:
                    menu.addAction(action)
        self.record_action.setEnabled(False)

    def _build_layout(self) -> None:
        toolbar = QToolBar("Live")
        toolbar.setObjectName("live-toolbar")
        toolbar.setMovable(False)
        toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        for action in (self.start_action, self.calibrate_action, self.record_action, self.vcam_action):
            toolbar.addAction(action)
        toolbar.addSeparator()
        toolbar.addWidget(self.engine_selector)
        self.addToolBar(toolbar)
        left = QSplitter(Qt.Orientation.Vertical)
        left.addWidget(_titled("Input", self.sources, self.input_view))
        left.addWidget(_titled("Avatars", self.gallery))
        left.setStretchFactor(0, 2)
        left.setStretchFactor(1, 1)
        dials = QScrollArea()
        dials.setWidget(self.dials)
        dials.setWidgetResizable(True)
        dials.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scrollbar = self.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent)
        dials.setMinimumWidth(self.dials.minimumSizeHint().width() + scrollbar + 2 * dials.frameWidth())
        main = QSplitter(Qt.Orientation.Horizontal)
        main.addWidget(left)
        main.addWidget(self.output_view)
        main.addWidget(dials)
        for index, stretch in enumerate((2, 4, 2)):
            main.setStretchFactor(index, stretch)
        self.setCentralWidget(main)

    def _connect(self) -> None:
        controller = self.controller
        controller.frame_ready.connect(self.show_frame)
        controller.stats_changed.connect(self.status.show_stats)
        controller.session_event.connect(self._session_event)
        controller.running_changed.connect(self._running_changed)
        controller.engine_changed.connect(self._engine_changed)
        controller.busy_changed.connect(self.status.show_busy)
        controller.error.connect(lambda text: show_warning(self, "LiveAnim", text))
        controller.avatars_changed.connect(self.gallery.show_avatars)
        controller.avatar_selected.connect(self.gallery.show_current)
        self.gallery.add_requested.connect(lambda paths: controller.add_avatars([str(p) for p in paths]))
        self.gallery.remove_requested.connect(controller.remove_avatar)
        self.gallery.select_requested.connect(controller.select_avatar)
        self.sources.source_changed.connect(controller.set_source)
        self.dials.edit_changed.connect(controller.set_edit)
        self.dials.intensity_changed.connect(controller.set_intensity)
        self.dials.smoothing_changed.connect(controller.set_smoothing)
        self.engine_selector.changed.connect(self._engine_picked)
        self.vcam_action.toggled.connect(lambda on: self.status.show_vcam(False, on))
        self.countdown.tick.connect(lambda n: self.output_view.set_caption(str(n) if n > 0 else ""))
        self.countdown.finished.connect(controller.calibrate)

    # ----- start-up and shut-down ---------------------------------------------------------

    def start_up(self) -> None:
        """Restore the last session's state, look for cameras, and get an engine ready."""
        settings = self.settings
        if not self.restoreGeometry(settings.geometry):
            self._fit_screen()
        self.restoreState(settings.window_state)
        self.dials.set_offsets(settings.offsets)
        self.dials.set_intensity(settings.intensity)
        self.controller.set_smoothing(self.dials.smoothing())
        origins = settings.avatars if settings.avatars_initialized else [DEFAULT_AVATAR]
        kept = [o for o in origins if o == DEFAULT_AVATAR or Path(o).is_file()]
        self.controller.add_avatars(kept or [DEFAULT_AVATAR], select=settings.current_avatar)
        source = SourceSpec.from_setting(settings.source)
        if source is not None:
            self.sources.select(source)
        self.sources.refresh()
        if self.deps.model.seeded or not missing_weights(settings.weights, default_cache_dir()):
            self.build_engine()
        else:
            self.ask_for_weights()

    def _fit_screen(self) -> None:
        """First run: take most of the screen, centred."""
        screen = self.screen().availableGeometry()
        self.resize(round(screen.width() * FIRST_RUN_SHARE), round(screen.height() * FIRST_RUN_SHARE))
        self.move(screen.center() - self.rect().center())

    def closeEvent(self, event: QCloseEvent) -> None:
        """Stop the stream and every worker, then save the settings, before the window goes."""
        self.countdown.cancel()
        for dialog in self._dialogs.values():
            dialog.close()
        self.controller.shutdown()
        self.runner.shutdown()
        self.save_settings()
        event.accept()

    def save_settings(self) -> None:
        """Remember the window, input, avatars, dials and engine for the next run."""
        settings = self.settings
        settings.geometry = self.saveGeometry()
        settings.window_state = self.saveState()
        source = self.sources.current()
        if source is not None:
            settings.source = source.setting
        avatars = self.controller.avatars
        if avatars:  # none yet: closed before they were loaded, so keep the saved list
            settings.avatars = [avatar.origin for avatar in avatars]
            settings.current_avatar = self.controller.selected
        settings.offsets = self.dials.offsets()
        settings.intensity = self.dials.intensity()
        settings.smoothing = self.dials.smoothing()
        settings.backend, settings.precision = self.engine_selector.choice()
        settings.sync()

    # ----- engine and weights ----------------------------------------------------------------

    def build_engine(self) -> None:
        backend, precision = self.engine_selector.choice()
        self.controller.build_engine(self.deps.model.engine_config(backend, precision, self.settings.weights))

    def ask_for_weights(self) -> None:
        """Show the weights dialog (download or pick a file); an engine is built once there are weights."""
        dialog = self.weights_dialog = WeightsDialog(default_cache_dir(), self)
        dialog.accepted.connect(lambda: self._weights_found(dialog.weights_path))
        dialog.rejected.connect(
            lambda: self.status.show_message("No model yet: File > Get the LIA-X weights... when you are ready."))
        dialog.open()

    def _weights_found(self, path: Path | None) -> None:
        self.settings.weights = path
        self.build_engine()

    def _engine_picked(self, backend: str, precision: str) -> None:
        self.settings.backend, self.settings.precision = backend, precision
        if self.deps.model.seeded or self.controller.has_engine or \
                not missing_weights(self.settings.weights, default_cache_dir()):
            self.build_engine()

    def _engine_changed(self, info: EngineInfo) -> None:
        self.status.show_engine(info)
        self.engine_selector.show_choice(info.backend, info.precision)

    # ----- live ------------------------------------------------------------------------------

    def show_frame(self, frame: LiveFrame) -> None:
        self.output_view.set_frame(frame.output)
        self.input_view.set_frame(frame.driving)
        self.input_view.set_tracking(frame.face_box, frame.face_found)

    def calibrate(self) -> None:
        """Count 3-2-1 over the output, then take the neutral pose."""
        if not self.controller.running:
            show_warning(self, "Calibrate neutral", "Start the stream first: the neutral pose is taken from it.")
            return
        self.countdown.start()

    def _running_changed(self, running: bool) -> None:
        self.start_action.setText("Stop" if running else "Start")
        icon = QStyle.StandardPixmap.SP_MediaStop if running else QStyle.StandardPixmap.SP_MediaPlay
        self.start_action.setIcon(self.style().standardIcon(icon))
        self.record_action.setEnabled(running)
        if not running:
            self.countdown.cancel()
            self.record_action.setChecked(False)
            self.status.show_idle()

    def _toggle_record(self, checked: bool) -> None:
        """Ask for a recording to start or stop; the button and the status bar follow what the
        session then reports (`_session_event`)."""
        if not self.controller.set_recording(recording_path() if checked else None):
            self.record_action.setChecked(False)

    def _session_event(self, event: SessionEvent) -> None:
        """Widget state from what the session reports, by the event's type (its text is only shown)."""
        if isinstance(event, RecordingStarted):
            _set_checked(self.record_action, True)
            self.status.show_recording(event.path)
            self.status.show_message(f"Recording to {event.path}")
        elif isinstance(event, RecordingStopped):
            _set_checked(self.record_action, False)
            self.status.show_recording(None)
            self.status.show_message(f"Recording saved to {event.path} ({event.seconds:.0f} s)")
        elif isinstance(event, RecordingFailed):
            _set_checked(self.record_action, False)
            self.status.show_recording(None)
            self.status.show_message(f"Recording failed: {event.path}")
            show_warning(self, "Recording failed", event.message)
        elif isinstance(event, VirtualCameraOn):
            self.status.show_vcam(True, True)
        elif isinstance(event, VirtualCameraOff):
            self.status.show_vcam(False, self.controller.vcam_requested)
        elif isinstance(event, VirtualCameraFailed):
            _set_checked(self.vcam_action, False)
            self.status.show_vcam(False, False)
            show_warning(self, "Virtual camera unavailable", event.message)
        elif isinstance(event, (Optimizing, Optimized)):
            self.status.show_optimizing(event)
        elif isinstance(event, SessionFailed):
            show_warning(self, "LiveAnim", window_text(event.error))
        else:
            self.status.show_message(event.message)

    # ----- beyond live -----------------------------------------------------------------------

    def open_still_editor(self) -> StillEditDialog:
        dialog = self._dialogs.get("still")
        if dialog is None:
            dialog = StillEditDialog(self.controller, self.dials.offsets, self)
            self.dials.edit_changed.connect(dialog.refresh)
            self._dialogs["still"] = dialog
        dialog.show()
        return dialog

    def open_animator(self) -> AnimateDialog:
        dialog = self._dialogs.get("animate")
        if dialog is None:
            dialog = AnimateDialog(self.controller, self.dials.offsets, self)
            self._dialogs["animate"] = dialog
        dialog.show()
        return dialog


def recording_path() -> Path:
    """A new, time-stamped mp4 in the user's Videos folder (the recorder makes the folder)."""
    videos = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.MoviesLocation) or str(Path.home())
    return Path(videos) / "LiveAnim" / time.strftime("liveanim-%Y%m%d-%H%M%S.mp4")


def _set_checked(action: QAction, checked: bool) -> None:
    """Show a toggle's state without acting on it (the state comes from the session)."""
    action.blockSignals(True)
    action.setChecked(checked)
    action.blockSignals(False)


def _titled(title: str, *widgets: QWidget) -> QGroupBox:
    """A titled box holding `widgets` in a column; the last one takes the spare room."""
    box = QGroupBox(title)
    column = QVBoxLayout(box)
    for widget in widgets:
        column.addWidget(widget, 1 if widget is widgets[-1] else 0)
    return box
