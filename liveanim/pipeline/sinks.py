"""Where live frames go: the virtual camera, a recording, a motion track.

Every sink takes the `LiveFrame` of each delivered frame and is closed once, on the output
thread, which finalizes its file. A sink that cannot start raises our own error with what
to do about it; the live loop reports it (as the sink's typed event) and goes on without it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from liveanim.errors import MediaError, UsageError, VirtualCameraUnavailable
from liveanim.face import CropBox
from liveanim.motion.dials import MOTION_DIM
from liveanim.pipeline.events import (RecordingFailed, RecordingStarted, RecordingStopped, SessionEvent,
                                      VirtualCameraFailed, VirtualCameraOff, VirtualCameraOn)
from liveanim.pipeline.metrics import LiveStats
from liveanim.pipeline.video import EncoderConfig, VideoWriter, check_output

log = logging.getLogger(__name__)

Size = tuple[int, int]  # (width, height)
PROBE_SIZE = (640, 480)  # a size every virtual camera backend accepts


@dataclass(frozen=True, eq=False)
class LiveFrame:
    """One delivered frame and what made it.

    output:      uint8 RGB (H, W, 3): what the virtual camera gets.
    driving:     uint8 RGB: the camera frame it was driven by.
    face_box:    where the face was cropped from `driving` (the last box while lost; None before any face).
    face_found:  whether a face was seen in `driving`.
    stats:       the loop's figures when the frame was delivered.
    index:       the frame's number among the captured frames (gaps = dropped frames).
    captured_at: `time.monotonic()` of the capture.
    motion:      (40,) the relative motion that was rendered (after smoothing and intensity).
    edit:        (40,) the dial offsets that were rendered.
    """

    output: np.ndarray
    driving: np.ndarray
    face_box: CropBox | None
    face_found: bool
    stats: LiveStats = field(default_factory=LiveStats)
    index: int = 0
    captured_at: float = 0.0
    motion: np.ndarray | None = None
    edit: np.ndarray | None = None


class Sink(Protocol):
    """An output of the live loop; it describes its own start, end and failure as events."""

    def write(self, frame: LiveFrame) -> None: ...

    def close(self) -> None: ...

    def opened(self) -> SessionEvent: ...

    def closed(self) -> SessionEvent: ...

    def failed(self, error: Exception) -> SessionEvent: ...


def virtual_camera_setup(system: str | None = None) -> str:
    """The one-time setup that makes a virtual camera available on this OS."""
    system = system or platform.system()
    if system == "Linux":
        return ("Load the v4l2loopback driver (package v4l2loopback-dkms): "
                "sudo modprobe v4l2loopback exclusive_caps=1 card_label=\"LiveAnim\" -- then start again.")
    return ("Install OBS Studio (https://obsproject.com), open it, click 'Start Virtual Camera' once, "
            "then stop it and quit OBS -- then start again.")


@dataclass(frozen=True)
class VirtualCameraConfig:
    """backend: a pyvirtualcam backend name (None: try each); device: e.g. /dev/video2 (None: the first free)."""

    backend: str | None = None
    device: str | None = None


class VirtualCameraSink:
    """Frames to a virtual webcam (pyvirtualcam), as Zoom, Meet and OBS see it."""

    def __init__(self, size: Size, fps: float, config: VirtualCameraConfig = VirtualCameraConfig()) -> None:
        try:
            import pyvirtualcam
        except ImportError as error:  # a broken install must switch this output off, not end the stream
            raise VirtualCameraUnavailable(f"pyvirtualcam cannot be loaded ({error}): pip install pyvirtualcam.",
                                           virtual_camera_setup()) from error

        if config.backend is not None and config.backend not in pyvirtualcam.camera.BACKENDS:
            known = ", ".join(pyvirtualcam.camera.BACKENDS) or "none on this OS"
            raise UsageError(f"unknown virtual camera backend {config.backend!r}; available: {known}")
        self.size = size
        self.fps = fps
        width, height = size
        try:
            self._camera = pyvirtualcam.Camera(width, height, fps, fmt=pyvirtualcam.PixelFormat.RGB,
                                               backend=config.backend, device=config.device)
        except Exception as error:  # each backend raises its own types for a missing driver
            reason = " ".join(str(error).split()) or type(error).__name__
            raise VirtualCameraUnavailable(f"No virtual camera could be started ({reason}).",
                                           virtual_camera_setup()) from error
        self.device = self._camera.device
        log.debug("virtual camera %s (%s): %dx%d at %g fps", self.device, self._camera.backend, width, height, fps)

    def write(self, frame: LiveFrame) -> None:
        self._camera.send(frame.output)

    def close(self) -> None:
        self._camera.close()

    def opened(self) -> SessionEvent:
        return VirtualCameraOn(self.device, *self.size, self.fps)

    def closed(self) -> SessionEvent:
        return VirtualCameraOff(self.device)

    def failed(self, error: Exception) -> SessionEvent:
        return VirtualCameraFailed(self.device, str(error) or type(error).__name__, virtual_camera_setup())


def probe_virtual_camera(config: VirtualCameraConfig = VirtualCameraConfig()) -> str:
    """Start the virtual camera at a size every backend accepts and stop it again: its device
    name, or `VirtualCameraUnavailable` (checks the driver before any model work)."""
    sink = VirtualCameraSink(PROBE_SIZE, 30.0, config)
    sink.close()
    return sink.device


def virtual_camera_failed_to_start(error: Exception) -> VirtualCameraFailed:
    if isinstance(error, VirtualCameraUnavailable):
        return VirtualCameraFailed(None, error.reason, error.setup)
    return VirtualCameraFailed(None, str(error) or type(error).__name__, virtual_camera_setup())


class RecorderSink:
    """The output frames into an H.264 mp4 (fragmented: a crash keeps all but about the last second).

    fps:  the recording's rate: the source's, so that it plays as long as it was live.
    pace: live input arrives at an uneven rate; each frame is then placed at its capture
          time on the file's constant-rate clock (repeated to fill a gap, skipped when a
          slot is already taken), so the recording plays in real time. Without pacing every
          frame is written once (an offline run as fast as possible).
    """

    def __init__(self, path: Path, fps: float, size: Size, pace: bool = True,
                 encoder: EncoderConfig = EncoderConfig(preset="veryfast", tune="zerolatency")) -> None:
        self.path = Path(path)
        self.fps = fps
        self.pace = pace
        check_output(self.path)
        self._writer = VideoWriter(self.path, fps, size, config=encoder)
        self._start: float | None = None
        self._previous: np.ndarray | None = None

    def write(self, frame: LiveFrame) -> None:
        if not self.pace:
            self._writer.write(frame.output)
            return
        if self._start is None:
            self._start = frame.captured_at
        slot = round((frame.captured_at - self._start) * self.fps)
        while self._previous is not None and self._writer.frames_written < slot:
            self._writer.write(self._previous)
        if self._writer.frames_written <= slot:
            self._writer.write(frame.output)
        self._previous = frame.output

    def close(self) -> None:
        self._writer.close()

    def opened(self) -> SessionEvent:
        return RecordingStarted(self.path, self.fps)

    def closed(self) -> SessionEvent:
        return RecordingStopped(self.path, self._writer.frames_written, self._writer.duration)

    def failed(self, error: Exception) -> SessionEvent:
        return RecordingFailed(self.path, str(error), self._writer.frames_written, self._writer.duration)


@dataclass(frozen=True, eq=False)
class MotionTrack:
    """A performance, for replay onto any avatar.

    motion:     (N, 40) float32 relative motion codes, as rendered (after smoothing and intensity).
    edit:       (N, 40) float32 dial offsets of each frame.
    timestamps: (N,) float64 capture times in seconds from the first frame.
    fps:        the rate of the live session's source.
    """

    motion: np.ndarray
    edit: np.ndarray
    timestamps: np.ndarray
    fps: float


_TRACK_FORMAT = "liveanim-motion-track"


def _track_records(dim: int) -> np.dtype:
    """One frame of a motion track file, little-endian whatever the machine."""
    return np.dtype([("time", "<f8"), ("motion", "<f4", (dim,)), ("edit", "<f4", (dim,))])


def load_motion_track(path: Path) -> MotionTrack:
    """A track written by `MotionRecorder`, also one cut short by a crash (its whole frames)."""
    try:
        with open(path, "rb") as file:
            header = json.loads(file.readline())
            if header.get("format") != _TRACK_FORMAT:
                raise ValueError(f"its first line is not a {_TRACK_FORMAT} header")
            records = _track_records(int(header["dim"]))
            data = file.read()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise MediaError(f"{path} is not a LiveAnim motion track (from --record-motion): {error}") from error
    frames = np.frombuffer(data[: len(data) - len(data) % records.itemsize], dtype=records)
    return MotionTrack(frames["motion"].copy(), frames["edit"].copy(), frames["time"].copy(), float(header["fps"]))


class MotionRecorder:
    """Writes the rendered motion of every delivered frame as it comes, to a motion track file.

    The file is a JSON header line followed by one fixed-size binary record per frame (capture
    time, motion, edit), flushed frame by frame: it never grows in memory, and a crash keeps
    every whole frame written before it (`load_motion_track` reads them).
    """

    def __init__(self, path: Path, fps: float) -> None:
        self.path = Path(path)
        self.fps = fps
        self.frames = 0
        self._start: float | None = None
        self._last = 0.0
        self._records = _track_records(MOTION_DIM)
        check_output(self.path)
        with _writing_track(self.path):
            self._file = open(self.path, "wb")
            header = {"format": _TRACK_FORMAT, "version": 1, "fps": float(fps), "dim": MOTION_DIM}
            self._file.write(json.dumps(header).encode() + b"\n")
            self._file.flush()

    def write(self, frame: LiveFrame) -> None:
        assert frame.motion is not None and frame.edit is not None, "a live frame carries its motion"
        if self._start is None:
            self._start = frame.captured_at
        self._last = frame.captured_at - self._start
        record = np.array((self._last, frame.motion, frame.edit), dtype=self._records)
        with _writing_track(self.path):
            self._file.write(record.tobytes())
            self._file.flush()
        self.frames += 1

    def close(self) -> None:
        with _writing_track(self.path):
            self._file.close()

    def opened(self) -> SessionEvent:
        return RecordingStarted(self.path, self.fps)

    def closed(self) -> SessionEvent:
        return RecordingStopped(self.path, self.frames, self._last)

    def failed(self, error: Exception) -> SessionEvent:
        return RecordingFailed(self.path, str(error), self.frames, self._last)


def recording_failed_to_start(path: Path, error: Exception) -> RecordingFailed:
    return RecordingFailed(Path(path), str(error) or type(error).__name__, 0, 0.0)


@contextlib.contextmanager
def _writing_track(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as error:
        full = error.errno == errno.ENOSPC
        reason = "The disk is full." if full else f"Cannot write it ({error.strerror or error})."
        raise MediaError(f"{reason} Motion track: {path}") from error
