"""Conversions between uint8 RGB frames and the model's tensors (official normalization)."""

from __future__ import annotations

import numpy as np
import torch

from liveanim.model import RESOLUTION


def to_model_input(frames: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 RGB (H,W,3) or (B,H,W,3), already 512x512 -> float32 (B,3,512,512) in [-1, 1].

    Takes a torch uint8 tensor too, so that a GPU-resident frame is never copied to the host.
    """
    x = torch.as_tensor(frames).to(device)
    if x.ndim == 3:
        x = x[None]
    assert x.dtype == torch.uint8 and tuple(x.shape[1:]) == (RESOLUTION, RESOLUTION, 3), (x.dtype, tuple(x.shape))
    return x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Model output (B,3,H,W) -> uint8 RGB (B,H,W,3): clamp to [-1, 1] and map back."""
    x = images.detach().clamp(-1.0, 1.0).add(1.0).mul(127.5).round_()
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()
