"""The portraits a live session can show, ready to switch between without a pause.

Each avatar is cropped the LIA-X way and encoded once when added (the source encoder costs
as much as a frame); switching is then a pointer change. The rendered 512x512 face is
pasted back into the full picture through a feathered edge (or shown alone), on a canvas of
the session's fixed output size: a virtual camera cannot change its size mid-call, so every
picture is letterboxed into it once, when added.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from liveanim.errors import UsageError
from liveanim.face import CropBox, CropConfig, centre_square, crop_image, crop_portrait, paste_back
from liveanim.pipeline.animator import Animator, Avatar
from liveanim.pipeline.frames import to_uint8

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


def crop_avatar(image: np.ndarray, name: str, config: AvatarConfig) -> tuple[np.ndarray, CropBox]:
    """The model crop of a portrait and where in the picture it was taken (slow with `auto_crop`:
    face detection); a picture without a face is a NoFaceError, and FaceDetectionUnavailable
    says what to install where faces cannot be looked for."""
    if config.auto_crop:
        return crop_portrait(image, config=config.crop, source_name=name)
    return centre_crop(image, config.crop)


def centre_crop(image: np.ndarray, config: CropConfig) -> tuple[np.ndarray, CropBox]:
    """The picture's centre square as the model crop, with no face looked for."""
    box = centre_square(image.shape)
    return crop_image(image, box, config.size), box


@dataclass(frozen=True, eq=False)
class BankedAvatar:
    """One prepared avatar.

    name:       what the GUI lists.
    key:        a digest of the picture, so adding the same picture twice encodes it once.
    encoded:    the model's encoding of its crop.
    canvas:     uint8 RGB at the output size: the picture letterboxed (black with `crop_only`).
    box:        where on `canvas` the rendered crop goes.
    feather:    soft edge of the paste-back there.
    on_device:  canvas and blend weights on the engine's GPU, or None on the CPU.
    """

    name: str
    key: str
    encoded: Avatar
    canvas: np.ndarray
    box: CropBox
    feather: float
    on_device: tuple[torch.Tensor, torch.Tensor] | None


class AvatarBank:
    """The session's avatars and which one is shown; safe to change from another thread."""

    def __init__(self, animator: Animator, config: AvatarConfig = AvatarConfig()) -> None:
        self.animator = animator
        self.config = config
        self._output_size = config.output_size
        self._avatars: list[BankedAvatar] = []
        self._selected = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._avatars)

    @property
    def names(self) -> list[str]:
        with self._lock:
            return [avatar.name for avatar in self._avatars]

    @property
    def output_size(self) -> Size:
        """(width, height) of every output frame; fixed by the config or the first avatar."""
        if self._output_size is None:
            raise UsageError("no avatar has been added yet, so the output size is not known")
        return self._output_size

    @property
    def selected(self) -> int:
        return self._selected

    def current(self) -> BankedAvatar:
        with self._lock:
            return self._avatars[self._selected]

    def add(self, image: np.ndarray, name: str, cropped: tuple[np.ndarray, CropBox] | None = None) -> int:
        """Crop and encode a uint8 RGB picture (slow: do it before or beside the loop); its index.

        cropped: its `crop_avatar` by this bank's config, where already made (no second face detection).
        """
        key = _digest(image)
        with self._lock:
            known = next((a.encoded for a in self._avatars if a.key == key), None)
        crop, box = cropped if cropped is not None else crop_avatar(image, name, self.config)
        encoded = known if known is not None else self._encode(crop, name)
        if self._output_size is None:
            self._output_size = _even(crop.shape[1::-1] if self.config.crop_only else image.shape[1::-1])
        avatar = self._place(name, key, image, crop, box, encoded)
        with self._lock:
            self._avatars.append(avatar)
            return len(self._avatars) - 1

    def remove(self, index: int) -> None:
        """Forget an avatar (its GPU memory is freed); the last one cannot be removed."""
        with self._lock:
            self._check(index)
            if len(self._avatars) == 1:
                raise UsageError("the last avatar cannot be removed: add another one first")
            del self._avatars[index]
            if self._selected > index or self._selected == len(self._avatars):
                self._selected -= 1

    def select(self, index: int) -> None:
        with self._lock:
            self._check(index)
            self._selected = index
            name = self._avatars[index].name
        log.info("showing avatar %d: %s", index, name)

    def compose(self, avatar: BankedAvatar, rendered: torch.Tensor) -> np.ndarray:
        """The output frame: rendered (1, 3, 512, 512) [-1, 1] pasted onto the avatar's canvas."""
        if avatar.on_device is None:
            return paste_back(avatar.canvas, to_uint8(rendered)[0], avatar.box, avatar.feather)
        return _paste_on_device(avatar.on_device, rendered, avatar.box)

    def _check(self, index: int) -> None:
        if not 0 <= index < len(self._avatars):
            raise UsageError(f"there is no avatar {index}; the avatars are 0..{len(self._avatars) - 1}")

    def _encode(self, crop: np.ndarray, name: str) -> Avatar:
        encoded = self.animator.encode_avatar(crop)
        log.info("avatar %r encoded", name)
        return encoded

    def _place(self, name: str, key: str, image: np.ndarray, crop: np.ndarray, box: CropBox,
               encoded: Avatar) -> BankedAvatar:
        """Letterbox the picture (or the crop alone) into the output size."""
        if self.config.crop_only:
            canvas, placed = _letterbox(crop, CropBox(0, 0, crop.shape[0]), self.output_size)
            feather = 0.0
        else:
            canvas, placed = _letterbox(image, box, self.output_size)
            feather = self.config.feather
        device = self.animator.device
        on_device = None if device.type == "cpu" else _device_canvas(canvas, placed, feather, device)
        return BankedAvatar(name, key, encoded, canvas, placed, feather, on_device)


