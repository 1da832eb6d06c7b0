"""How a picture becomes an avatar: its crop (the one crop rule, for the window and the command
line alike) and its encodings, cached per engine.

The source encoder costs as much as a frame, and face detection more, so each portrait is
cropped once when added (`prepare_portrait`) and encoded once per engine (`AvatarBank`); a new
session, or a return to the engine used just before, encodes nothing again.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Hashable

import numpy as np

from liveanim.errors import FaceDetectionUnavailable
from liveanim.face import CropBox, CropConfig, centre_square, crop_image, crop_portrait
from liveanim.pipeline.animator import Animator, Avatar
from liveanim.pipeline.events import AvatarUncropped
from liveanim.weights import content_key

log = logging.getLogger(__name__)

Size = tuple[int, int]  # (width, height)


def default_avatar() -> tuple[np.ndarray, str]:
    """The portrait used when none is given: the astronaut photo that ships with scikit-image."""
    from skimage import data

    return data.astronaut(), "astronaut"


@dataclass(frozen=True)
class AvatarConfig:
    """How avatars are prepared and shown.

    crop:        the LIA-X crop rule applied to each portrait.
    auto_crop:   find the face and crop around it; False takes each picture as the crop
                 (its central square), for portraits that are already cropped.
    crop_only:   show the rendered crop alone instead of pasting it back into the picture.
    feather:     soft edge of the paste-back, as a fraction of the crop's side.
    output_size: (width, height) of the output; None: the first avatar's picture (its
                 crop with `crop_only`), rounded down to even sides for H.264.
    """

    crop: CropConfig = CropConfig()
    auto_crop: bool = True
    crop_only: bool = False
    feather: float = 0.1
    output_size: Size | None = None


@dataclass(frozen=True, eq=False)
class Portrait:
    """One portrait, cropped and ready to encode.

    name:      what the gallery and the log show.
    image:     the whole picture, uint8 RGB.
    crop:      the 512x512 crop the model animates.
    box:       where in `image` the crop was taken.
    digest:    a content hash of `crop`: its encodings are kept under it, so the same crop is
               encoded once per engine however often it is added.
    origin:    where it came from (a file, or a name the front end knows): what settings remember.
    uncropped: why faces could not be looked for, where the centre square was taken instead.
    """

    name: str
    image: np.ndarray
    crop: np.ndarray
    box: CropBox
    digest: str
    origin: str
    uncropped: str | None = None


def prepare_portrait(image: np.ndarray, name: str, config: AvatarConfig, origin: str | None = None) -> Portrait:
    """Crop a uint8 RGB picture the LIA-X way (slow with `auto_crop`: face detection).

    A picture without a face is a NoFaceError. Where faces cannot be looked for at all (mediapipe
    missing or unable to load) the centre square is taken as it is and `uncropped` says why:
    the avatar still works, framed by hand.
    origin: what `Portrait.origin` holds; by default the name.
    """
    uncropped = None
    try:
        crop, box = _crop(image, name, config)
    except FaceDetectionUnavailable as error:
        box = centre_square(image.shape)
        crop, uncropped = crop_image(image, box, config.crop.size), error.message
    return Portrait(name, image, crop, box, _digest(crop), origin if origin is not None else name, uncropped)


def uncropped_event(portraits: list[Portrait]) -> AvatarUncropped | None:
    """One event for the portraits taken uncropped (faces cannot be looked for); None if none was."""
    names = tuple(portrait.name for portrait in portraits if portrait.uncropped is not None)
    reason = next((portrait.uncropped for portrait in portraits if portrait.uncropped is not None), None)
    return AvatarUncropped(names, reason) if reason is not None else None


def _crop(image: np.ndarray, name: str, config: AvatarConfig) -> tuple[np.ndarray, CropBox]:
    if config.auto_crop:
        return crop_portrait(image, config=config.crop, source_name=name)
    box = centre_square(image.shape)
    return crop_image(image, box, config.crop.size), box


class AvatarBank:
    """Encodings of portraits, per engine, by the digest of their crop; safe to use from any thread.

    engines_kept: how many engines' encodings are kept, the most recently used first. Two, the
    current engine and the one before, make switching back and forth (comparing two backends or
    precisions) encode nothing the second time; more would keep, for every engine ever tried, the
    source feature maps of every portrait on the GPU until the window closes: 257 MB a portrait
    in float32 at full width (by the maps' shapes: 64 MB at width 0.5, linear in the width).
    """

    def __init__(self, engines_kept: int = 2) -> None:
        if engines_kept < 1:
            raise ValueError(f"need engines_kept >= 1, got {engines_kept}")
        self._engines_kept = engines_kept
        self._engines: OrderedDict[Hashable, dict[str, Avatar]] = OrderedDict()
        self._lock = threading.Lock()

    def encoding(self, animator: Animator, portrait: Portrait) -> Avatar:
        """The portrait's encoding by `animator`'s engine: kept, or made now (slow: a source encoder run)."""
        key = _engine_key(animator)
        with self._lock:
            known = self._encodings(key).get(portrait.digest)
        if known is not None:
            return known
        encoded = animator.encode_avatar(portrait.crop)
        log.info("avatar %r encoded", portrait.name)
        with self._lock:
            return self._encodings(key).setdefault(portrait.digest, encoded)

    def forget(self, digest: str) -> None:
        """Drop a crop's encodings (its portrait was removed): their GPU memory is freed."""
        with self._lock:
            for encodings in self._engines.values():
                encodings.pop(digest, None)

    def _encodings(self, key: Hashable) -> dict[str, Avatar]:
        """The encodings of one engine, now the most recently used; the oldest engine's go beyond the bound."""
        encodings = self._engines.setdefault(key, {})
        self._engines.move_to_end(key)
        while len(self._engines) > self._engines_kept:
            self._engines.popitem(last=False)
        return encodings


def _engine_key(animator: Animator) -> Hashable:
    """What makes two engines encode alike: their config (backend and precision as resolved, weights,
    width, seed) on the same device, so an engine made again from the same choice finds its encodings;
    and the weights file's content key, since a file replaced at the same path is other weights."""
    engine = animator.engine
    weights = engine.config.weights
    identity = content_key(weights) if weights is not None and weights.is_file() else None
    return replace(engine.config, device=str(engine.device)), identity


def _digest(image: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(image).tobytes() + repr(image.shape).encode(),
                           digest_size=16).hexdigest()
