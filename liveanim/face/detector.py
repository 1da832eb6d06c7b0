"""Face boxes and landmarks from mediapipe's Face Landmarker (Tasks API), on RGB uint8 arrays.

Mediapipe is imported and its native library loaded when a detector is made, never at import;
its landmarkers are built on first use (building one loads TFLite models and starts native
threads). A mediapipe that cannot import or load (e.g. a Linux server without libEGL) is one
`FaceDetectionUnavailable` when the detector is made, not a crash on some later frame. A face's
box is the bounding box of its 478 landmarks, for stills and video alike, so sources and
driving frames are cropped alike.

The landmarker's detector sees the picture shrunk to 128x128 (letterboxed), so in a wide
frame it misses faces smaller than about a quarter of the frame's height. Stills are
therefore also searched in square windows of the frame's short side, where such faces are
twice as large to the detector.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from liveanim.errors import FaceDetectionUnavailable, Fix
from liveanim.face.model import resolve_face_model

log = logging.getLogger(__name__)

STILL_FACES = 4  # faces a still is searched for; the largest is the subject
FRAME_MS = 33  # the clock the video landmarker is given: one frame at 30 fps per call
# Libraries mediapipe's native library links that servers without a desktop often lack:
# what each is, and the Debian/Ubuntu package that provides it.
_SYSTEM_LIBRARIES = {"libEGL.so.1": ("EGL", "libegl1"), "libGLESv2.so.2": ("OpenGL ES", "libgles2")}
_WITHOUT_FACES = "Until then, live animation uses the centre of each camera frame and of each portrait."


@dataclass(frozen=True)
class FaceBox:
    """A face rectangle in pixels (x to the right, y down) and the detector's confidence.

    It may reach past the image edges when the face does; crop_box clips.
    """

    left: float
    top: float
    right: float
    bottom: float
    score: float

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def area(self) -> float:
        return self.width * self.height


@dataclass(frozen=True, eq=False)
class FaceLandmarks:
    """The landmarks of one face and the box around them.

    points: (478, 2) float32 pixel (x, y), read-only.
    box:    their bounding box; score 1.0, since the landmarker reports none (it drops a face
            whose presence falls under its confidence thresholds).
    """

    points: np.ndarray
    box: FaceBox


@dataclass(frozen=True)
class DetectorConfig:
    """The face model and the landmarker's thresholds.

    model:                    the .task file; None: $LIVEANIM_FACE_MODEL, else the cache, else
                              a download on first use (liveanim.face.model).
    min_detection_confidence: faces scored below this by the detector are ignored.
    min_tracking_confidence:  in video, a followed face scored below this is searched anew.
    quiet:                    hide the lines mediapipe's C++ side writes to stderr while a
                              landmarker starts (it ignores Python's logging).
    """

    model: Path | None = None
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    quiet: bool = True


class FaceDetector:
    """Finds the main face of still images and follows one face through video.

    Use one instance per video stream and per thread: the video landmarker starts each call
    from the landmarks of the previous one.
    """

    def __init__(self, config: DetectorConfig = DetectorConfig()) -> None:
        """Raises FaceDetectionUnavailable when mediapipe cannot import or load."""
        _load_mediapipe()
        self.config = config
        self._still = _Landmarker(self._model, lambda model: _build(model, config, video=False), config.quiet)
        self._video = _Landmarker(self._model, lambda model: _build(model, config, video=True), config.quiet)
        self._model_bytes: bytes | None = None
        self._clock_ms = 0

    def detect(self, image: np.ndarray) -> FaceBox | None:
        """The box of the largest face in an RGB uint8 (H, W, 3) still, or None.

        The whole picture is searched first; only when it shows no face, its square windows.
        """
        image = _checked_rgb(image)
        for windows in _search_windows(image.shape):
            boxes = [face.box for window in windows for face in self._still_faces(image, window)]
            if boxes:
                return max(boxes, key=lambda box: box.area)
        return None

    def _still_faces(self, image: np.ndarray, window: tuple[int, int, int, int]) -> list[FaceLandmarks]:
        left, top, width, height = window
        part = image[top : top + height, left : left + width]
        return _landmarks(self._still.run(_mp_image(part)), part.shape, (left, top))

    def landmarks(self, image: np.ndarray) -> FaceLandmarks | None:
        """The landmarks of the followed face in a video frame (RGB uint8 (H, W, 3)), or None."""
        image = _checked_rgb(image)
        self._clock_ms += FRAME_MS
        faces = _landmarks(self._video.run(_mp_image(image), self._clock_ms), image.shape, (0, 0))
        return faces[0] if faces else None

    def reset_tracking(self) -> None:
        """Forget the followed face, e.g. when the video source changes."""
        self._video.close()
        self._clock_ms = 0

    def close(self) -> None:
        """Release the landmarkers; a later call builds them again."""
        self._still.close()
        self._video.close()

    def _model(self) -> bytes:
        """The face model file's contents, found (or downloaded) on first use."""
        if self._model_bytes is None:
            self._model_bytes = resolve_face_model(self.config.model).read_bytes()
        return self._model_bytes

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Landmarker:
    """One mediapipe FaceLandmarker, built on first use. Its first run is where the C++ side logs;
    the model is fetched before that, so a download's progress and messages stay visible."""

    def __init__(self, model: Callable[[], bytes], build: Callable[[bytes], Any], quiet: bool) -> None:
        self._model = model
        self._build = build
        self._quiet = quiet
        self._task: Any = None

    def run(self, image: Any, timestamp_ms: int | None = None) -> Any:
        if self._task is not None:
            return self._call(image, timestamp_ms)
        model = self._model()
        with _native_stderr_silenced(self._quiet):
            self._task = self._build(model)
            return self._call(image, timestamp_ms)

    def _call(self, image: Any, timestamp_ms: int | None) -> Any:
        if timestamp_ms is None:
            return self._task.detect(image)
        return self._task.detect_for_video(image, timestamp_ms)

    def close(self) -> None:
        if self._task is not None:
            self._task.close()
            self._task = None


def _load_mediapipe() -> None:
    """Import mediapipe and load its native library (as each of its tasks and images does on
    first use), so a missing piece shows now, named with what to install."""
    try:
        from mediapipe.tasks.python.core.mediapipe_c_bindings import load_raw_library
    except ImportError as error:
        raise FaceDetectionUnavailable(
            f"Faces cannot be found: mediapipe cannot be imported ({error}). Install it into this Python: "
            f'python -m pip install "mediapipe>=1.2". {_WITHOUT_FACES}', fix=Fix.NO_CROP) from error
    try:
        load_raw_library()
    except OSError as error:
        raise FaceDetectionUnavailable(
            f"Faces cannot be found: mediapipe's native library cannot load ({error}). {_install_advice(error)} "
            f"{_WITHOUT_FACES}", fix=Fix.NO_CROP) from error


def _install_advice(error: OSError) -> str:
    """What to install for a native library that failed to load, by the library it names."""
    named = re.search(r"([\w.+-]+\.so[\d.]*): cannot open shared object file", str(error))
    if named is None:
        return 'Reinstall mediapipe: python -m pip install --force-reinstall "mediapipe>=1.2".'
    library = named.group(1)
    if library in _SYSTEM_LIBRARIES:
        what, package = _SYSTEM_LIBRARIES[library]
        return (f"Install your system's {what} library, which servers without a desktop often lack: "
                f"sudo apt install {package} (Debian, Ubuntu), or your distribution's package of {library}.")
    return f"Install your system's package that provides {library}."


def _build(model: bytes, config: DetectorConfig, video: bool) -> Any:
    """A FaceLandmarker over the model's bytes (a path could not hold every user's characters)."""
    from mediapipe.tasks.python import BaseOptions, vision

    log.debug("starting mediapipe's face landmarker (%s mode)", "video" if video else "image")
    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_buffer=model),
        running_mode=vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE,
        num_faces=1 if video else STILL_FACES,
        min_face_detection_confidence=config.min_detection_confidence,
        min_face_presence_confidence=config.min_tracking_confidence,
        min_tracking_confidence=config.min_tracking_confidence,
    )
    return vision.FaceLandmarker.create_from_options(options)


