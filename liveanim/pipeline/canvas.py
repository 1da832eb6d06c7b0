"""A session's output canvas: each avatar's picture letterboxed once into the fixed output size,
and every rendered 512x512 face pasted back into it through a feathered edge (or shown alone).

A virtual camera cannot change its size mid-call, so the output size is fixed when the session's
first avatar is placed (or by the config) and every picture is fitted into it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from liveanim.errors import UsageError
from liveanim.face import CropBox, paste_back
from liveanim.pipeline.animator import Avatar
from liveanim.pipeline.avatars import AvatarConfig, Portrait, Size
from liveanim.pipeline.frames import to_uint8


@dataclass(frozen=True, eq=False)
class ShownAvatar:
    """One avatar as a session shows it.

    name:       what the log shows.
    encoded:    the model's encoding of its crop, by the session's engine.
    canvas:     uint8 RGB at the output size: the picture letterboxed (black with `crop_only`).
    box:        where on `canvas` the rendered crop goes.
    feather:    soft edge of the paste-back there.
    on_device:  canvas and blend weights on the engine's GPU, or None on the CPU.
    """

    name: str
    encoded: Avatar
    canvas: np.ndarray
    box: CropBox
    feather: float
    on_device: tuple[torch.Tensor, torch.Tensor] | None


class AvatarCanvas:
    """Places portraits on the output canvas of one session and composes its frames."""

    def __init__(self, config: AvatarConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self._output_size = config.output_size
        self._lock = threading.Lock()

    @property
    def output_size(self) -> Size:
        """(width, height) of every output frame; fixed by the config or the first avatar placed."""
        if self._output_size is None:
            raise UsageError("no avatar has been added yet, so the output size is not known")
        return self._output_size

    def place(self, portrait: Portrait, encoded: Avatar) -> ShownAvatar:
        """Letterbox the picture (or the crop alone) into the output size."""
        crop = portrait.crop
        with self._lock:
            if self._output_size is None:
                shown = crop if self.config.crop_only else portrait.image
                self._output_size = _even(shown.shape[1::-1])
        if self.config.crop_only:
            canvas, placed = _letterbox(crop, CropBox(0, 0, crop.shape[0]), self.output_size)
            feather = 0.0
        else:
            canvas, placed = _letterbox(portrait.image, portrait.box, self.output_size)
            feather = self.config.feather
        on_device = None if self.device.type == "cpu" else _device_canvas(canvas, placed, feather, self.device)
        return ShownAvatar(portrait.name, encoded, canvas, placed, feather, on_device)

    def compose(self, avatar: ShownAvatar, rendered: torch.Tensor) -> np.ndarray:
        """The output frame: rendered (1, 3, 512, 512) [-1, 1] pasted onto the avatar's canvas."""
        if avatar.on_device is None:
            return paste_back(avatar.canvas, to_uint8(rendered)[0], avatar.box, avatar.feather)
        return _paste_on_device(avatar.on_device, rendered, avatar.box)


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
