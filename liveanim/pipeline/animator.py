"""The animation math over any engine: encode an avatar once, then render it per frame.

    z_target = z_s + (a_d - a_0 + a_s + e) @ Q.T
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from liveanim.contract import FEATURE_NAMES, Tensors
from liveanim.engines import Engine
from liveanim.pipeline.frames import to_model_input


@dataclass(frozen=True)
class Avatar:
    """An encoded source portrait: what `step()` needs of it, on the engine's device.

    crop:    the 512x512 uint8 RGB crop that was encoded.
    z:       (1, L) source latent.
    alpha:   (1, 40) the source's motion code.
    feats:   {"feat0".."feat6"}: the source feature maps.
    """

    crop: np.ndarray
    z: torch.Tensor
    alpha: torch.Tensor
    feats: Tensors


class Animator:
    """Owns an engine and turns motion codes and dial offsets into frames."""

    def __init__(self, engine: Engine):
        self.engine = engine

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def encode_avatar(self, crop: np.ndarray) -> Avatar:
        """crop: uint8 RGB 512x512 portrait -> its encoding (once per avatar)."""
        out = self.engine.encode_source({"image": to_model_input(crop, self.device)})
        return Avatar(crop=crop, z=out["z"], alpha=out["alpha"], feats={n: out[n] for n in FEATURE_NAMES})

    def motion(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB driving crops (H,W,3) or (B,H,W,3) -> motion codes (B, 40)."""
        return self.engine.encode_motion({"image": to_model_input(frames, self.device)})["alpha"]

    def target_latent(self, avatar: Avatar, motion: torch.Tensor | None, edit: torch.Tensor | np.ndarray | None) -> torch.Tensor:
        """z_target (B, L) for relative motion `motion` = a_d - a_0 (B, 40) and dial offsets `edit`."""
        code = avatar.alpha
        if edit is not None:
            code = code + torch.as_tensor(edit, dtype=torch.float32, device=self.device).reshape(-1, code.shape[1])
        if motion is not None:
            code = code + motion
        return self.engine.target_latent(avatar.z, code)

    def render(self, avatar: Avatar, motion: torch.Tensor | None = None,
               edit: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """The rendered frames (B, 3, 512, 512) in [-1, 1]-ish float32 on the device."""
        z_target = self.target_latent(avatar, motion, edit)
        batch = z_target.shape[0]
        feats = {n: f.expand(batch, -1, -1, -1) for n, f in avatar.feats.items()}
        return self.engine.render({"z_target": z_target, **feats})["image"]
