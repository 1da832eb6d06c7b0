"""Where driving frames come from: a camera, a video file or a folder of images.

Every source yields `(frame, timestamp)`: a uint8 RGB (H, W, 3) frame and the
`time.monotonic()` second it was captured, which end-to-end latency is measured from.
A source is checked when it is made (a missing file or camera fails there, before any model
work); `frames()` runs on the capture thread and opens its device there; `close()` may be
called from any thread and makes `frames()` end soon, also out of a reconnect wait.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

import cv2
import numpy as np

from liveanim.errors import CameraError, Fix, MediaError
from liveanim.pipeline.events import EventCallback, SourceLost, SourceReopened, log_event
from liveanim.pipeline.video import VideoReader, read_image

log = logging.getLogger(__name__)

Captured = tuple[np.ndarray, float]
MAX_CAMERA_FPS = 240.0  # a camera reporting more is reporting nonsense (some drivers say 0 or 1e9)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class FrameSource(Protocol):
    """What the live loop reads from.

    live: frames happen in real time, so a late frame may be dropped for a newer one; a
          source that is not live is read losslessly, as fast as the loop goes.
    fps:  the frame rate (a camera's, once open, as it reports it): the rate of recordings.
    """

    live: bool
    fps: float

    def frames(self, on_event: EventCallback | None = None) -> Iterator[Captured]: ...

    def close(self) -> None: ...

    def describe(self) -> str: ...


class VideoCaptureLike(Protocol):
    """The part of `cv2.VideoCapture` a camera source uses."""

    def isOpened(self) -> bool: ...

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def set(self, prop: int, value: float) -> bool: ...

    def get(self, prop: int) -> float: ...

    def release(self) -> None: ...


def open_capture(device: int | str, api: int) -> VideoCaptureLike:
    """A camera through OpenCV (tests put a stand-in here, as no camera exists on their machine).

    OpenCV's own warnings are silenced: a camera that does not open is reported once, by us.
    """
    logging_ = cv2.utils.logging  # the contrib build has the log level here only
    previous_level = logging_.getLogLevel()
    logging_.setLogLevel(logging_.LOG_LEVEL_SILENT)
    try:
        return cv2.VideoCapture(device, api)
    finally:
        logging_.setLogLevel(previous_level)


@dataclass(frozen=True)
class CameraInfo:
    """A camera that opened: its index, size, rate and (on Linux) its driver name."""

    index: int
    width: int
    height: int
    fps: float
    name: str

    def describe(self) -> str:
        return f"{self.index} ({self.name + ', ' if self.name else ''}{self.width}x{self.height})"


def probe_cameras(indices: range) -> list[CameraInfo]:
    """The indices that open and deliver a frame, with the capture backend `live` uses."""
    found = []
    for index in indices:
        capture = open_capture(index, camera_api())
        try:
            if capture.isOpened() and capture.read()[0]:
                found.append(CameraInfo(index, int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                                        int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                                        capture.get(cv2.CAP_PROP_FPS), _linux_name(index)))
        finally:
            capture.release()
    return found


def _linux_name(index: int) -> str:
    """The driver's name of /dev/video<index> (e.g. 'LiveAnim' for a v4l2loopback device)."""
    path = Path(f"/sys/class/video4linux/video{index}/name")
    return path.read_text().strip() if path.is_file() else ""


def camera_api(system: str | None = None) -> int:
    """The OpenCV capture backend that works best on this OS.

    DirectShow on Windows: Media Foundation can take many seconds to open a camera and
    lists fewer devices (virtual cameras included).
    """
    system = system or platform.system()
    return {"Linux": cv2.CAP_V4L2, "Windows": cv2.CAP_DSHOW, "Darwin": cv2.CAP_AVFOUNDATION}.get(system, cv2.CAP_ANY)


@dataclass(frozen=True)
class CameraConfig:
    """Which camera and what to ask of it.

    device:        index (0 = the first camera) or a device path such as /dev/video2.
    width/height:  requested resolution; the camera picks the nearest it supports.
    fps:           requested frame rate.
    fourcc:        requested pixel format; MJPG lets most USB cameras deliver 720p at 30 fps
                   (raw YUYV often manages 10). None leaves the driver's choice.
    read_failures: consecutive failed reads before the camera counts as gone.
    backoff_s:     first wait before reopening a lost camera; doubles up to `max_backoff_s`.
    probe:         camera indices listed in the message when this camera cannot be opened.
    """

    device: int | str = 0
    width: int = 1280
    height: int = 720
    fps: float = 30.0
    fourcc: str | None = "MJPG"
    read_failures: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 5.0
    probe: range = range(10)


class CameraSource:
    """A webcam through OpenCV, reopened with backoff when it stops delivering frames.

    Made with `check=True` (the default), it opens the camera once to check it is there, so a
    wrong index fails at once with the cameras that do exist; the capture thread opens it again.
    """

    live = True

    def __init__(self, config: CameraConfig = CameraConfig(), check: bool = True) -> None:
        self.config = config
        self.fps = config.fps
        self._closed = threading.Event()
        if check:
            capture = self._open()
            if capture is None:
                raise CameraError(self._open_failed_message())
            capture.release()

    def describe(self) -> str:
        return f"camera {self.config.device}"

    def close(self) -> None:
        self._closed.set()

    def frames(self, on_event: EventCallback | None = None) -> Iterator[Captured]:
        """Frames until `close()`; the first open failing is a CameraError, later losses are retried."""
        notify = on_event if on_event is not None else (lambda event: log_event(log, event))
        capture = self._open()
        if capture is None:
            raise CameraError(self._open_failed_message(), fix=Fix.OTHER_CAMERA)
        try:
            while not self._closed.is_set():
                frame = self._read(capture)
                if frame is not None:
                    yield frame
                    continue
                capture.release()
                capture = self._reopen(notify)
                if capture is None:
                    return
        finally:
            if capture is not None:
                capture.release()

    def _read(self, capture: VideoCaptureLike) -> Captured | None:
        """The next frame, or None after `read_failures` failed reads in a row."""
        for _ in range(self.config.read_failures):
            ok, bgr = capture.read()
            if ok and bgr is not None:
                return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), time.monotonic()
            if self._closed.is_set():
                break
        return None

    def _reopen(self, notify: EventCallback) -> VideoCaptureLike | None:
        """Try again and again with growing waits; None once the source is closed."""
        wait = self.config.backoff_s
        while not self._closed.wait(wait):
            notify(SourceLost(self.describe(), wait))
            capture = self._open()
            if capture is not None:
                notify(SourceReopened(self.describe()))
                return capture
            wait = min(2 * wait, self.config.max_backoff_s)
        return None

    def _open(self) -> VideoCaptureLike | None:
        """The opened camera, set up as asked; its reported rate becomes `fps`."""
        config = self.config
        capture = open_capture(config.device, camera_api())
        if not capture.isOpened():
            capture.release()
            return None
        if config.fourcc:
            capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*config.fourcc))
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, config.width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, config.height)
        capture.set(cv2.CAP_PROP_FPS, config.fps)
        reported = capture.get(cv2.CAP_PROP_FPS)
        if 0 < reported <= MAX_CAMERA_FPS:
            self.fps = reported
        log.info("%s opened: %dx%d at %.0f fps (asked for %dx%d at %.0f)", self.describe(),
                 capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT),
                 reported, config.width, config.height, config.fps)
        return capture

    def _open_failed_message(self) -> str:
        """Why it may have failed, and the cameras that do open (probed now: this is the error path)."""
        others = [camera for camera in probe_cameras(self.config.probe) if camera.index != self.config.device]
        found = (f"Cameras that open: {', '.join(camera.describe() for camera in others)}." if others
                 else f"No camera opens on this machine (indices {self.config.probe.start}.."
                      f"{self.config.probe.stop - 1} tried).")
        hint = {
            "Darwin": " On macOS, allow camera access for your terminal or Python in System Settings > Privacy.",
            "Linux": " On Linux, check that your user may read /dev/video* (the 'video' group).",
        }.get(platform.system(), "")
        return (f"Cannot open {self.describe()}: check that it is plugged in and not in use by another app "
                f"(Zoom, a browser). {found}{hint}")


