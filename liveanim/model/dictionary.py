"""The Sparse Motion Dictionary: D(alpha) = alpha @ Q.T, Q orthonormal (QR of a learned matrix)."""

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

    def forward(self, alpha: torch.Tensor) -> torch.Tensor:
        """alpha: (B, motion_dim) -> latent offsets (B, L)."""
        return alpha @ self.basis().t()
