"""The LIA-X decoder G: a StyleGAN2-like generator that warps the source features by predicted flows.

From a learned 4x4 constant it goes up to 512x512 in 7 stages. Each stage (8x8 ... 512x512)
runs modulated convs on the motion path `h`, predicts a flow and a mask (`ToFlow`), warps the
source feature map of its scale, refines the warped features (`ResBlock`s) and accumulates RGB.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from liveanim.model.dictionary import MotionDictionary
from liveanim.model.fused_conv import Residual
from liveanim.model.layers import (ConstantInput, ConvLayer, ModulatedConv2d, StyledConv, Styles, Upsample,
                                   group_norm, runs_eager)

STAGE_NAMES = ("_512", "2", "3", "4", "5", "6", "7")  # checkpoint prefixes; 8x8 .. 512x512
BLOCKS_PER_STAGE = 4


class FlowResBlock(nn.Module):
    """Two modulated convs with a GroupNorm between them and a learned residual gain."""

    def __init__(self, channels: int, style_dim: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.conv1 = StyledConv(channels, channels, 3, style_dim)
        self.conv2 = StyledConv(channels, channels, 3, style_dim)
        self.gamma = nn.Parameter(torch.full((1, channels, 1, 1), 1e-5))

    def forward(self, x: torch.Tensor, styles: Styles) -> torch.Tensor:
        skip = self.conv1(x, styles)
        return self.conv2(skip, styles, Residual(skip, self.gamma), norm=self.norm)


class ResBlock(nn.Module):
    """Two plain convs with an identity skip (the decoder's feature-refinement path)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3)
        self.conv2 = ConvLayer(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x), Residual(x, divisor=math.sqrt(2.0)))


