"""Faces on numpy arrays: detection, the LIA-X crop rule, paste-back and live tracking.

Importing this package does not import mediapipe; its graphs start on first use.
"""

from liveanim.face.crop import CropBox, CropConfig, crop_box, crop_image, crop_portrait, paste_back, resize_square
from liveanim.face.detector import DetectorConfig, FaceBox, FaceDetector, FaceLandmarks
from liveanim.face.tracker import FaceTracker, TrackerConfig, TrackResult

__all__ = [
    "CropBox",
    "CropConfig",
    "DetectorConfig",
    "FaceBox",
    "FaceDetector",
    "FaceLandmarks",
    "FaceTracker",
    "TrackResult",
    "TrackerConfig",
    "crop_box",
    "crop_image",
    "crop_portrait",
    "paste_back",
    "resize_square",
]
