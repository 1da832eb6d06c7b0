"""Seeded random weights that behave like trained ones, for benchmarks and accuracy checks.

Plain N(0, 1) weights make the full-width decoder's flows saturate, so float rounding is
amplified at a few pixels and precision comparisons say little. These weights keep flows,
residual gains and modulation near the ranges a trained model uses.
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

# (name suffix, scale, offset): value = offset + scale * N(0, 1); the first two match by pattern
_ROLES: tuple[tuple[str, float, float], ...] = (
    ("flow_conv", 0.2, 0.0),  # keeps predicted flows unsaturated
    ("rgb_conv", 0.03, 0.0),  # keeps the summed RGB of 7 stages near [-1, 1], so images are not clipped
    ("modulation.bias", 0.2, 1.0),
    (".gamma", 0.5, 0.0),
    ("norm.weight", 0.1, 1.0),
    ("bias", 0.1, 0.0),
)


def _role(name: str) -> tuple[float, float]:
    if name.startswith("dec.flow") and name.endswith("conv.weight"):
        return _ROLES[0][1:]
    if name.startswith("dec.rgb") and name.endswith("conv.0.weight"):
        return _ROLES[1][1:]
    for suffix, scale, offset in _ROLES[2:]:
        if name.endswith(suffix):
            return scale, offset
    return 1.0, 0.0


@torch.no_grad()
def seed_parameters_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter of `model` in place, reproducibly per (name, seed); buffers are kept."""
    for name, param in model.named_parameters():
        generator = torch.Generator().manual_seed(zlib.crc32(name.encode()) * 7919 + seed)
        scale, offset = _role(name)
        values = torch.randn(param.shape, generator=generator) * scale + offset
        param.copy_(values.to(param.dtype))
    return model