class ToRGB(nn.Module):
    """1x1 conv to RGB, added to the upsampled RGB of the previous stage."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.up = Upsample()
        self.conv = ConvLayer(in_channels, 3, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x) + self.bias
        return out if skip is None else out + self.up(skip)


def identity_grid(size: int, like: torch.Tensor) -> torch.Tensor:
    """(1, size, size, 2) sampling grid of the identity warp, x first, corners at -1 and 1."""
    ramp = torch.linspace(-1.0, 1.0, size, device=like.device, dtype=like.dtype)
    ys, xs = torch.meshgrid(ramp, ramp, indexing="ij")
    return torch.stack((xs, ys), dim=-1).unsqueeze(0)


def warp(feat: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """`feat` sampled bilinearly where the identity grid moved by tanh(flow) points.

    On the CPU a bf16 map is warped in float32: PyTorch's CPU kernel computes a bf16 map's sampling
    positions and weights in bf16, which at 256x256 put its values off by more than their size (and
    made the model's output NaN), and a bf16 grid alone is off by up to half a pixel at 512x512.
    """
    if feat.dtype == torch.bfloat16 and feat.device.type == "cpu":
        return warp(feat.float(), flow.float()).to(feat.dtype)
    # contiguous: grid sampling would otherwise copy it (and a channels-last `feat`) first
    grid = (torch.tanh(flow).permute(0, 2, 3, 1) + identity_grid(flow.shape[-1], flow)).contiguous()
    return F.grid_sample(feat, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class ToFlow(nn.Module):
    """Predicts a flow (2 channels, tanh) and a mask (sigmoid) and warps the source features.

    The raw 3-channel prediction is accumulated across stages (upsampled), like RGB.
    """

    def __init__(self, in_channels: int, style_dim: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.up = Upsample()
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)

    def forward(self, h: torch.Tensor, styles: Styles, feat: torch.Tensor,
                skip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (warped features, h blended with them, raw prediction for the next stage)."""
        out = self.conv(h, styles[self.conv]) + self.bias
        if skip is not None:
            out = out + self.up(skip)
        mask = torch.sigmoid(out[:, 2:3])
        sampled = warp(feat, out[:, 0:2])
        if runs_eager(self.conv.forms) and h.is_contiguous(memory_format=torch.channels_last):
            # kernel by kernel, maps of one layout: grid sampling writes NCHW, the maps after it are
            # channels-last, and every op between the two layouts ran at a fraction of its speed
            sampled = sampled.contiguous(memory_format=torch.channels_last)
            return sampled * mask, torch.lerp(h, sampled, mask), out
        warped = sampled * mask
        return warped, warped + (1 - mask) * h, out


class Stage(NamedTuple):
    """The modules of one decoder stage, looked up under their checkpoint names."""

    conv_up: StyledConv
    flow_blocks: nn.ModuleList
    skip_up: ConvLayer | None
    rgb_blocks: nn.ModuleList
    to_rgb: ToRGB
    to_flow: ToFlow


class Carry(NamedTuple):
    """What one decoder stage hands the next: the motion path, the refined warped features, the
    raw flow prediction and the RGB so far (None before the first stage)."""

    h: torch.Tensor
    warped: torch.Tensor | None
    flow: torch.Tensor | None
    rgb: torch.Tensor | None


class Decoder(nn.Module):
    """G: (z_target, source features) -> image (B, 3, 512, 512), not clamped."""

    def __init__(self, width: float, latent_dim: int, motion_dim: int):
        """
        width:      channel multiplier: stage widths 512w (8x8..64x64), 256w, 128w, 64w.
        latent_dim: style length L (512w).
        motion_dim: number of dictionary directions.
        """
        super().__init__()
        c = [int(512 * width), int(256 * width), int(128 * width), int(64 * width)]
        widths = [c[0], c[0], c[0], c[0], c[1], c[2], c[3]]
        self.direction = MotionDictionary(latent_dim, motion_dim)
        self.input = ConstantInput(c[0])
        self.conv1 = StyledConv(c[0], c[0], 3, latent_dim)
        cin = c[0]
        for index, (name, cout) in enumerate(zip(STAGE_NAMES, widths)):
            setattr(self, f"conv{name}_1", StyledConv(cin, cout, 3, latent_dim, upsample=True))
            setattr(self, f"conv{name}_2",
                    nn.ModuleList(FlowResBlock(cout, latent_dim) for _ in range(BLOCKS_PER_STAGE)))
            if index > 0:
                setattr(self, f"conv{name}_2_up", ConvLayer(cin, cout, 3, upsample=True))
            setattr(self, f"conv{name}_2_rgb", nn.ModuleList(ResBlock(cout) for _ in range(BLOCKS_PER_STAGE)))
            setattr(self, f"rgb{name}", ToRGB(cout))
            setattr(self, f"flow{name}", ToFlow(cout, latent_dim))
            cin = cout
        self.register_module("bank", None)  # a ModulationBank once folded for inference
        # where each stage's modulated convs begin in `modulated_convs()`, and their count: the convs
        # are registered stage after stage (the first conv's before stage 0's)
        convs = self.modulated_convs()
        firsts = [convs.index(self.stage(index).conv_up.conv) for index in range(1, len(STAGE_NAMES))]
        self.stage_bounds = (0, *firsts, len(convs))

    def upsampling_convs(self) -> list[tuple[int, ConvLayer]]:
        """(output side, layer) of the convs that upsample the warped features (every stage but
        the first)."""
        sides = [8 * 2**index for index in range(len(STAGE_NAMES))]
        return [(side, self.stage(index).skip_up) for index, side in enumerate(sides) if index > 0]

    def modulated_convs(self) -> list[ModulatedConv2d]:
        return [layer for layer in self.modules() if isinstance(layer, ModulatedConv2d)]

    def styles(self, z: torch.Tensor, first: int = 0, stop: int = len(STAGE_NAMES)) -> Styles:
        """The modulations by z of the modulated convs of stages `first`..`stop`-1 (all by default;
        stage 0's include the first conv's): layer by layer, or batched once folded."""
        start, end = self.stage_bounds[first], self.stage_bounds[stop]
        if self.bank is not None:
            return self.bank(z, start, end)
        return {conv: conv.modulate(z) for conv in self.modulated_convs()[start:end]}

    def stage(self, index: int) -> Stage:
        name = STAGE_NAMES[index]
        return Stage(getattr(self, f"conv{name}_1"), getattr(self, f"conv{name}_2"),
                     getattr(self, f"conv{name}_2_up", None), getattr(self, f"conv{name}_2_rgb"),
                     getattr(self, f"rgb{name}"), getattr(self, f"flow{name}"))

    def forward(self, z: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        """z: (B, L) target latent; feats: 7 source maps, coarsest first, batch 1 or B."""
        styles = self.styles(z)
        carry = self.start(z.shape[0], styles)
        for index, feat in enumerate(feats):
            carry = self.run_stage(index, carry, styles, feat)
        return carry.rgb

    def start(self, batch: int, styles: Styles) -> Carry:
        """What the first stage takes: the motion path from the learned constant."""
        return Carry(self.conv1(self.input(batch), styles), None, None, None)

    def run_stage(self, index: int, carry: Carry, styles: Styles, feat: torch.Tensor) -> Carry:
        """Stage `index` (0: 8x8 .. 6: 512x512) on `carry`, warping `feat`, the source map of its scale."""
        stage = self.stage(index)
        h = stage.conv_up(carry.h, styles)
        for block in stage.flow_blocks:
            h = block(h, styles)
        warped, h, flow = stage.to_flow(h, styles, feat.expand(h.shape[0], -1, -1, -1), carry.flow)
        if stage.skip_up is not None:
            warped = warped + stage.skip_up(carry.warped)
        for block in stage.rgb_blocks:
            warped = block(warped)
        return Carry(h, warped, flow, stage.to_rgb(warped, carry.rgb))
