"""The LIA-X crop rule, and pasting a rendered crop back into the full picture.

LIA-X was trained on faces cropped one way (official `utils/crop.py`): the face box widened
by `increase` of its size on each side, with extra room above for hair, made square and
resized to 512x512. Inputs cropped another way animate worse, so sources and driving frames
both go through `crop_box`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from liveanim.errors import Fix, NoFaceError
from liveanim.face.detector import FaceBox, FaceDetector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CropConfig:
    """Margins of the official crop and the model's input size.

    increase:     margin on each side, as a fraction of the face box (official increase_scale).
    increase_top: extra room above the face for hair, as a fraction of the top margin
                  (official increase_top_scale).
    size:         side of the square crop the model takes, in pixels.
    """

    increase: float = 0.25
    increase_top: float = 0.5
    size: int = 512


@dataclass(frozen=True)
class CropBox:
    """A square region of a frame in integer pixels: rows top..bottom-1, columns left..right-1."""

    left: int
    top: int
    size: int

    @property
    def right(self) -> int:
        return self.left + self.size

    @property
    def bottom(self) -> int:
        return self.top + self.size

    @property
    def slices(self) -> tuple[slice, slice]:
        """(rows, columns) to index an (H, W, C) array with."""
        return slice(self.top, self.bottom), slice(self.left, self.right)

    def scaled(self, factor: float) -> CropBox:
        """The same region in the frame resized by `factor` (e.g. a box found on a preview).

        Edges are rounded, not the size, so a box touching the frame's edge still does.
        """
        left, top = round(self.left * factor), round(self.top * factor)
        return CropBox(left, top, round(self.right * factor) - left)

    def inside(self, frame_shape: tuple[int, ...]) -> bool:
        """Whether the box lies wholly in a frame of this (H, W, ...) shape."""
        height, width = frame_shape[:2]
        return self.left >= 0 and self.top >= 0 and self.right <= width and self.bottom <= height


def crop_box(face: FaceBox, frame_shape: tuple[int, ...], config: CropConfig = CropConfig()) -> CropBox:
    """The official LIA-X crop around `face`: a square inside a frame of shape (H, W, ...)."""
    left, top, right, bottom = _widened(face, config)
    height, width = frame_shape[:2]
    left, top = max(0, left), max(0, top)
    right, bottom = min(right, width), min(bottom, height)
    assert right > left and bottom > top, f"face box {face} lies outside a {width}x{height} frame"
    return _square_within(left, top, right - left, bottom - top, width, height)


def _widened(face: FaceBox, config: CropConfig) -> tuple[int, int, int, int]:
    """The face box grown by the margins; the shorter side grows more, towards a square."""
    width, height = face.width, face.height
    grow_x = max(config.increase, ((1 + 2 * config.increase) * height - width) / (2 * width))
    grow_y = max(config.increase, ((1 + 2 * config.increase) * width - height) / (2 * height))
    return (
        math.floor(face.left - grow_x * width),
        math.floor(face.top - grow_y * height * (1 + config.increase_top)),
        math.floor(face.right + grow_x * width),
        math.floor(face.bottom + grow_y * height),
    )


def _square_within(left: int, top: int, width: int, height: int, frame_w: int, frame_h: int) -> CropBox:
    """The square of the shorter side centred on a rectangle, shifted back into the frame."""
    side = min(width, height)
    square_left = left + width // 2 - side // 2
    square_top = top + height // 2 - side // 2
    square_left = min(max(square_left, 0), frame_w - side)
    square_top = min(max(square_top, 0), frame_h - side)
    return CropBox(square_left, square_top, side)


def centre_square(frame_shape: tuple[int, ...]) -> CropBox:
    """The largest square in the middle of a frame: the crop where no face is looked for."""
    height, width = frame_shape[:2]
    side = min(height, width)
    return CropBox((width - side) // 2, (height - side) // 2, side)


def crop_image(image: np.ndarray, box: CropBox, size: int = CropConfig.size) -> np.ndarray:
    """The box's pixels of an (H, W, C) image, resized to (size, size, C)."""
    assert box.inside(image.shape), f"{box} does not lie inside an image of shape {image.shape}"
    return resize_square(image[box.slices], size)


