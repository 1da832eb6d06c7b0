"""The Sparse Motion Dictionary: Q orthonormal (QR of a learned matrix); a latent moves by D(alpha) = alpha @ Q.T."""

from __future__ import annotations

import torch
from torch import nn

from liveanim.model.layers import random_normal


class MotionDictionary(nn.Module):
    """Holds the learned (L, motion_dim) matrix under the checkpoint's name `direction.weight`.

    Q is constant at inference, so it is computed once (in float64 on the CPU, which also works
    where the device has no QR) and cached until the weight changes; never per frame.
    """

    def __init__(self, latent_dim: int, motion_dim: int):
        super().__init__()
        self.weight = nn.Parameter(random_normal(latent_dim, motion_dim))
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def basis(self) -> torch.Tensor:
        """Q: (L, motion_dim) with orthonormal columns, in the weight's device and dtype."""
        w = self.weight
        key = (w._version, w.data_ptr(), w.device, w.dtype)
        if self._cache is None or self._cache[0] != key:
            q, _ = torch.linalg.qr(w.detach().to("cpu", torch.float64) + 1e-8)
            self._cache = (key, q.to(w.device, w.dtype))
        return self._cache[1]


def moved_latent(z: torch.Tensor, code: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """The renderer's input z_target = z + code @ Q.T: the one place it is written (the model, every
    engine and so every mode use it). D is linear, so one product serves the whole sum
    code = a_s + a_d - a_0 + e.

    z:     (1 or B, L) the source latent.
    code:  (1 or B, motion_dim) the summed motion code.
    basis: Q, (L, motion_dim).
    """
    return z + code @ basis.t()
