"""The LIA-X encoder: image -> latent `z` and multi-scale features (E_{2R}), latent -> motion code (E_{R2T})."""

from __future__ import annotations

import math

import torch
from torch import nn

from liveanim.model.layers import ConvLayer, EqualConv2d, EqualLinear

FEATURE_MAPS = 7  # 512x512 down to 8x8


class ResDownBlock(nn.Module):
    """Residual block that halves the resolution (blurred stride-2 convs on both paths)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = ConvLayer(in_channels, out_channels, 3)
        self.conv2 = ConvLayer(out_channels, out_channels, 3, downsample=True)
        self.skip = ConvLayer(in_channels, out_channels, 1, downsample=True, activate=False, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2.0)


class Encoder2R(nn.Module):
    """E_{2R}: a 512x512 image -> latent z (B, L) and 7 feature maps, coarsest (8x8) first."""

    def __init__(self, width: float, latent_dim: int):
        """
        width:      channel multiplier (2.0 for the released model): channels 64w..512w.
        latent_dim: length of z (512w).
        """
        super().__init__()
        c = [int(64 * width), int(128 * width), int(256 * width), int(512 * width)]
        self.block1 = ConvLayer(3, c[0], 1)
        widths = [(c[0], c[1]), (c[1], c[2]), (c[2], c[3]), (c[3], c[3]), (c[3], c[3]), (c[3], c[3])]
        for index, (cin, cout) in enumerate(widths, start=2):
            setattr(self, f"block{index}", nn.Sequential(ResDownBlock(cin, cout)))
        self.block_512 = ResDownBlock(c[3], c[3])
        self.block8 = EqualConv2d(c[3], latent_dim, 4, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        h = x
        for index in range(1, FEATURE_MAPS + 1):
            h = getattr(self, f"block{index}")(h)
            feats.append(h)
        z = self.block8(self.block_512(h))
        return z.flatten(1), feats[::-1]


class Encoder(nn.Module):
    """Both halves of the LIA-X encoder, under the checkpoint's names `enc_2r` and `enc_r2t`."""

    def __init__(self, width: float, latent_dim: int, motion_dim: int):
        super().__init__()
        self.enc_2r = Encoder2R(width, latent_dim)
        self.enc_r2t = nn.Sequential(EqualLinear(latent_dim, motion_dim))
