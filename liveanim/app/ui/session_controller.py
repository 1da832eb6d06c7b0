"""The one object between the window and the live pipeline.

It owns the engine, the `LiveSession` and the avatars, and does everything slow on worker
threads: building engines, opening inputs, encoding portraits, stopping sessions. Those run
one after another on a single worker, so they never race each other; the cheap setters
(dials, avatar switch) go straight to the session, which is thread-safe. Frames and the
session's typed events come back as Qt signals. The window never touches the model.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PyQt6.QtCore import QObject, QTimer, pyqtSignal

from liveanim.app.ui.avatar_library import DEFAULT_AVATAR, load_avatar
from liveanim.app.ui.messages import window_text
from liveanim.app.ui.offline_tasks import AnimateJob, run_animate, run_edit_image
from liveanim.app.ui.source_picker import SourceSpec
from liveanim.app.ui.workers import Task, TaskContext, TaskRunner
from liveanim.engines import EngineConfig, create_engine
from liveanim.errors import LiveAnimError, UsageError
from liveanim.motion.controller import Dials
from liveanim.pipeline.animator import Animator
from liveanim.pipeline.avatar_list import AvatarList
from liveanim.pipeline.avatars import Portrait, uncropped_event
from liveanim.pipeline.events import (EngineSwitched, FrameDelivered, Optimized, Optimizing, OptimizingReports,
                                      SessionEvent, VirtualCameraFailed, log_event)
from liveanim.pipeline.live import LiveConfig, LiveFrame, LiveSession
from liveanim.pipeline.offline import Written

log = logging.getLogger(__name__)

STATS_INTERVAL_MS = 250


@dataclass(frozen=True)
class EngineInfo:
    """What the status bar and the selectors show about the engine in use.

    description: backend and device, e.g. 'torch on cuda:0'.
    backend:     the backend asked for ('auto' included), for the selector.
    precision:   'fp32', 'fp16' or 'bf16'.
    """

    description: str
    backend: str
    precision: str


class SessionController(QObject):
    """Runs the live pipeline for the window.

    seeded: the engines use seeded weights (said in the engine's description).
    config: the settings every live session starts with.
    """

    frame_ready = pyqtSignal(object)  # LiveFrame, emitted from the session's output thread
    session_event = pyqtSignal(object)  # every other SessionEvent (recording, virtual camera, source, errors),
    # and the engine's optimizing progress, with or without a session
    stats_changed = pyqtSignal(object)  # LiveStats, a few times a second while running
    running_changed = pyqtSignal(bool)
    engine_changed = pyqtSignal(object)  # EngineInfo
    busy_changed = pyqtSignal(str)  # what runs in the background; '' when nothing does
    error = pyqtSignal(str)
    avatars_changed = pyqtSignal(object)  # list[Portrait], after avatars were added or removed
    avatar_selected = pyqtSignal(int)

    def __init__(self, seeded: bool = False, config: LiveConfig = LiveConfig(),
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.config = config
        self._seeded = seeded
        self._serial = TaskRunner(self, max_threads=1)
        self._offline = TaskRunner(self, max_threads=2)
        self._lock = threading.Lock()  # guards the fields below that both threads touch
        self._animator: Animator | None = None
        self._engine_info: EngineInfo | None = None
        self._session: LiveSession | None = None
        self._avatars = AvatarList()  # outlives sessions: each new one shows it and uses its encodings
        self._dials = Dials(smoothing=config.motion.smoothing)  # outlives sessions: each new one gets it whole
        self._source: SourceSpec | None = None
        self._vcam = config.vcam
        self._running = False
        self._busy: list[str] = []
        self._frame_pending = False
        self._optimizing = OptimizingReports()  # of the engine in use
        self.frame_ready.connect(self._frame_taken)
        self._poll = QTimer(self, interval=STATS_INTERVAL_MS, timeout=self._poll_engine)  # runs once there is an engine

    # ----- state the window reads ----------------------------------------------------------

    @property
    def session(self) -> LiveSession | None:
        """The running session, if any (for status and tests; the window uses the methods)."""
        return self._session

    @property
    def running(self) -> bool:
        return self._running

    @property
    def has_engine(self) -> bool:
        return self._animator is not None

    @property
    def avatars(self) -> list[Portrait]:
        return self._avatars.portraits

    @property
    def selected(self) -> int:
        return self._avatars.selected

    @property
    def vcam_requested(self) -> bool:
        return self._vcam

    # ----- engine and session ----------------------------------------------------------------

    def build_engine(self, config: EngineConfig) -> None:
        """(Re)create the engine in the background; a running stream moves over to it."""
        label = f"Preparing the engine ({config.backend}, {config.precision})"
        self._run(lambda context: self._swap_engine(config), label, self._engine_ready, self._engine_failed)

    def set_source(self, spec: SourceSpec) -> None:
        """The input the next start uses; a running stream restarts on it."""
        if spec == self._source:
            return
        self._source = spec
        if self._running:
            self._run(lambda context: self._restart(), "Switching the input", self._started)

    def start(self) -> None:
        if self._source is None:
            self.error.emit("Pick a camera or a video file first.")
            return
        self._run(lambda context: self._start_session(), "Starting the stream", self._started)

    def stop(self) -> None:
        self._run(lambda context: self._stop_session(), "Stopping the stream", lambda _: self._stopped())

    def toggle(self) -> None:
        if self._running:
            self.stop()
        else:
            self.start()

    # ----- dials ---------------------------------------------------------------------------

    @property
    def dials(self) -> Dials:
        return self._dials

    def set_edit(self, edit: np.ndarray) -> None:
        with self._lock:
            self._dials = self._dials.with_edit(edit)
            if self._session is not None:
                self._session.set_edit(self._dials.edit)

    def set_intensity(self, group: str, value: float) -> None:
        with self._lock:
            self._dials = self._dials.with_intensity(group, value)
            if self._session is not None:
                self._session.set_intensity(group, value)

    def set_smoothing(self, amount: float) -> None:
        with self._lock:
            self._dials = self._dials.with_smoothing(amount)
            if self._session is not None:
                self._session.set_smoothing(amount)

    def calibrate(self) -> None:
        """Take the performer's neutral pose from the next still frames."""
        if self._session is None:
            self.error.emit("Start the stream first: calibration takes your neutral pose from the camera.")
            return
        self._session.calibrate()

    # ----- avatars -------------------------------------------------------------------------

    def add_avatars(self, origins: list[str], select: int | None = None) -> None:
        """Read, crop and encode portraits (file paths or DEFAULT_AVATAR) in the background.

        select: the avatar to show afterwards; by default the first one added. A file that
                cannot be used (no face, not an image) is reported and skipped.
        """
        self._run(lambda context: self._add_all(origins), "Adding avatars",
                  lambda result: self._avatars_added(result, select))

    def remove_avatar(self, index: int) -> None:
        """Remove at once (also mid-stream); the last avatar cannot be removed (said as an error)."""
        try:
            selected = self._avatars.remove(index)
        except UsageError as error:
            self.error.emit(window_text(error))
            return
        self.avatars_changed.emit(self._avatars.portraits)
        self.avatar_selected.emit(selected)

    def select_avatar(self, index: int) -> None:
        """Switch at once (also mid-stream, from the next frame); encoding happened when the avatar was added."""
        try:
            self._avatars.select(index)
        except UsageError as error:
            self.error.emit(window_text(error))
            return
        self.avatar_selected.emit(index)

    # ----- outputs -------------------------------------------------------------------------

    def set_vcam(self, enabled: bool) -> None:
        """Send the output to the virtual camera (now, or from the next start)."""
        self._vcam = enabled
        if self._session is not None:
            self._session.set_vcam(enabled)

    def set_recording(self, path: Path | None) -> bool:
        """Record the output into `path`, or stop with None; False when nothing is streaming.
        The outcome comes as RecordingStarted/Stopped/Failed events."""
        if self._session is None:
            if path is not None:
                self.error.emit("Start the stream first, then record.")
            return False
        self._session.set_recording(path)
        return True

    # ----- beyond live ---------------------------------------------------------------------

    def edit_still(self, source: Path, edit: np.ndarray, out: Path | None,
                   on_done: Callable[[np.ndarray], None], on_error: Callable[[str], None]) -> Task:
        """Edit the portrait in `source` with `edit` (saved to `out` if given) in the background."""
        return self._offline.start(lambda context: run_edit_image(self._require_animator(), source, edit, out),
                                   "Editing the portrait", on_done, on_error)

    def animate_video(self, job: AnimateJob, on_done: Callable[[Written], None],
                      on_error: Callable[[str], None]) -> Task:
        """Animate a portrait from a video file in the background, with progress and cancel."""
        return self._offline.start(lambda context: run_animate(self._require_animator(), job, context),
                                   "Animating the video", on_done, on_error)

    def shutdown(self) -> None:
        """Stop everything and wait for the workers (the window is closing)."""
        self._poll.stop()
        self._offline.shutdown()
        self._serial.shutdown()
        self._stop_session()
        if self._animator is not None:
            self._animator.engine.close()
            self._animator = None

    # ----- work done on the serial worker ------------------------------------------------

    def _swap_engine(self, config: EngineConfig) -> EngineInfo:
        engine = create_engine(config)
        try:
            engine.prepare()  # its compiles start now, while the user sets up, not at the first frame
        except BaseException:
            engine.close()
            raise
        animator = Animator(engine)
        old = self._animator
        restart = self._stop_session()
        self._animator = animator  # the avatars keep the old engine's encodings, for a switch back
        if restart:
            self._open_session()
        if old is not None and not self._offline.active:
            old.engine.close()
        description = f"{engine.name} on {engine.device}" + (" (seeded weights)" if self._seeded else "")
        return EngineInfo(description, config.backend, engine.precision)  # 'auto' resolved

    def _start_session(self) -> bool:
        if self._session is not None:
            return True
        self._open_session()
        return True

    def _restart(self) -> bool:
        self._stop_session()
        self._open_session()
        return True

    def _open_session(self) -> None:
        animator = self._require_animator()
        config = dataclasses.replace(self.config, vcam=self._vcam)
        if not len(self._avatars):  # none could be loaded: the default one, shown in the gallery too
            self._add_all([DEFAULT_AVATAR])
            self.avatars_changed.emit(self._avatars.portraits)
            self.avatar_selected.emit(self._avatars.selected)
        session = LiveSession(config, animator, self._source.open(), self._on_event, avatars=self._avatars)
        with self._lock:
            session.set_dials(self._dials)
            self._session = session
        session.start()

    def _stop_session(self) -> bool:
        """Stop the session if there is one; whether there was."""
        with self._lock:
            session, self._session = self._session, None
        if session is None:
            return False
        session.stop()
        return True

    def _add_all(self, origins: list[str]) -> tuple[list[Portrait], list[str]]:
        """Load and add each portrait; those taken uncropped (no face library) are told in one line."""
        added, errors = [], []
        for origin in origins:
            try:
                portrait = load_avatar(origin, self.config.avatars)
                self._add(portrait)
            except LiveAnimError as error:
                errors.append(window_text(error))
            else:
                added.append(portrait)
        uncropped = uncropped_event(added)
        if uncropped is not None:
            self._on_event(uncropped)
        return added, errors

    def _add(self, portrait: Portrait) -> None:
        """Into the list; encoded first by a running session's engine, so the stream never waits for it."""
        session = self._session
        if session is not None:
            session.add_portrait(portrait)
        else:
            self._avatars.add(portrait)

    def _require_animator(self) -> Animator:
        if self._animator is None:
            raise LiveAnimError("There is no engine yet: wait until it is ready, or fix the problem shown "
                                "(e.g. get the weights with File > Get the LIA-X weights...).")
        return self._animator

    # ----- called from the session's threads ----------------------------------------------

    def _on_event(self, event: SessionEvent) -> None:
        """Frames to `frame_ready`, every other event (logged) to `session_event`."""
        if isinstance(event, FrameDelivered):
            self._on_frame(event.frame)
            return
        if isinstance(event, (Optimizing, Optimized)):
            return  # the controller reports the engine's progress itself (`_poll_engine`), sessions or not
        log_event(log, event)
        if isinstance(event, VirtualCameraFailed):
            self._vcam = False  # not asked for again at the next start
        self.session_event.emit(event)

    def _on_frame(self, frame: LiveFrame) -> None:
        """Hand the frame to the GUI, unless the GUI has not shown the previous one yet: a slow
        window then skips frames instead of queueing them up (and falling behind)."""
        with self._lock:
            busy, self._frame_pending = self._frame_pending, True
        if not busy:
            self.frame_ready.emit(frame)

    # ----- GUI-thread bookkeeping ------------------------------------------------------------

    def _run(self, fn: Callable[[TaskContext], Any], label: str, on_done: Callable[[Any], None],
             on_error: Callable[[str], None] | None = None) -> None:
        """Queue `fn` on the serial worker and show `label` as busy until it ends."""
        self._busy.append(label)
        self.busy_changed.emit(label)
        task = self._serial.start(fn, label, on_done, on_error or self._failed)
        task.on_end(lambda: self._unbusy(label))

    def _unbusy(self, label: str) -> None:
        self._busy.remove(label)
        self.busy_changed.emit(self._busy[-1] if self._busy else "")

    def _failed(self, message: str) -> None:
        if self._running and self._session is None:
            self._stopped()
        self.error.emit(message)

    def _frame_taken(self, frame: LiveFrame) -> None:
        with self._lock:
            self._frame_pending = False

    def _engine_ready(self, info: EngineInfo) -> None:
        switched = self._engine_info is not None and self._session is not None  # the stream moved over
        self._engine_info = info
        self._show_engine(info)
        self._poll.start()
        if switched:
            self._on_event(EngineSwitched(info.description))
        self._set_running(self._session is not None)

    def _engine_failed(self, message: str) -> None:
        """Say why, and show the engine that is still in use (if any) again."""
        self.error.emit(message)
        if self._engine_info is not None:
            self._show_engine(self._engine_info)

    def _show_engine(self, info: EngineInfo) -> None:
        """Show the engine in use, whose optimizing progress the window shows afresh: reported again
        at the next poll, from nothing (showing an engine clears it)."""
        self._optimizing = OptimizingReports()
        self.engine_changed.emit(info)

    def _started(self, _: bool) -> None:
        self._set_running(True)

    def _stopped(self) -> None:
        self._set_running(False)

    def _set_running(self, running: bool) -> None:
        if running != self._running:
            self._running = running
            self.running_changed.emit(running)

    def _avatars_added(self, result: tuple[list[Portrait], list[str]], select: int | None) -> None:
        added, errors = result
        if added:
            portraits = self._avatars.portraits
            self.avatars_changed.emit(portraits)
            first_new = len(portraits) - len(added)
            self.select_avatar(min(first_new if select is None else select, len(portraits) - 1))
        if errors:
            self.error.emit("\n".join(errors))

    def _poll_engine(self) -> None:
        """Publish the engine's optimizing progress, then the session's state."""
        animator = self._animator
        if animator is not None:
            event = self._optimizing.update(animator.engine.optimizing())
            if event is not None:
                log_event(log, event)
                self.session_event.emit(event)
        self._poll_session()

    def _poll_session(self) -> None:
        """Publish the stats; notice a session that ended by itself (input over, camera lost: its
        SessionFailed event says why)."""
        session = self._session
        if session is None:
            return
        self.stats_changed.emit(session.stats)
        if session.wait(0):
            with self._lock:
                if self._session is session:
                    self._session = None
            self._run(lambda context: session.stop(), "Stopping the stream", lambda _: self._stopped())