def _search_windows(shape: tuple[int, ...]) -> Iterator[list[tuple[int, int, int, int]]]:
    """(left, top, width, height) windows to search, coarse to fine: the whole picture, then
    (unless it is nearly square) the squares of its short side at the start, middle and end."""
    height, width = shape[:2]
    yield [(0, 0, width, height)]
    side, length = min(height, width), max(height, width)
    if length >= 1.25 * side:
        starts = sorted({0, (length - side) // 2, length - side})
        yield [(start, 0, side, side) if width > height else (0, start, side, side) for start in starts]


def _mp_image(image: np.ndarray) -> Any:
    import mediapipe

    return mediapipe.Image(image_format=mediapipe.ImageFormat.SRGB, data=np.ascontiguousarray(image))


def _landmarks(result: Any, shape: tuple[int, ...], offset: tuple[int, int]) -> list[FaceLandmarks]:
    """Pixel landmarks of each face (given relative to the window, placed at `offset`)."""
    height, width = shape[:2]
    faces = []
    for face in result.face_landmarks:
        points = np.array([(point.x * width, point.y * height) for point in face], dtype=np.float32)
        points += np.array(offset, dtype=np.float32)
        points.flags.writeable = False
        faces.append(FaceLandmarks(points, _bounding_box(points)))
    return faces


def _bounding_box(points: np.ndarray) -> FaceBox:
    (left, top), (right, bottom) = points.min(axis=0), points.max(axis=0)
    return FaceBox(float(left), float(top), float(right), float(bottom), score=1.0)


def _checked_rgb(image: np.ndarray) -> np.ndarray:
    """The image as mediapipe needs it: RGB uint8 (made C-contiguous when it is wrapped)."""
    assert image.ndim == 3 and image.shape[2] == 3, f"expected an (H, W, 3) RGB image, got {image.shape}"
    assert image.dtype == np.uint8, f"expected uint8 pixels, got {image.dtype}"
    return image


@contextlib.contextmanager
def _native_stderr_silenced(enabled: bool) -> Iterator[None]:
    """Point file descriptor 2 at the null device for the duration.

    Mediapipe logs through absl before anyone can set a log level, so only the descriptor
    can be muted. Without a usable descriptor 2 (e.g. pythonw on Windows) nothing is done.
    """
    if not enabled:
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    if sys.stderr is not None:
        sys.stderr.flush()
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
