"""What a live session tells its owner, as typed values.

The session, its source and its outputs report through one callback that receives these
events; the CLI turns them into log lines and an exit code, the window into widget state
(the Record button, the virtual-camera toggle, the status bar). Owners dispatch on the type,
never on the wording: `message` is for people only and may change.

Events are made on the session's threads; an owner that updates a GUI hands them over to
its own thread first.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar

if TYPE_CHECKING:
    from liveanim.engines.base import OptimizingProgress
    from liveanim.errors import LiveAnimError
    from liveanim.pipeline.metrics import LiveStats
    from liveanim.pipeline.sinks import LiveFrame


class SessionEvent:
    """Base of every event: how loud it is, and one line for a person."""

    level: ClassVar[int] = logging.INFO

    @property
    def message(self) -> str:
        raise NotImplementedError


EventCallback = Callable[[SessionEvent], None]


@dataclass(frozen=True)
class EnginePreparing(SessionEvent):
    """The engine runs its per-frame graphs once before the first frame (compiling, capturing)."""

    @property
    def message(self) -> str:
        return "preparing the engine"


@dataclass(frozen=True)
class Started(SessionEvent):
    """The engine is ready and frames are being captured.

    source:    the input, as `FrameSource.describe()` says it.
    engine:    the engine, as `Engine.describe()` says it.
    warm_up_s: seconds the engine took to get ready.
    """

    source: str
    engine: str
    warm_up_s: float

    @property
    def message(self) -> str:
        return f"live: {self.source} -> {self.engine}, engine ready in {self.warm_up_s:.0f} s"


@dataclass(frozen=True)
class Optimizing(SessionEvent):
    """The engine makes faster graphs for this GPU in the background (compiling them); frames come
    more slowly until it is done.

    graph:       the graph under way, counted from 1 (a graph compiled in parts counts each part).
    graphs:      of this many asked for so far.
    remaining_s: seconds left, estimated from the last time on this GPU; None where not measured.
    first_time:  nothing was ever measured on this GPU (with this PyTorch, precision and model).
    """

    graph: int
    graphs: int
    remaining_s: float | None
    first_time: bool

    @property
    def message(self) -> str:
        if self.remaining_s is not None:
            left = f", {_duration(self.remaining_s)} left"
        else:
            left = ", first time on this GPU: a few minutes" if self.first_time else ""
        return f"optimizing for this GPU: {self.graph} of {self.graphs}{left}"


@dataclass(frozen=True)
class Optimized(SessionEvent):
    """The engine's background optimizing has ended: full speed, except for graphs that failed.

    failed: graphs that failed (they keep running the slower way; the log says why).
    """

    failed: int = 0

    @property
    def message(self) -> str:
        if self.failed:
            return (f"optimizing for this GPU ended, but {self.failed} graph(s) could not be compiled and "
                    "run more slowly (the log says why)")
        return "optimized for this GPU: full speed from now on"


def _duration(seconds: float) -> str:
    """'a few seconds', 'about 40 s' (in steps of 5 s), 'about 3 min': a countdown that changes
    every few seconds, not on every frame."""
    if seconds < 10:
        return "a few seconds"
    if seconds < 90:
        return f"about {5 * math.ceil(seconds / 5)} s"
    return f"about {round(seconds / 60)} min"


class OptimizingReports:
    """Turns the engine's optimizing progress, polled once per frame, into events: `Optimizing`
    whenever its line changes, `Optimized` once when the work has ended; nothing where there is none."""

    def __init__(self) -> None:
        self._shown: Optimizing | None = None

    def update(self, progress: OptimizingProgress | None) -> SessionEvent | None:
        """The event to emit for `progress`, if it changes what was said last."""
        if progress is None or (progress.done and self._shown is None):
            return None
        if progress.done:
            self._shown = None
            return Optimized(progress.failed)
        event = Optimizing(progress.finished + 1, progress.graphs, progress.remaining_s, progress.first_time)
        if self._shown is not None and event.message == self._shown.message:
            return None
        self._shown = event
        return event


@dataclass(frozen=True, eq=False)
class FrameDelivered(SessionEvent):
    """A frame reached every output (the preview gets it last)."""

    level: ClassVar[int] = logging.DEBUG
    frame: LiveFrame

    @property
    def message(self) -> str:
        return f"frame {self.frame.index} delivered"


@dataclass(frozen=True)
class FrameFailed(SessionEvent):
    """A frame could not be animated and was skipped (reported on the first and every 100th).

    failures: frames skipped so far.
    reason:   the error of this one.
    """

    level: ClassVar[int] = logging.WARNING
    failures: int
    reason: str

    @property
    def message(self) -> str:
        return f"a frame could not be animated ({self.failures} so far): {self.reason}"


@dataclass(frozen=True)
class TrackingUnavailable(SessionEvent):
    """Face tracking cannot run; the centre of each frame is used instead."""

    level: ClassVar[int] = logging.WARNING
    reason: str

    @property
    def message(self) -> str:
        return f"face tracking is unavailable ({self.reason}); using the centre of the frame instead"


@dataclass(frozen=True)
class AvatarUncropped(SessionEvent):
    """Faces cannot be found, so portraits' centre squares are animated as they are, uncropped.

    names:  the portraits.
    reason: why faces cannot be found, and what to install.
    """

    level: ClassVar[int] = logging.WARNING
    names: tuple[str, ...]
    reason: str

    @property
    def message(self) -> str:
        squares = "square is used as it is" if len(self.names) == 1 else "squares are used as they are"
        return (f"the face library is unavailable, so the centre {squares} for {', '.join(self.names)}: "
                f"{self.reason}")


@dataclass(frozen=True)
class Calibrating(SessionEvent):
    """The neutral pose is being taken from the next still frames."""

    @property
    def message(self) -> str:
        return "calibrating: hold a neutral expression for a moment"


@dataclass(frozen=True)
class RecordingStarted(SessionEvent):
    """A file (video or motion track) is being written.

    path: the file.
    fps:  its frame rate (the source's).
    """

    path: Path
    fps: float

    @property
    def message(self) -> str:
        return f"recording to {self.path} at {self.fps:g} fps"


@dataclass(frozen=True)
class RecordingStopped(SessionEvent):
    """A recording was finished as asked and is complete.

    frames:  frames in the file.
    seconds: its length.
    """

    path: Path
    frames: int
    seconds: float

    @property
    def message(self) -> str:
        return f"recording finished: {self.path} ({self.frames} frames, {self.seconds:.1f} s)"


@dataclass(frozen=True)
class RecordingFailed(SessionEvent):
    """A recording could not start or stopped on an error (a full disk, a read-only folder).

    The live loop goes on without it; what was written stays playable up to about the last
    second before the error.

    reason:  the error, with what to do about it.
    frames:  frames handed to the file before the error (0: it never started).
    seconds: their length.
    """

    level: ClassVar[int] = logging.ERROR
    path: Path
    reason: str
    frames: int
    seconds: float

    @property
    def message(self) -> str:
        if not self.frames:
            return f"recording {self.path} could not start: {self.reason}"
        return (f"recording {self.path} stopped after {self.seconds:.1f} s: {self.reason} "
                f"What was written until then is kept and plays.")


@dataclass(frozen=True)
class VirtualCameraOn(SessionEvent):
    """The output goes to a virtual camera.

    device: the device apps list, e.g. /dev/video2 or 'OBS Virtual Camera'.
    """

    device: str
    width: int
    height: int
    fps: float

    @property
    def message(self) -> str:
        return f"virtual camera on: {self.device} ({self.width}x{self.height} at {self.fps:g} fps)"


@dataclass(frozen=True)
class VirtualCameraOff(SessionEvent):
    device: str

    @property
    def message(self) -> str:
        return f"virtual camera off: {self.device}"


@dataclass(frozen=True)
class VirtualCameraFailed(SessionEvent):
    """The virtual camera could not start, or stopped taking frames.

    device: the device, if it had started.
    reason: what went wrong.
    setup:  the one-time set-up of this OS that provides a virtual camera.
    """

    level: ClassVar[int] = logging.ERROR
    device: str | None
    reason: str
    setup: str

    @property
    def message(self) -> str:
        if self.device is None:
            return f"No virtual camera could be started ({self.reason}). {self.setup}"
        return f"virtual camera {self.device} stopped: {self.reason}. {self.setup}"


@dataclass(frozen=True)
class SourceLost(SessionEvent):
    """The input stopped delivering frames; it is reopened after `retry_in_s`."""

    level: ClassVar[int] = logging.WARNING
    source: str
    retry_in_s: float

    @property
    def message(self) -> str:
        return f"{self.source} stopped delivering frames; reopening it (next try in {self.retry_in_s:.1f} s)"


@dataclass(frozen=True)
class SourceReopened(SessionEvent):
    level: ClassVar[int] = logging.WARNING
    source: str

    @property
    def message(self) -> str:
        return f"{self.source} is back"


@dataclass(frozen=True)
class EngineSwitched(SessionEvent):
    """The stream moved to another engine (a new backend or precision was picked)."""

    engine: str

    @property
    def message(self) -> str:
        return f"switched to {self.engine}"


@dataclass(frozen=True, eq=False)
class SessionFailed(SessionEvent):
    """The session ended on an error (the input cannot be opened, the loop broke)."""

    level: ClassVar[int] = logging.ERROR
    error: LiveAnimError

    @property
    def message(self) -> str:
        return str(self.error)


@dataclass(frozen=True, eq=False)
class Stopped(SessionEvent):
    """Every thread has ended and every output is closed; the last event of a session."""

    stats: LiveStats

    @property
    def message(self) -> str:
        return f"live stopped: {self.stats.line()}"


def log_event(logger: logging.Logger, event: SessionEvent) -> None:
    """The event as one log line at its level."""
    logger.log(event.level, "%s", event.message)
