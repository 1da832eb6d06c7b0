"""Where live frames go: the virtual camera, a recording, a motion track, the GUI preview.

Every sink takes the `LiveFrame` of each delivered frame and is closed once, on the output
thread, which finalizes its file. A sink that cannot start raises our own error with what
to do about it; the live loop reports it and goes on without that sink.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from liveanim.errors import MediaError, UsageError, VirtualCameraUnavailable
from liveanim.face import CropBox
from liveanim.pipeline.metrics import LiveStats
from liveanim.pipeline.video import EncoderConfig, VideoWriter

log = logging.getLogger(__name__)

Size = tuple[int, int]  # (width, height)


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
    name: str

    def write(self, frame: LiveFrame) -> None: ...

    def close(self) -> None: ...


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

    name = "virtual camera"

    def __init__(self, size: Size, fps: float, config: VirtualCameraConfig = VirtualCameraConfig()) -> None:
        try:
            import pyvirtualcam
        except ImportError as error:  # a broken install must switch this output off, not end the stream
            raise VirtualCameraUnavailable(f"pyvirtualcam cannot be loaded ({error}): pip install pyvirtualcam. "
                                           f"{virtual_camera_setup()}") from error

        if config.backend is not None and config.backend not in pyvirtualcam.camera.BACKENDS:
            known = ", ".join(pyvirtualcam.camera.BACKENDS) or "none on this OS"
            raise UsageError(f"unknown virtual camera backend {config.backend!r}; available: {known}")
        width, height = size
        try:
            self._camera = pyvirtualcam.Camera(width, height, fps, fmt=pyvirtualcam.PixelFormat.RGB,
                                               backend=config.backend, device=config.device)
        except Exception as error:  # each backend raises its own types for a missing driver
            reason = " ".join(str(error).split()) or type(error).__name__
            raise VirtualCameraUnavailable(f"No virtual camera could be started ({reason}). "
                                           f"{virtual_camera_setup()}") from error
        self.device = self._camera.device
        log.info("virtual camera %s (%s): %dx%d at %g fps", self.device, self._camera.backend, width, height, fps)

    def write(self, frame: LiveFrame) -> None:
        self._camera.send(frame.output)

    def close(self) -> None:
        self._camera.close()


class RecorderSink:
    """The output frames into an H.264 mp4.

    pace: live input arrives at an uneven rate; each frame is then placed at its capture
          time on the file's constant-rate clock (repeated to fill a gap, skipped when a
          slot is already taken), so the recording plays in real time. Without pacing every
          frame is written once (an offline run as fast as possible).
    """

    name = "recording"

    def __init__(self, path: Path, fps: float, size: Size, pace: bool = True,
                 encoder: EncoderConfig = EncoderConfig(preset="veryfast")) -> None:
        self.path = Path(path)
        self.fps = fps
        self.pace = pace
        self._writer = VideoWriter(self.path, fps, size, config=encoder)
        self._start: float | None = None
        self._previous: np.ndarray | None = None
        log.info("recording to %s", self.path)

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
        log.info("recording finished: %s (%d frames, %.1f s)", self.path, self._writer.frames_written,
                 self._writer.duration)


@dataclass(frozen=True, eq=False)
class MotionTrack:
    """A performance, for replay onto any avatar.

    motion:     (N, 40) float32 relative motion codes, as rendered (after smoothing and intensity).
    edit:       (N, 40) float32 dial offsets of each frame.
    timestamps: (N,) float64 capture times in seconds from the first frame.
    fps:        the rate of the live session.
    """

    motion: np.ndarray
    edit: np.ndarray
    timestamps: np.ndarray
    fps: float

    def save(self, path: Path) -> None:
        """Write an .npz; written beside and renamed, so a crash never leaves half a file."""
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        try:
            with open(partial, "wb") as file:
                np.savez(file, motion=self.motion, edit=self.edit, timestamps=self.timestamps,
                         fps=np.float64(self.fps))
            os.replace(partial, path)
        except OSError as error:
            raise MediaError(f"Cannot write the motion track {path} ({error.strerror or error})") from error


def load_motion_track(path: Path) -> MotionTrack:
    """A track written by `MotionRecorder`."""
    try:
        with np.load(path) as data:
            return MotionTrack(data["motion"], data["edit"], data["timestamps"], float(data["fps"]))
    except (OSError, KeyError, ValueError) as error:
        raise MediaError(f"{path} is not a LiveAnim motion track (.npz from --record-motion): {error}") from error


class MotionRecorder:
    """Collects the rendered motion of every delivered frame; saves it on close."""

    name = "motion track"

    def __init__(self, path: Path, fps: float) -> None:
        self.path = Path(path)
        self.fps = fps
        self._motion: list[np.ndarray] = []
        self._edit: list[np.ndarray] = []
        self._times: list[float] = []

    def write(self, frame: LiveFrame) -> None:
        assert frame.motion is not None and frame.edit is not None, "a live frame carries its motion"
        self._motion.append(frame.motion)
        self._edit.append(frame.edit)
        self._times.append(frame.captured_at)

    def close(self) -> None:
        if not self._times:
            log.warning("no frames were delivered; %s is not written", self.path)
            return
        times = np.asarray(self._times, dtype=np.float64)
        MotionTrack(np.stack(self._motion).astype(np.float32), np.stack(self._edit).astype(np.float32),
                    times - times[0], self.fps).save(self.path)
        log.info("motion track saved: %s (%d frames)", self.path, len(self._times))


class PreviewSink:
    """Hands each frame to a callback (the GUI's preview); a failing callback is logged, not fatal."""

    name = "preview"

    def __init__(self, callback: Callable[[LiveFrame], None]) -> None:
        self._callback = callback
        self._failures = 0

    def write(self, frame: LiveFrame) -> None:
        try:
            self._callback(frame)
        except Exception:
            self._failures += 1
            if self._failures == 1 or self._failures % 100 == 0:
                log.exception("the preview callback failed (%d times so far)", self._failures)

    def close(self) -> None:
        """Nothing to release: the callback's owner manages its window."""
