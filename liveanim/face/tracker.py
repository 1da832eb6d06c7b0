"""Following the performer's face in live video, with a crop that does not jitter.

LIA-X reads motion from the driving crop itself, so a crop that shakes with landmark noise
makes the avatar shake. The face box is therefore filtered before the crop rule: small
changes (noise) are ignored, moderate ones are smoothed, large ones are followed at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from liveanim.face.crop import CropBox, CropConfig, crop_box
from liveanim.face.detector import FaceBox, FaceDetector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackerConfig:
    """How the live crop follows the face.

    crop:      the crop rule's margins and output size.
    deadband:  face-box changes up to this fraction of the face size count as noise: the crop
               holds exactly still.
    smoothing: share of the previous box kept each frame for changes just past the deadband
               (0 follows at once; towards 1 glides slowly).
    snap:      changes of this fraction of the face size or more are followed at once; the
               smoothing fades out between deadband and snap.
    """

    crop: CropConfig = CropConfig()
    deadband: float = 0.03
    smoothing: float = 0.6
    snap: float = 0.2

    def __post_init__(self) -> None:
        if not 0 <= self.deadband < self.snap:
            raise ValueError(f"need 0 <= deadband < snap, got deadband={self.deadband}, snap={self.snap}")
        if not 0 <= self.smoothing < 1:
            raise ValueError(f"smoothing must lie in [0, 1), got {self.smoothing}")


@dataclass(frozen=True, eq=False)
class TrackResult:
    """The crop for one frame.

    box:       where to crop; while the face is lost, the last box (None until a first face).
    found:     whether a face was found in this frame.
    landmarks: (478, 2) landmarks in pixels, or None when the video landmarker lost the face (the
               box may then come from a search of the whole frame).
    """

    box: CropBox | None
    found: bool
    landmarks: np.ndarray | None


class FaceTracker:
    """Gives, frame after frame, the LIA-X crop of the performer's face.

    The video landmarker follows the face; when it loses it, the still search (which also
    looks in square windows of the frame, for smaller faces) finds it again in the same frame.
    """

    def __init__(self, detector: FaceDetector | None = None, config: TrackerConfig = TrackerConfig()) -> None:
        """detector: one to use (not closed by this tracker); by default the tracker owns one."""
        self.config = config
        self._owns_detector = detector is None
        self._detector = FaceDetector() if detector is None else detector
        self._filter = _BoxFilter(config)
        self._box: CropBox | None = None
        self._frame_shape: tuple[int, ...] | None = None
        self._found = False

    def track(self, frame: np.ndarray) -> TrackResult:
        """The crop for one RGB uint8 (H, W, 3) video frame."""
        if frame.shape != self._frame_shape:
            self.reset()
            self._frame_shape = frame.shape
        landmarks = self._detector.landmarks(frame)
        face = self._detector.detect(frame) if landmarks is None else landmarks.box
        self._note_found(face is not None)
        if face is None:
            return TrackResult(self._box, found=False, landmarks=None)
        self._box = crop_box(self._filter(face), frame.shape, self.config.crop)
        return TrackResult(self._box, found=True, landmarks=None if landmarks is None else landmarks.points)

    def reset(self) -> None:
        """Forget the face and the filter's history, e.g. when the camera changes."""
        self._filter.reset()
        self._detector.reset_tracking()
        self._box = None
        self._frame_shape = None

    def close(self) -> None:
        """Release the detector if this tracker made it."""
        if self._owns_detector:
            self._detector.close()

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _note_found(self, found: bool) -> None:
        if found != self._found:
            log.info("face %s", "found" if found else "lost")
        self._found = found


class _BoxFilter:
    """Adaptive smoothing of a face box's centre and size (a deadband plus an exponential
    filter whose gain grows with the motion): still when the head is still, quick when it moves.
    """

    def __init__(self, config: TrackerConfig) -> None:
        self._config = config
        self._state: np.ndarray | None = None  # centre x, centre y, width, height

    def reset(self) -> None:
        self._state = None

    def __call__(self, face: FaceBox) -> FaceBox:
        target = _centre_size(face)
        self._state = target if self._state is None else self._step(self._state, target)
        return _face_box(self._state, face.score)

    def _step(self, state: np.ndarray, target: np.ndarray) -> np.ndarray:
        config = self._config
        change = target - state
        motion = float(np.abs(change).max() / state[2:].max())
        if motion <= config.deadband:
            return state
        speed = min(1.0, (motion - config.deadband) / (config.snap - config.deadband))
        gain = 1.0 - config.smoothing * (1.0 - speed)
        return state + gain * change


def _centre_size(face: FaceBox) -> np.ndarray:
    return np.array(
        [(face.left + face.right) / 2, (face.top + face.bottom) / 2, face.width, face.height], dtype=np.float64
    )


def _face_box(state: np.ndarray, score: float) -> FaceBox:
    centre_x, centre_y, width, height = (float(value) for value in state)
    return FaceBox(centre_x - width / 2, centre_y - height / 2, centre_x + width / 2, centre_y + height / 2, score)