def crop_portrait(
    image: np.ndarray,
    detector: FaceDetector | None = None,
    config: CropConfig = CropConfig(),
    source_name: str | None = None,
) -> tuple[np.ndarray, CropBox]:
    """The model-ready crop of a still RGB uint8 image, and where it was taken.

    detector:    a detector to reuse; by default one is made for this call.
    source_name: how to name the image in errors (e.g. its file name).
    """
    face = _detect(image, detector)
    if face is None:
        what = source_name or "the image"
        raise NoFaceError(f"No face found in {what}: use a photo where one face is clearly visible.", fix=Fix.NO_CROP)
    box = crop_box(face, image.shape, config)
    log.debug("face %s -> crop %s", face, box)
    return crop_image(image, box, config.size), box


def _detect(image: np.ndarray, detector: FaceDetector | None) -> FaceBox | None:
    if detector is not None:
        return detector.detect(image)
    with FaceDetector() as own:
        return own.detect(image)


def paste_back(frame: np.ndarray, crop: np.ndarray, box: CropBox, feather: float) -> np.ndarray:
    """A copy of `frame` with `crop` resized onto `box` and blended in through soft edges.

    frame:   (H, W, C) uint8, the full picture (e.g. the avatar image).
    crop:    (S, S, C) uint8, the rendered face crop; any S.
    box:     where the crop belongs in `frame`; parts outside the frame are dropped.
    feather: width of the soft edge, as a fraction of the box side (0: hard edge). Edges on
             or past the frame's border stay hard: there is nothing beyond them to blend with.
    """
    if not 0 <= feather <= 0.5:
        raise ValueError(f"feather must lie in [0, 0.5] (a fraction of the crop size), got {feather}")
    assert frame.dtype == np.uint8 and crop.dtype == np.uint8, "paste_back blends uint8 images"
    assert crop.ndim == 3 and crop.shape[2] == frame.shape[2], f"crop {crop.shape} vs frame {frame.shape}"
    out = frame.copy()
    rows = _overlap(box.top, box.size, frame.shape[0])
    cols = _overlap(box.left, box.size, frame.shape[1])
    if rows is None or cols is None:
        return out
    weight = np.outer(
        _edge_weights(box.top, box.size, frame.shape[0], feather)[rows[1]],
        _edge_weights(box.left, box.size, frame.shape[1], feather)[cols[1]],
    )[..., None]
    patch = resize_square(crop, box.size)[rows[1], cols[1]].astype(np.float32)
    under = out[rows[0], cols[0]].astype(np.float32)
    out[rows[0], cols[0]] = np.rint(under + weight * (patch - under)).astype(np.uint8)
    return out


def _overlap(start: int, size: int, length: int) -> tuple[slice, slice] | None:
    """(frame slice, box slice) of the part of [start, start+size) inside [0, length), or None."""
    first, last = max(start, 0), min(start + size, length)
    if last <= first:
        return None
    return slice(first, last), slice(first - start, last - start)


def _edge_weights(start: int, size: int, length: int, feather: float) -> np.ndarray:
    """Blend weight of each pixel along one axis of the box: 0 -> 1 over the feather, smoothly.

    A side is softened only where it lies strictly inside the frame.
    """
    weight = np.ones(size, dtype=np.float32)
    ramp = feather * size
    if ramp <= 0:
        return weight
    centres = np.arange(size, dtype=np.float32) + 0.5
    if start > 0:
        weight = np.minimum(weight, _smoothstep(centres / ramp))
    if start + size < length:
        weight = np.minimum(weight, _smoothstep((size - centres) / ramp))
    return weight


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """`image` resized (stretched if not square) to (size, size), as a new array: area averaging
    to shrink, bicubic to enlarge."""
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image.copy()
    interpolation = cv2.INTER_AREA if height * width > size * size else cv2.INTER_CUBIC
    resized = cv2.resize(image, (size, size), interpolation=interpolation)
    return resized.reshape(size, size, *image.shape[2:])  # cv2 drops a single channel axis
