"""Face boxes and landmarks from mediapipe, on RGB uint8 arrays.

Mediapipe is imported and its graphs are built on first use, never at import: building a
graph loads TFLite models and starts native threads.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Iterator

import numpy as np

log = logging.getLogger(__name__)

FULL_RANGE_MODEL = 1  # face_detection model for faces up to about 5 m from the camera
CLOSE_UP_MODEL = 0  # model for faces within about 2 m: catches faces that fill the image


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
    """Face-mesh points of one face and the box around them.

    points: (N, 2) float32 pixel (x, y), read-only; N = 478 with iris refinement.
    box:    their bounding box; score 1.0, since face mesh reports none (it drops a face
            whose presence falls under its tracking confidence).
    """

    points: np.ndarray
    box: FaceBox


@dataclass(frozen=True)
class DetectorConfig:
    """Thresholds of the mediapipe graphs.

    min_detection_confidence: faces scored below this are ignored (face detection and the
                              detector inside face mesh).
    min_tracking_confidence:  face mesh drops a followed face below this and re-detects.
    quiet:                    hide the lines mediapipe's C++ side writes to stderr while a
                              graph starts (it ignores GLOG_minloglevel in 0.10.x).
    """

    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    quiet: bool = True


class FaceDetector:
    """Finds the main face of still images (face detection) and follows it in video (face mesh).

    Use one instance per video stream and per thread: face mesh runs in video mode, so each
    call starts from the landmarks of the previous one.
    """

    def __init__(self, config: DetectorConfig = DetectorConfig()) -> None:
        self.config = config
        self._full_range = _Graph(functools.partial(_build_detection, FULL_RANGE_MODEL, config), config.quiet)
        self._close_up = _Graph(functools.partial(_build_detection, CLOSE_UP_MODEL, config), config.quiet)
        self._mesh = _Graph(functools.partial(_build_mesh, config), config.quiet)

    def detect(self, image: np.ndarray) -> FaceBox | None:
        """The largest face in an RGB uint8 (H, W, 3) image, or None.

        The full-range model runs first; the close-up one only when it finds nothing, since
        the full-range model misses faces that fill most of the picture.
        """
        image = _checked_rgb(image)
        for graph in (self._full_range, self._close_up):
            faces = _face_boxes(graph.process(image), image.shape)
            if faces:
                return max(faces, key=lambda face: face.area)
        return None

    def landmarks(self, image: np.ndarray) -> FaceLandmarks | None:
        """Face-mesh landmarks of one face in a video frame (RGB uint8 (H, W, 3)), or None."""
        image = _checked_rgb(image)
        faces = self._mesh.process(image).multi_face_landmarks
        if not faces:
            return None
        height, width = image.shape[:2]
        points = np.array([(point.x * width, point.y * height) for point in faces[0].landmark], dtype=np.float32)
        points.flags.writeable = False
        return FaceLandmarks(points, _bounding_box(points))

    def reset_tracking(self) -> None:
        """Forget the followed face, e.g. when the video source changes."""
        self._mesh.close()

    def close(self) -> None:
        """Release the mediapipe graphs; a later call builds them again."""
        for graph in (self._full_range, self._close_up, self._mesh):
            graph.close()

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Graph:
    """One mediapipe solution, built on first use. Its first run is where the C++ side logs."""

    def __init__(self, build: Callable[[], Any], quiet: bool) -> None:
        self._build = build
        self._quiet = quiet
        self._solution: Any = None

    def process(self, image: np.ndarray) -> Any:
        if self._solution is not None:
            return self._solution.process(image)
        with _native_stderr_silenced(self._quiet):
            self._solution = self._build()
            return self._solution.process(image)

    def close(self) -> None:
        if self._solution is not None:
            self._solution.close()
            self._solution = None


def _solutions() -> ModuleType:
    """mediapipe.solutions, imported on first use (importing it takes about a second)."""
    import mediapipe

    return mediapipe.solutions


def _build_detection(model: int, config: DetectorConfig) -> Any:
    log.debug("starting mediapipe face detection (model %d)", model)
    return _solutions().face_detection.FaceDetection(
        model_selection=model, min_detection_confidence=config.min_detection_confidence
    )


def _build_mesh(config: DetectorConfig) -> Any:
    log.debug("starting mediapipe face mesh")
    return _solutions().face_mesh.FaceMesh(
        static_image_mode=False,
        max_num_faces=1,
        refine_landmarks=True,
        min_detection_confidence=config.min_detection_confidence,
        min_tracking_confidence=config.min_tracking_confidence,
    )


def _face_boxes(results: Any, shape: tuple[int, ...]) -> list[FaceBox]:
    """Pixel boxes of mediapipe detections (given relative to the image size)."""
    height, width = shape[:2]
    boxes = []
    for detection in results.detections or ():
        rel = detection.location_data.relative_bounding_box
        boxes.append(
            FaceBox(
                left=rel.xmin * width,
                top=rel.ymin * height,
                right=(rel.xmin + rel.width) * width,
                bottom=(rel.ymin + rel.height) * height,
                score=float(detection.score[0]),
            )
        )
    return boxes


def _bounding_box(points: np.ndarray) -> FaceBox:
    (left, top), (right, bottom) = points.min(axis=0), points.max(axis=0)
    return FaceBox(float(left), float(top), float(right), float(bottom), score=1.0)


def _checked_rgb(image: np.ndarray) -> np.ndarray:
    """The image as mediapipe needs it: C-contiguous RGB uint8 (a copy only if it is not)."""
    assert image.ndim == 3 and image.shape[2] == 3, f"expected an (H, W, 3) RGB image, got {image.shape}"
    assert image.dtype == np.uint8, f"expected uint8 pixels, got {image.dtype}"
    return np.ascontiguousarray(image)


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
