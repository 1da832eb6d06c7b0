"""Faces on numpy arrays: detection, the LIA-X crop rule, paste-back and live tracking.

Importing this package does not import mediapipe; its landmarkers start on first use, and
the face model they load is downloaded once (liveanim.face.model).
"""

from liveanim.face.crop import (CropBox, CropConfig, centre_square, crop_box, crop_image, crop_portrait, paste_back,
                                resize_square)
from liveanim.face.detector import DetectorConfig, FaceBox, FaceDetector, FaceLandmarks
from liveanim.face.model import FACE_LANDMARKER, FACE_MODEL_ENV, resolve_face_model
from liveanim.face.tracker import FaceTracker, TrackerConfig, TrackResult

__all__ = [
    "FACE_LANDMARKER",
    "FACE_MODEL_ENV",
    "CropBox",
    "CropConfig",
    "DetectorConfig",
    "FaceBox",
    "FaceDetector",
    "FaceLandmarks",
    "FaceTracker",
    "TrackResult",
    "TrackerConfig",
    "centre_square",
    "crop_box",
    "crop_image",
    "crop_portrait",
    "paste_back",
    "resize_square",
    "resolve_face_model",
]