class _Paced:
    """Replays frames at their own rate (or as fast as asked for), once or in a loop."""

    def __init__(self, fps: float, realtime: bool, loop: bool) -> None:
        self.fps = fps
        self.live = realtime
        self._loop = loop
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()

    def _replay(self, open_pass: Callable[[], Iterable[np.ndarray]]) -> Iterator[Captured]:
        """Frames of `open_pass()` again and again (if looping); paced on a drift-free clock."""
        start, index = time.monotonic(), 0
        while not self._closed.is_set():
            empty = True
            for frame in open_pass():
                empty = False
                due = start + index / self.fps if self.live else 0.0
                if self._closed.wait(max(0.0, due - time.monotonic())):
                    return
                index += 1
                yield frame, time.monotonic()
            if empty or not self._loop:
                return


class VideoFileSource(_Paced):
    """A video file as driving input: paced at its frame rate (realtime) or as fast as possible."""

    def __init__(self, path: Path, loop: bool = False, realtime: bool = True) -> None:
        self.path = Path(path)
        with VideoReader(self.path) as reader:  # fails now, with a clear message, if unreadable
            fps = float(reader.fps)
        super().__init__(fps, realtime, loop)

    def describe(self) -> str:
        return f"video {self.path.name}"

    def frames(self, on_event: EventCallback | None = None) -> Iterator[Captured]:
        yield from self._replay(self._one_pass)

    def _one_pass(self) -> Iterator[np.ndarray]:
        with VideoReader(self.path) as reader:
            yield from reader


class ImageFolderSource(_Paced):
    """The images of a folder, in name order, as the frames of a video at `fps`."""

    def __init__(self, folder: Path, fps: float = 30.0, loop: bool = False, realtime: bool = True) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise MediaError(f"Image folder not found: {self.folder}")
        self.paths = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise MediaError(f"{self.folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        super().__init__(fps, realtime, loop)

    def describe(self) -> str:
        return f"images in {self.folder}"

    def frames(self, on_event: EventCallback | None = None) -> Iterator[Captured]:
        yield from self._replay(lambda: (read_image(path) for path in self.paths))
