"""The three exported graphs as small nn.Modules with positional tensor outputs (never dicts).

Each takes and returns float32; a half-precision model is fed by casts inside the graph, so an
engine's inputs and outputs do not depend on the precision it runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from liveanim.contract import MOTION_ENCODER, RENDERER, SOURCE_ENCODER
from liveanim.model import LIAX, RESOLUTION


def _compute_dtype(model: LIAX) -> torch.dtype:
    return model.enc.enc_r2t[0].weight.dtype


class SourceEncoderGraph(nn.Module):
    """image (1,3,512,512) -> z, alpha, feat0..feat6."""

    def __init__(self, model: LIAX):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state = self.model.encode_source(image.to(_compute_dtype(self.model)))
        return tuple(t.float() for t in (state.z, state.alpha, *state.feats))


class MotionEncoderGraph(nn.Module):
    """image (batch,3,512,512) -> alpha (batch,40)."""

    def __init__(self, model: LIAX):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode_motion(image.to(_compute_dtype(self.model))).float()


class RendererGraph(nn.Module):
    """z_target (batch,L), feat0..feat6 (1,C,H,W) -> image (batch,3,512,512).

    The source features stay float32: only the flow heads read them (grid sampling), and those
    compute in fp32 in every precision (see liveanim/export/precision.py).
    """

    def __init__(self, model: LIAX):
        super().__init__()
        self.model = model

    def forward(self, z_target: torch.Tensor, feat0: torch.Tensor, feat1: torch.Tensor, feat2: torch.Tensor,
                feat3: torch.Tensor, feat4: torch.Tensor, feat5: torch.Tensor, feat6: torch.Tensor) -> torch.Tensor:
        feats = (feat0, feat1, feat2, feat3, feat4, feat5, feat6)
        return self.model.decode(z_target.to(_compute_dtype(self.model)), feats).float()


GRAPH_MODULES: dict[str, type[nn.Module]] = {
    SOURCE_ENCODER: SourceEncoderGraph, MOTION_ENCODER: MotionEncoderGraph, RENDERER: RendererGraph,
}


def smooth_images(count: int, seed: int) -> torch.Tensor:
    """Deterministic test images (count,3,512,512) in [-1,1]: upsampled coarse noise, so that the
    network sees image-like low-frequency content rather than white noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 16, 16, generator=generator) * 2 - 1
    return F.interpolate(coarse, size=(RESOLUTION, RESOLUTION), mode="bicubic", align_corners=False).clamp(-1, 1)