def _digest(image: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(image).tobytes() + repr(image.shape).encode(),
                           digest_size=16).hexdigest()


def _even(size: tuple[int, int]) -> Size:
    width, height = size
    return width - width % 2, height - height % 2


def _letterbox(image: np.ndarray, box: CropBox, size: Size) -> tuple[np.ndarray, CropBox]:
    """The picture scaled to fit `size` and centred on black, and `box` moved along with it."""
    width, height = size
    scale = min(width / image.shape[1], height / image.shape[0])
    fitted_w, fitted_h = round(image.shape[1] * scale), round(image.shape[0] * scale)
    left, top = (width - fitted_w) // 2, (height - fitted_h) // 2
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    canvas[top:top + fitted_h, left:left + fitted_w] = cv2.resize(image, (fitted_w, fitted_h),
                                                                  interpolation=interpolation)
    scaled = box.scaled(scale)
    return canvas, CropBox(scaled.left + left, scaled.top + top, scaled.size)


def _device_canvas(canvas: np.ndarray, box: CropBox, feather: float,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Canvas (H, W, 3) uint8 and blend weights (1, S, S) on the GPU, so frames never leave it
    before paste-back. The weights are those of `paste_back` itself (a white crop pasted on black).
    """
    white = np.full((box.size, box.size, 1), 255, dtype=np.uint8)
    weights = paste_back(np.zeros((*canvas.shape[:2], 1), dtype=np.uint8), white, box, feather)[box.slices]
    weights_t = torch.from_numpy(weights[..., 0].astype(np.float32) / 255.0)[None].to(device)
    return torch.from_numpy(canvas).to(device), weights_t


def _paste_on_device(on_device: tuple[torch.Tensor, torch.Tensor], rendered: torch.Tensor,
                     box: CropBox) -> np.ndarray:
    """`paste_back` on the GPU: resize, blend, and bring back only the finished frame."""
    canvas, weights = on_device
    shrink = box.size < rendered.shape[-1]
    patch = F.interpolate(rendered.clamp(-1.0, 1.0), size=(box.size, box.size), align_corners=False,
                          mode="bilinear" if shrink else "bicubic", antialias=shrink)
    patch = patch[0].add(1.0).mul(127.5)
    rows, cols = box.slices
    under = canvas[rows, cols].permute(2, 0, 1).float()
    blended = (under + weights * (patch - under)).round_().clamp_(0, 255).to(torch.uint8)
    out = canvas.clone()
    out[rows, cols] = blended.permute(1, 2, 0)
    return out.cpu().numpy()
